"""APOLLO and APOLLO-Mini (Zhu et al., "APOLLO: SGD-like Memory, AdamW-level Performance", 2024)
as apollo-torch's ``APOLLOAdamW`` 1.0.3.

Parameters: the targeted 2-D weights (:data:`smmf_plan.targets.TARGET_RULE`, or ``--target``)
form one group with ``rank``, ``proj="random"``, ``scale_type``, ``scale``, ``update_proj_gap`` and
``proj_type="std"``; every other parameter is in a plain group (AdamW). APOLLO's defaults are
the authors': rank 256, channel-wise scaling, scale 1; APOLLO-Mini's: rank 1, tensor-wise
scaling, scale 128.

State of a targeted ``(m, n)`` weight: the projector's seeded Gaussian ``ortho_matrix``
``(rank, n)`` when ``m ≥ n``, else ``(m, rank)`` (the rank is not clipped to the matrix), in the
parameter's dtype; ``exp_avg`` and ``exp_avg_sq`` in the projected shape ``(m, rank)`` or
``(rank, n)``; ``scaled_grad``, the norm-growth limiter's 0-d previous norm. Seeds and step
counters are Python ints. Other parameters: AdamW's ``exp_avg``/``exp_avg_sq``.

Step temporaries (one parameter at a time): the projected gradient, denominator and update in
the low-rank shape, and two full-size tensors (the scaled gradient and the limiter's quotient);
every ``update_proj_gap`` steps a new projection is drawn (one more projection-sized matrix).
Non-targeted parameters: AdamW's denominator and update (a = 2).

Probe learning rate 1e-3.
"""

from __future__ import annotations

from typing import Sequence

from ..allocators import round_up
from ..shapes import ParamSpec
from ..targets import TARGET_RULE
from ._groups import adamw_moments, per_parameter_peak, targeted
from .base import (
    LOOP_ONLY,
    VERIFIED_BY_TESTS,
    Interval,
    OptimizerInfo,
    Option,
    Options,
    Requirement,
    StateTensor,
    param_dtype,
)
from .galore import GAP, RANK, projected

REQUIRES = Requirement("apollo-torch", "apollo_torch", extra="compare")
SCALE_TYPES = ("channel", "tensor")


def state(o: Options, spec: ParamSpec, group: str) -> list[StateTensor]:
    if group != "apollo":
        return adamw_moments(spec)
    pd = param_dtype(spec)
    moment, proj = projected(spec.shape, o["rank"], clip=False)
    return [StateTensor("projector.ortho_matrix", proj, pd),
            StateTensor("exp_avg", moment, pd), StateTensor("exp_avg_sq", moment, pd),
            StateTensor("scaled_grad", (), pd)]


def _loop(o: Options, specs: Sequence[ParamSpec], quantum: int) -> int:
    def treated(s: ParamSpec, item: int, full: int) -> int:
        moment, proj = projected(s.shape, o["rank"], clip=False)
        low = round_up(moment[0] * moment[1] * item, quantum)
        return 2 * full + 3 * low + round_up(proj[0] * proj[1] * 4, quantum)

    return per_parameter_peak(specs, quantum, treated)


def _hyper(o: Options) -> dict:
    return {"rank": o["rank"], "proj": "random", "scale_type": o["scale_type"],
            "scale": o["scale"], "update_proj_gap": o["update_proj_gap"], "proj_type": "std"}


def _info(id: str, display: str, summary: str, rank: int, scale_type: str, scale: float) -> OptimizerInfo:
    return OptimizerInfo(
        id=id, display_name=display, summary=summary,
        implementation="apollo_torch:APOLLOAdamW", requires=REQUIRES,
        reproduces="apollo_torch.APOLLOAdamW, apollo-torch 1.0.3", verified=VERIFIED_BY_TESTS,
        options={
            "rank": Option(rank, "int", "projection rank", RANK),
            "update_proj_gap": Option(200, "int", "steps between new random projections", GAP),
            "scale_type": Option(scale_type, "choice", "gradient scaling per channel or per "
                                 "tensor (no memory effect)", choices=SCALE_TYPES),
            "scale": Option(scale, "float", "update scale (no memory effect)",
                            Interval(0, None, low_closed=False)),
        },
        state=state, groups=targeted("apollo", _hyper), target_rule=TARGET_RULE,
        temporaries={"for-loop": _loop},
        paths=LOOP_ONLY,
        probe_lr=1e-3, constructor=lambda o: dict(lr=1e-3),
        peak_step=lambda o: o["update_proj_gap"] + 1,
    )


APOLLO = _info("apollo", "APOLLO", "APOLLO: AdamW moments in a random rank-r projection, "
               "channel-wise scaling", 256, "channel", 1.0)
APOLLO_MINI = _info("apollo-mini", "APOLLO-Mini", "APOLLO-Mini: rank-1 random projection, "
                    "tensor-wise scaling", 1, "tensor", 128.0)
