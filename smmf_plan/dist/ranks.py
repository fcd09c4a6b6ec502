"""What one rank holds, and ranks with identical figures grouped (torch-free).

A scheme's planner (:mod:`.ddp`, :mod:`.zero`, :mod:`.fsdp2`) returns :class:`RankClass` es: the
global ranks that hold the same bytes, and those bytes as :class:`RankFigures` (every figure that
does not depend on the batch). :func:`group` merges classes whose figures are equal, so a 1,024-rank
plan has as many entries as it has distinct rank shapes (FSDP2's uneven dim-0 chunks give at most a
few), never one per rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from ..optimizers import StateTensor
from ..plan import state_totals
from ..shapes import ParamSpec


@dataclass(frozen=True)
class RankBlocks:
    """The blocks one rank asks its allocator for, in bytes as requested (unrounded): what the
    allocator model replays for the rank's ``allocator`` part (:mod:`.allocation`), beside the
    traced forward + backward at the per-rank micro-batch."""

    #: allocated before the first step and kept: parameters or their shards / flat buffers,
    #: buffers, fp32 master partitions, DDP's gradient buckets, ZeRO's reduce bucket.
    kept: tuple[int, ...]
    #: the gradients alive from the end of backward to the next ``zero_grad``: FSDP2's
    #: reduce-scatter outputs, ZeRO's partitions; ``None``: the traced gradients themselves
    #: (whole parameters, as in one process: DDP).
    grads: tuple[int, ...] | None
    #: allocated and freed within every step besides the traced tensors (FSDP2's gathered units
    #: and collective buffers, ZeRO-3's prefetch and gathered module), alive through forward and
    #: backward.
    transient: tuple[int, ...]
    #: the tensors the optimizer steps on this rank (local shards, flat partitions) and the state
    #: tensors it creates for each.
    specs: tuple[ParamSpec, ...] = ()
    states: tuple[Sequence[StateTensor], ...] = ()


@dataclass(frozen=True)
class RankFigures:
    """One rank's batch-independent bytes, each as the allocator allocates it."""

    #: the model's parameters as this rank stores them (sharded, flat, padded …) and its buffers.
    weights: int
    #: a separate fp32 master copy of this rank's partition (ZeRO), else 0.
    master: int
    #: gradients kept through the step (sharded / partitioned where the scheme does so).
    grads: int
    #: the optimizer state, each tensor rounded.
    state_allocated: int
    #: the optimizer state's logical bytes (numel × itemsize).
    state_bytes: int
    #: communication buffers and gathered transients at the step's peak (DDP buckets; FSDP2
    #: gathered units, unsharded gradients and reduce-scatter buffers; ZeRO's buckets).
    comm: int
    #: the optimizer step's peak temporaries on this rank (netted against the activations as a
    #: single-process step's are), plus scheme-specific step buffers (ZeRO's fp32 gradient
    #: partition).
    step_temp: int
    #: number of state tensors (the state table's column).
    state_tensors: int = 0
    #: offload: the host parts (``host_copies``, ``host_state``, ``host_temporaries``,
    #: ``host_runtime``), the state and step then being the host's, not the device's.
    host: tuple[tuple[str, int], ...] = ()
    #: the blocks behind these figures (the allocator part's replay); not part of a rank's
    #: identity: ranks whose figures are equal are grouped, keeping the first one's blocks.
    blocks: RankBlocks | None = field(default=None, compare=False, hash=False)


class RankRanges:
    """A set of global ranks as inclusive ``ranges`` (sorted, disjoint)."""

    ranges: tuple[tuple[int, int], ...]

    @property
    def count(self) -> int:
        return sum(b - a + 1 for a, b in self.ranges)

    @property
    def first(self) -> int:
        return self.ranges[0][0]

    def label(self) -> str:
        return ranks_label(self.ranges)


@dataclass(frozen=True)
class RankClass(RankRanges):
    """Global ranks with identical figures."""

    ranges: tuple[tuple[int, int], ...]
    figures: RankFigures


def ranks_label(ranges: Sequence[tuple[int, int]]) -> str:
    """``rank 0``, ``ranks 0-511``, ``ranks 0-6, 8-14, …`` (at most three ranges shown)."""
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in ranges[:3]]
    more = ", …" if len(ranges) > 3 else ""
    count = sum(b - a + 1 for a, b in ranges)
    return f"{'rank' if count == 1 else 'ranks'} {', '.join(parts)}{more}"


def group(classes: Iterable[RankClass]) -> list[RankClass]:
    """Merge classes with equal figures (their ranges joined, adjacent ranges fused), ordered by
    their first rank."""
    merged: dict[RankFigures, list[tuple[int, int]]] = {}
    for c in classes:
        merged.setdefault(c.figures, []).extend(c.ranges)
    out = []
    for figures, ranges in merged.items():
        ranges.sort()
        fused: list[tuple[int, int]] = []
        for a, b in ranges:
            if fused and a <= fused[-1][1] + 1:
                fused[-1] = (fused[-1][0], max(b, fused[-1][1]))
            else:
                fused.append((a, b))
        out.append(RankClass(tuple(fused), figures))
    return sorted(out, key=lambda c: c.first)


def state_sum(per_param: Iterable[Sequence[StateTensor]], allocator: str) -> tuple[int, int, int]:
    """(logical bytes, allocated bytes, tensor count) of the state tensors listed per parameter
    (:func:`smmf_plan.plan.state_totals` under one allocator). Planners hand the same list object
    for every parameter of one kind (80 identical blocks), so each distinct list is summed once."""
    logical = allocated = count = 0
    # per list object, kept referenced (so its id stays its own)
    sums: dict[int, tuple[Sequence[StateTensor], int, int, int]] = {}
    rest: list[Sequence[StateTensor]] = []  # lists with shared tensors: counted across lists
    for tensors in per_param:
        if any(t.shared for t in tensors):
            rest.append(tensors)
            continue
        key = id(tensors)
        if key not in sums:
            a, alloc, c = state_totals([tensors], (allocator,))
            sums[key] = (tensors, a, alloc[allocator], c)
        _, a, b, c = sums[key]
        logical, allocated, count = logical + a, allocated + b, count + c
    a, alloc, c = state_totals(rest, (allocator,))
    return logical + a, allocated + alloc[allocator], count + c
