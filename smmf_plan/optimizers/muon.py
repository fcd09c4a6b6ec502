"""Muon (Jordan et al., 2024; "Muon is Scalable for LLM Training", Liu et al., 2025):
``torch.optim.Muon`` on the targeted 2-D weights (:data:`smmf_plan.targets.TARGET_RULE`, or
``--target``) and ``torch.optim.AdamW`` on every other parameter, stepped as one optimizer
(:class:`smmf_plan.optimizers.muon_adamw.MuonWithAdamW`).

State: Muon's ``momentum_buffer`` (the parameter's shape and dtype) for a targeted weight;
AdamW's ``step`` (0-d fp32 on the host unless fused), ``exp_avg`` and ``exp_avg_sq`` for the
others.

Step temporaries: Muon, one matrix at a time: the Nesterov update (full size, the parameter's
dtype) and Newton-Schulz in bf16: the orthogonalized matrix twice (the iterate and its
successor) and two k×k Gram matrices, k = min(m, n). AdamW's rule on its own parameters (for-loop
on CPU, foreach on CUDA). The two optimizers step one after the other: the larger peak counts.

Probe learning rate 0.02 (Muon's) with AdamW at 3e-4.
"""

from __future__ import annotations

from typing import Sequence

from .. import dtypes
from ..allocators import round_up
from ..shapes import ParamSpec
from ..targets import TARGET_RULE, is_target
from . import adam
from ._groups import targeted
from .base import (
    TORCH_PATH_ARGS,
    TORCH_PATHS,
    VERIFIED_BY_TESTS,
    OptimizerInfo,
    Option,
    Options,
    StateTensor,
    param_dtype,
)
from .temporaries import foreach_peak, no_temporaries


def state(o: Options, spec: ParamSpec, group: str) -> list[StateTensor]:
    if group == "muon":
        return [StateTensor("momentum_buffer", spec.shape, param_dtype(spec))]
    return adam.state({"fused": o["fused"], "capturable": False, "amsgrad": False}, spec, group)


def _muon_peak(specs: Sequence[ParamSpec], quantum: int) -> int:
    peak = 0
    for s in specs:
        m, n = s.shape
        k = min(m, n)
        full = round_up(s.numel * dtypes.itemsize(s.dtype), quantum)
        bf16 = round_up(s.numel * 2, quantum)
        gram = round_up(k * k * 2, quantum)
        peak = max(peak, full + 2 * bf16 + 2 * gram)
    return peak


def _split(specs: Sequence[ParamSpec]) -> tuple[list[ParamSpec], list[ParamSpec]]:
    chosen = [s for s in specs if is_target(s)]
    return chosen, [s for s in specs if not is_target(s)]


def _path(adamw_rule):
    def rule(o: Options, specs: Sequence[ParamSpec], quantum: int) -> int:
        chosen, rest = _split(specs)
        return max(_muon_peak(chosen, quantum), adamw_rule(o, rest, quantum) if rest else 0)
    return rule


_adamw_loop = adam._loop(decoupled=True)

INFO = OptimizerInfo(
    id="muon", display_name="Muon",
    summary="Muon: one momentum per hidden matrix (Newton-Schulz orthogonalized), AdamW elsewhere",
    implementation="smmf_plan.optimizers.muon_adamw:MuonWithAdamW",
    requires=adam.TORCH,
    reproduces="torch.optim.Muon + torch.optim.AdamW, torch 2.14.1", verified=VERIFIED_BY_TESTS,
    options={"fused": Option(False, "bool", "AdamW's fused kernel (its step counter on the "
                             "device, no AdamW temporaries)")},
    state=state, groups=targeted("muon", lambda o: {"use_muon": True}), target_rule=TARGET_RULE,
    temporaries={"for-loop": _path(_adamw_loop),
                 "foreach": _path(lambda o, s, q: foreach_peak(s, q)),
                 "fused": _path(no_temporaries)},
    paths=TORCH_PATHS,
    path_args=TORCH_PATH_ARGS,
    probe_lr=0.02,
    constructor=lambda o: dict(lr=0.02, adamw_lr=3e-4, **({"fused": True} if o["fused"] else {})),
)
