"""Optimizer-state plan: pure arithmetic over parameter specs and optimizer variants (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .model import ModelSpec
from .optimizers import OptimizerVariant, StateTensor, Unsupported, parse
from .shapes import ParamSpec

#: the allocators a plan reports allocated bytes for, in the tables' and JSON's order.
ALLOCATORS = ("cuda", "cpu")


@dataclass
class StatePlan:
    """Optimizer state one optimizer keeps for a model's trainable parameters."""

    id: str
    state_bytes: int
    allocated_bytes: dict[str, int]
    num_state_tensors: int
    #: bytes per trainable parameter, in the order of ``ModelSpec.trainable``.
    per_param: list[int] = field(default_factory=list, repr=False)
    #: trainable parameters per parameter group, for optimizers that treat groups differently
    #: (``{"galore": 224, "adamw": 67}``); empty for one group.
    groups: dict[str, int] = field(default_factory=dict)
    #: why the implementation cannot train this model (then no bytes are planned).
    unsupported: str | None = None

    def to_dict(self, adam_bytes: int | None = None) -> dict:
        if self.unsupported:
            return {"state_bytes": None, "allocated_bytes": None, "num_state_tensors": None,
                    "unsupported": self.unsupported}
        d = {
            "state_bytes": self.state_bytes,
            "allocated_bytes": dict(self.allocated_bytes),
            "num_state_tensors": self.num_state_tensors,
        }
        if self.groups:
            d["groups"] = dict(self.groups)
        if adam_bytes:
            d["ratio_to_adam"] = self.state_bytes / adam_bytes
            d["saving_vs_adam"] = 1.0 - self.state_bytes / adam_bytes
        return d


def plan_state(specs: Sequence[ParamSpec], optimizer: OptimizerVariant) -> StatePlan:
    """State of ``optimizer`` over the trainable ``specs`` (frozen ones get no gradient, so no
    state), each parameter in the group the optimizer's rule puts it in. ``per_param`` counts
    every tensor a parameter's state holds; a tensor shared by several parameters counts once in
    the totals."""
    trainable = [s for s in specs if s.trainable]
    names = optimizer.group_names(trainable)
    groups = {} if len(set(names)) <= 1 and names[:1] == ["default"] else {
        g: names.count(g) for g in dict.fromkeys(names)}
    memo: dict = {}  # one rule call per kind of tensor (OptimizerVariant.state_key)
    lists = []
    for spec, group in zip(trainable, names):
        key = optimizer.state_key(spec, group)
        if key not in memo:
            memo[key] = optimizer.state(spec, group)
        lists.append(memo[key])
    total, alloc, count = state_totals(lists, ALLOCATORS)
    per_key = {id(ts): sum(t.nbytes for t in ts) for ts in memo.values()}
    return StatePlan(optimizer.id, total, alloc, count, [per_key[id(ts)] for ts in lists], groups)


def state_totals(per_param: Iterable[Sequence[StateTensor]], allocators: Sequence[str]
                 ) -> tuple[int, dict[str, int], int]:
    """(logical bytes, allocated bytes per allocator, tensor count) of the state tensors listed
    per parameter; a tensor shared by several parameters (``shared=True``) counts once. A list
    given again (the same object: planners memoize one per kind of tensor) is summed once."""
    total, alloc, count = 0, {a: 0 for a in allocators}, 0
    shared: set = set()
    sums: dict[int, tuple] = {}  # id(list) → (the list, kept alive so its id stays its own, sums)
    for tensors in per_param:
        hit = sums.get(id(tensors))
        if hit is None:
            own = [t for t in tensors if not t.shared]
            hit = sums[id(tensors)] = (
                tensors, sum(t.nbytes for t in own), [sum(t.allocated(a) for t in own) for a in allocators],
                len(own), [t for t in tensors if t.shared])
        _, own_bytes, own_alloc, own_count, shared_here = hit
        total += own_bytes
        count += own_count
        for a, b in zip(allocators, own_alloc):
            alloc[a] += b
        for t in shared_here:
            if t in shared:
                continue
            shared.add(t)
            total += t.nbytes
            count += 1
            for a in allocators:
                alloc[a] += t.allocated(a)
    return total, alloc, count


def plan_model(model: ModelSpec, optimizers: Sequence[OptimizerVariant]) -> dict[str, StatePlan]:
    """Each optimizer's state over ``model`` (options that default to model facts bound to it);
    an optimizer whose implementation cannot train the model gets a plan saying why."""
    out = {}
    for o in optimizers:
        try:
            out[o.id] = plan_state(model.params, o.bind(model.facts))
        except Unsupported as e:
            out[o.id] = StatePlan(o.id, 0, {a: 0 for a in ALLOCATORS}, 0, unsupported=str(e))
    return out


def adam_reference_bytes(model: ModelSpec) -> int:
    """Adam's state bytes for the model, the yardstick for ratios and savings."""
    return plan_state(model.params, parse("adam")).state_bytes
