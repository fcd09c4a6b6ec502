"""Optimizer-state plan: pure arithmetic over parameter specs and layouts (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from . import dtypes
from .layouts import ALLOCATORS, OptimizerLayout, parse_layout
from .model import ModelSpec
from .shapes import ParamSpec


@dataclass
class StatePlan:
    """Optimizer state one optimizer keeps for a model's trainable parameters."""

    id: str
    state_bytes: int
    allocated_bytes: dict[str, int]
    num_state_tensors: int
    #: bytes per trainable parameter, in the order of ``ModelSpec.trainable``.
    per_param: list[int] = field(default_factory=list, repr=False)

    def to_dict(self, adam_bytes: int | None = None) -> dict:
        d = {
            "state_bytes": self.state_bytes,
            "allocated_bytes": dict(self.allocated_bytes),
            "num_state_tensors": self.num_state_tensors,
        }
        if adam_bytes:
            d["ratio_to_adam"] = self.state_bytes / adam_bytes
            d["saving_vs_adam"] = 1.0 - self.state_bytes / adam_bytes
        return d


def with_dtype(specs: Iterable[ParamSpec], dtype: str | None) -> list[ParamSpec]:
    """Re-type floating-point specs to ``dtype`` (``--dtype``); integer tensors keep theirs."""
    if dtype is None:
        return list(specs)
    dt = dtypes.canonical(dtype)
    return [
        ParamSpec(s.name, s.shape, dt if s.dtype in dtypes.FLOATING else s.dtype, s.trainable, s.aliases)
        for s in specs
    ]


def plan_state(specs: Sequence[ParamSpec], layout: OptimizerLayout) -> StatePlan:
    """State of ``layout`` over the trainable ``specs`` (frozen ones get no gradient, so no state)."""
    per_param, alloc, count = [], {a: 0 for a in ALLOCATORS}, 0
    for spec in specs:
        if not spec.trainable:
            continue
        tensors = layout.state(spec)
        per_param.append(sum(t.nbytes for t in tensors))
        for a in ALLOCATORS:
            alloc[a] += sum(t.allocated(a) for t in tensors)
        count += len(tensors)
    return StatePlan(layout.id, sum(per_param), alloc, count, per_param)


def plan_model(model: ModelSpec, layouts: Sequence[OptimizerLayout]) -> dict[str, StatePlan]:
    return {layout.id: plan_state(model.params, layout) for layout in layouts}


def adam_reference_bytes(model: ModelSpec) -> int:
    """Adam's state bytes for the model, the yardstick for ratios and savings."""
    return plan_state(model.params, parse_layout("adam")).state_bytes
