"""What optimizers that treat some parameters specially (GaLore, APOLLO, COAP, Muon: the
parameters :func:`smmf_plan.targets.is_target` chooses) and give every other parameter AdamW
share: the group rule, the other group's state, and the per-parameter peak."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from .. import dtypes
from ..allocators import round_up
from ..shapes import ParamSpec
from ..targets import is_target
from .base import GroupRule, Options, ParamGroup, StateTensor, param_dtype


def targeted(treated: str, hyper: Callable[[Options], Mapping[str, Any]] = lambda o: {},
             rest: str = "adamw", rest_hyper: Mapping[str, Any] | None = None) -> GroupRule:
    """A group rule: the targeted parameters form group ``treated`` (its torch keys from
    ``hyper(options)``), the others group ``rest``; the targeted group comes first, as the
    implementations' examples list it."""

    def groups(o: Options, specs: Sequence[ParamSpec]) -> list[ParamGroup]:
        chosen = tuple(i for i, s in enumerate(specs) if is_target(s))
        other = tuple(i for i in range(len(specs)) if i not in set(chosen))
        return [ParamGroup(treated, chosen, dict(hyper(o))),
                ParamGroup(rest, other, dict(rest_hyper or {}))]

    return groups


def adamw_moments(spec: ParamSpec) -> list[StateTensor]:
    """What GaLore's, APOLLO's and COAP's own AdamW keeps for a parameter outside the treated
    group: both moments in its dtype (their step counter is a Python int)."""
    pd = param_dtype(spec)
    return [StateTensor("exp_avg", spec.shape, pd), StateTensor("exp_avg_sq", spec.shape, pd)]


def per_parameter_peak(specs: Sequence[ParamSpec], quantum: int,
                       treated: Callable[[ParamSpec, int, int], int]) -> int:
    """A for-loop step's peak when targeted parameters follow ``treated(spec, itemsize, full)``
    and the others their AdamW (denominator and update: two full-size tensors)."""
    peak = 0
    for s in specs:
        item = dtypes.itemsize(s.dtype)
        full = round_up(s.numel * item, quantum)
        peak = max(peak, treated(s, item, full) if is_target(s) else 2 * full)
    return peak
