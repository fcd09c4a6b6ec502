"""How many of a device does training need? The smallest world size whose largest rank fits.

For each device and optimizer, :func:`smallest_worlds` searches the number of ranks (one per
device) at which the largest rank's training step fits the device's usable memory at the planned
per-rank batch. One step basis (the trace) per allocator is shared by every world size; each world
size is pure per-rank arithmetic (:func:`~smmf_plan.dist.estimate.from_basis`), computed once and
shared by every device with that allocator; a world is first planned without the allocator parts
(a lower bound: the part is never negative), and the allocator is replayed only for the worlds
that bound does not rule out.

The search assumes the largest rank's total does not grow with the world size — true of every
part but FSDP2's all-gather padding, which moves by at most a chunk row — so it doubles the world
until the step fits and then bisects between the last two sizes. Under HSDP the world moves in
steps of the shard group. Worlds beyond :data:`MAX_SEARCH_WORLD` are not searched: what does not
fit there is held back by the parts no sharding divides (activations, runtime, gathered units,
buckets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..breakdown import StepMemory
from ..devices import Device
from ..model import ModelSpec
from ..optimizers import OptimizerVariant
from .estimate import DistEstimate, basis_for, from_basis
from .sharding import Sharding

#: the largest world size searched.
MAX_SEARCH_WORLD = 1 << 14


@dataclass(frozen=True)
class Answer:
    """One device × optimizer: the smallest world that fits (None: none up to the cap), and the
    step of the largest rank there (at the cap when nothing fits)."""

    device: Device
    optimizer: str
    world: int | None
    step: StepMemory
    #: usable minus the largest rank's device bytes (negative: short by that much).
    headroom_bytes: int
    #: the world size ``step`` was planned at (the cap when nothing fits).
    planned_world: int

    @property
    def fits(self) -> bool:
        return self.world is not None

    def to_dict(self) -> dict:
        """``{"world", "fits", "headroom_bytes", "planned_world", …the largest rank's step}``."""
        return {"world": self.world, "fits": self.fits, "headroom_bytes": self.headroom_bytes,
                "planned_world": self.planned_world, **self.step.to_dict()}


def _first_fit(fits: Callable[[int], bool], step: int, cap: int) -> int | None:
    """The smallest multiple ``k·step ≤ cap`` with ``fits(k·step)``, assuming ``fits`` is
    monotone (doubling, then bisection)."""
    k, top = 1, cap // step
    if top < 1:
        return None
    while not fits(k * step):
        if k >= top:
            return None
        k = min(2 * k, top)
    lo, hi = k // 2, k  # lo does not fit (or is 0), hi does
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid * step):
            hi = mid
        else:
            lo = mid
    return hi * step


@dataclass(frozen=True)
class Search:
    """Every answer (device id → optimizer id → :class:`Answer`), the plans' assumptions and
    whether the activations were estimated."""

    answers: dict[str, dict[str, Answer]]
    assumptions: list[str]
    complete: bool
    scheme: str
    shard_group: int | None


def smallest_worlds(spec: ModelSpec, layouts: Sequence[OptimizerVariant], scheme: str,
                    devices: Sequence[Device], *, batch_size: int, shard_group: int | None = None,
                    cap: int = MAX_SEARCH_WORLD, **options: Any) -> Search:
    """The smallest world size per device and optimizer (``options``: the step basis's)."""
    bases = {a: basis_for(spec, scheme, batch_size=batch_size, allocator=a, **options)
             for a in sorted({d.allocator for d in devices})}
    memo: dict[tuple[str, int, bool], DistEstimate] = {}

    def plan_at(allocator: str, world: int, exact: bool = True) -> DistEstimate:
        """The plan at ``world``; ``exact=False``: without the allocator parts (a lower bound)."""
        key = (allocator, world, exact)
        if key not in memo:
            group = shard_group if shard_group and shard_group < world else None
            memo[key] = from_basis(bases[allocator], spec.name, layouts,
                                   Sharding(scheme, world, shard_group=group),
                                   allocator_parts=exact)
        return memo[key]

    step = shard_group or 1
    out: dict[str, dict[str, Answer]] = {}
    for d in devices:
        row = {}
        for v in layouts:
            def fits(world: int, d=d, oid=v.id) -> bool:
                host = d.host_memory

                def within(b) -> bool:
                    return b.device_bytes <= d.usable_bytes and (
                        not b.host_bytes or (host is not None and b.host_bytes <= host))

                # a world whose plan does not fit even without its allocator parts never fits:
                # ruled out before the allocator is replayed for it
                return (within(plan_at(d.allocator, world, exact=False).breakdown_at(oid, batch_size))
                        and within(plan_at(d.allocator, world).breakdown_at(oid, batch_size)))
            world = _first_fit(fits, step, cap)
            planned = world if world is not None else (cap // step) * step
            s = plan_at(d.allocator, planned).steps()[v.id]
            row[v.id] = Answer(d, v.id, world, s, d.usable_bytes - s.device_bytes, planned)
        out[d.id] = row
    any_plan = next(iter(memo.values()))
    assumptions = [a for a in any_plan.assumptions if not a.startswith("distributed: ")]
    assumptions.insert(0, f"searched: the smallest number of ranks (one per device, each at "
                          f"batch {batch_size}) whose largest rank fits, up to {cap:,} ranks"
                          + (f" in steps of the shard group ({shard_group})" if shard_group else ""))
    return Search(out, assumptions, any_plan.complete, scheme, shard_group)
