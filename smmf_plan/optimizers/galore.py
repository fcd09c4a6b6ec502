"""GaLore (Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection",
2024) as galore-torch's ``GaLoreAdamW`` 1.0.

Parameters: the targeted 2-D weights (:data:`smmf_plan.targets.TARGET_RULE`, or ``--target``)
form one group with ``rank``, ``update_proj_gap``, ``scale`` and ``proj_type="std"``; every other
parameter is in a plain group, where the same class is AdamW.

State of a targeted ``(m, n)`` weight, with ``r = min(rank, m, n)``: ``exp_avg`` and
``exp_avg_sq`` in the projected shape, ``(m, r)`` when ``m ≥ n`` and ``(r, n)`` otherwise, in the
parameter's dtype, and the projector's ``ortho_matrix``: ``Vh[:r]`` ``(r, n)`` or ``U[:, :r]``
``(m, r)`` of the gradient's SVD. For an fp32 parameter that is a view, and it keeps the whole SVD
factor alive: ``n × n`` (``m ≥ n``) or ``m × m`` elements; for other dtypes it is cast, compactly,
to the parameter's dtype. The step counter is a Python int. Other parameters: AdamW's
``exp_avg``/``exp_avg_sq``.

Step temporaries (one parameter at a time). The projector recomputes the SVD of the full fp32
gradient at the first step and every ``update_proj_gap`` steps, the step's peak (``peak_step``):
``U`` (m×k), ``S`` and ``Vh`` (k×n) with k = min(m, n) plus LAPACK's copy of the input,
then the low-rank gradient, the update and its projection back (a full-size product and its
``* scale``). Between refreshes: the projection back and its scaling (two full-size tensors).
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

RANK = Interval(1, None)
GAP = Interval(1, None)


def projected(shape, rank: int, clip: bool = True) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(moment shape, projector shape)`` of a targeted ``(m, n)`` weight: the low-rank side is
    the smaller one's (``clip``: the rank cannot exceed min(m, n), as with an SVD)."""
    m, n = shape
    r = min(rank, m, n) if clip else rank
    return ((m, r), (r, n)) if m >= n else ((r, n), (m, r))


def state(o: Options, spec: ParamSpec, group: str) -> list[StateTensor]:
    if group != "galore":
        return adamw_moments(spec)
    pd = param_dtype(spec)
    moment, proj = projected(spec.shape, o["rank"])
    m, n = spec.shape
    storage = None
    if pd == "float32":  # Vh[:r] / U[:, :r] are views of the whole factor
        storage = (n, n) if m >= n else (m, m)
    return [StateTensor("projector.ortho_matrix", proj, pd, storage=storage),
            StateTensor("exp_avg", moment, pd), StateTensor("exp_avg_sq", moment, pd)]


def _loop(o: Options, specs: Sequence[ParamSpec], quantum: int) -> int:
    def treated(s: ParamSpec, item: int, full: int) -> int:
        m, n = s.shape
        k = min(m, n)
        moment, _ = projected(s.shape, o["rank"])
        low = round_up(moment[0] * moment[1] * item, quantum)
        f32 = lambda numel: round_up(numel * 4, quantum)  # noqa: E731
        svd = f32(m * n) + f32(m * k) + f32(k) + f32(k * n)
        if item != 4:
            svd += f32(m * n)  # the fp32 copy of the gradient
        return max(svd + 3 * low, 2 * full + 3 * low)

    return per_parameter_peak(specs, quantum, treated)


def _hyper(o: Options) -> dict:
    return {"rank": o["rank"], "update_proj_gap": o["update_proj_gap"], "scale": o["scale"],
            "proj_type": "std"}


INFO = OptimizerInfo(
    id="galore", display_name="GaLore",
    summary="GaLore: AdamW moments in a rank-r projection of targeted 2-D weights",
    implementation="galore_torch:GaLoreAdamW",
    requires=Requirement("galore-torch", "galore_torch", extra="compare"),
    reproduces="galore_torch.GaLoreAdamW, galore-torch 1.0", verified=VERIFIED_BY_TESTS,
    options={
        "rank": Option(128, "int", "projection rank", RANK),
        "update_proj_gap": Option(200, "int", "steps between SVD refreshes of the projector", GAP),
        "scale": Option(0.25, "float", "scale of the projected-back update (no memory effect)",
                        Interval(0, None, low_closed=False)),
    },
    state=state, groups=targeted("galore", _hyper), target_rule=TARGET_RULE,
    temporaries={"for-loop": _loop},
    paths=LOOP_ONLY,
    probe_lr=1e-3, constructor=lambda o: dict(lr=1e-3, no_deprecation_warning=True),
    peak_step=lambda o: o["update_proj_gap"] + 1,
)
