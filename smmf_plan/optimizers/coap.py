"""COAP (Xiao et al., "COAP: Memory-Efficient Training with Correlation-Aware Gradient
Projection", CVPR 2025) as ``coap_torch.CoapAdamW``, read from github.com/bytedance/coap at
commit deabc3a (``coap_torch/optimizer/adamw.py``, ``projection/coap_matrix.py``,
``utils/orthogonal.py``). No package registry has it: the entry runs where the user installed it
from that repository, and the tests check the layout against these formulas.

Parameters: the targeted 2-D weights (:data:`smmf_plan.targets.TARGET_RULE`, or ``--target``)
form the group with ``proj_method="coap"``; every other parameter a plain group (AdamW). (COAP's
own grouping would also project 4-D convolutions with a Tucker decomposition; the registry keeps
the low-rank optimizers to one rule.)

State of a targeted ``(m, n)`` weight, ``r = max(min(m, n) // rank_ratio, 1)`` (or
``min(rank, m, n)`` with ``rank_ratio=none``): the projector's ``ortho_matrix``, ``Vh`` of a
randomized range finder: ``(r, n)`` when ``m ≥ n``, else its transpose ``(m, r)`` (a view of the
same ``r·m`` elements), in the parameter's dtype; ``exp_avg``/``exp_avg_sq`` in the projected
shape ``(m, r)`` or ``(r, n)``; and, from the first projection update (step ``update_interval``)
on, the projection's ``.grad`` (the same shape: the update runs autograd on the projection and
zeroes, but keeps, its gradient). Step counters are Python ints.

Step temporaries (one parameter at a time; measured once with the source installed locally):
a regular step holds the low-rank gradient, denominator and update and the projection back with
its scaling, ``2·F + 3·L`` (``F`` the parameter's size, ``L`` the moment's). Every
``update_interval`` steps the projection is updated by one autograd step on the reconstruction
error (``grad @ Pᵀ @ P``, the reconstructed moment, the MSE and cosine terms and their
gradients): ``8·F + L``, the step's peak (``peak_step``); every ``reproject_factor``-th update is
a randomized SVD instead (``Y = G·Ω``, its QR and ``B = QᵀG``): a regular step plus the random
``Ω`` (min(m, n) × r, fp32).

Probe learning rate 1e-3.
"""

from __future__ import annotations

from typing import Sequence

from ..allocators import round_up
from ..shapes import ParamSpec
from ..targets import TARGET_RULE
from ._groups import adamw_moments, per_parameter_peak, targeted
from .base import LOOP_ONLY, Interval, OptimizerInfo, Option, Options, Requirement, StateTensor, param_dtype

SOURCE = "git+https://github.com/bytedance/coap@deabc3a671f63f9a8b49066c925d9df6b260089e"


def rank_of(o: Options, shape) -> int:
    m, n = shape
    if o["rank_ratio"] is not None:
        return max(int(min(m, n) // o["rank_ratio"]), 1)
    return min(o["rank"], m, n)


def shapes(o: Options, shape) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(moment shape, projection shape)`` of a targeted ``(m, n)`` weight."""
    m, n = shape
    r = rank_of(o, shape)
    return ((m, r), (r, n)) if m >= n else ((r, n), (m, r))


def state(o: Options, spec: ParamSpec, group: str) -> list[StateTensor]:
    if group != "coap":
        return adamw_moments(spec)
    pd = param_dtype(spec)
    moment, proj = shapes(o, spec.shape)
    return [StateTensor("projector.ortho_matrix", proj, pd),
            StateTensor("projector.ortho_matrix.grad", proj, pd),
            StateTensor("exp_avg", moment, pd), StateTensor("exp_avg_sq", moment, pd)]


def _loop(o: Options, specs: Sequence[ParamSpec], quantum: int) -> int:
    def treated(s: ParamSpec, item: int, full: int) -> int:
        moment, _ = shapes(o, s.shape)
        low = round_up(moment[0] * moment[1] * item, quantum)
        omega = round_up(min(s.shape) * rank_of(o, s.shape) * 4, quantum)
        regular = 2 * full + 3 * low + omega  # a reprojection's random Ω rides on a regular step
        update = 8 * full + low if o["reproject_factor"] > 1 else 0
        return max(regular, update)

    return per_parameter_peak(specs, quantum, treated)


def _hyper(o: Options) -> dict:
    return {"proj_method": "coap", "rank": o["rank"], "rank_ratio_matrix": o["rank_ratio"],
            "update_interval": o["update_interval"], "reproject_factor": o["reproject_factor"],
            "restore_state": False, "scale": 1.0}


INFO = OptimizerInfo(
    id="coap", display_name="COAP",
    summary="COAP: AdamW moments in a correlation-aware low-rank projection of targeted 2-D weights",
    implementation="coap_torch:CoapAdamW",
    requires=Requirement("coap-torch", "coap_torch", source=SOURCE),
    reproduces="coap_torch.CoapAdamW, bytedance/coap deabc3a (read from its source)",
    verified=("layout and temporaries from the source's formulas (tests check the formulas; no "
              "package registry has COAP, so CI cannot run it)"),
    options={
        "rank_ratio": Option(2.0, "float|none", "rank = min(m, n) // ratio (README's example: 2); "
                             "none: use rank", Interval(1, None)),
        "rank": Option(128, "int", "rank when rank_ratio is none", Interval(1, None)),
        "update_interval": Option(32, "int", "steps between projection updates", Interval(1, None)),
        "reproject_factor": Option(5, "int", "every this many updates, recompute the projection",
                                   Interval(1, None)),
    },
    state=state, groups=targeted("coap", _hyper), target_rule=TARGET_RULE,
    temporaries={"for-loop": _loop},
    paths=LOOP_ONLY,
    params_keyword="grouped_params_with_proj", peak_step=lambda o: o["update_interval"] + 1,
    probe_lr=1e-3, constructor=lambda o: dict(lr=1e-3),
)
