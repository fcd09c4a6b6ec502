"""PyTorch's CUDA caching allocator, replayed on an allocation sequence: ``allocated`` and
``reserved`` (what ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` report) without a
GPU. Torch-free.

The rules, as ``c10/cuda/CUDACachingAllocator.cpp`` states them (pytorch/pytorch, read at commit
001074d25084fdb87a799823e395a50f5ec044d3; defaults: no ``PYTORCH_CUDA_ALLOC_CONF``, so no
``expandable_segments``, ``max_split_size`` unlimited, no power-of-two rounding divisions):

* ``round_size``: every request is rounded up to a multiple of 512 B (``kMinBlockSize``), at
  least 512 B.
* ``get_pool``: requests of at most 1 MiB (``kSmallSize``) use the small pool, larger ones the
  large pool; the pools never share blocks.
* ``get_free_block``: the smallest cached free block of the pool that is large enough (the pool is
  ordered by size, then address).
* ``get_allocation_size``: with no such block, a new segment is ``cudaMalloc``-ed: 2 MiB
  (``kSmallBuffer``) for the small pool; 20 MiB (``kLargeBuffer``) for requests under 10 MiB
  (``kMinLargeAlloc``); larger requests rounded up to a multiple of 2 MiB (``kRoundLarge``).
* ``should_split``: the block found or made is split when the rest is at least 512 B (small pool)
  or more than 1 MiB (large pool); otherwise the whole block is handed out (and counted as
  allocated).
* ``free_block``: a freed block merges with its free neighbours in the same segment and goes back
  to its pool; segments are never returned to CUDA during training (only ``empty_cache()`` or an
  allocation that would fail does that), so ``reserved`` is the high-water mark of segments.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

from .rounding import round_up

MIN_BLOCK = 512            # kMinBlockSize
SMALL_SIZE = 1 << 20       # kSmallSize
SMALL_BUFFER = 2 << 20     # kSmallBuffer
LARGE_BUFFER = 20 << 20    # kLargeBuffer
MIN_LARGE_ALLOC = 10 << 20  # kMinLargeAlloc
ROUND_LARGE = 2 << 20      # kRoundLarge


def round_size(n: int) -> int:
    return MIN_BLOCK if n < MIN_BLOCK else round_up(n, MIN_BLOCK)


def allocation_size(size: int) -> int:
    """The segment ``cudaMalloc``-ed for a rounded request of ``size`` bytes with no free block."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return round_up(size, ROUND_LARGE)


def should_split(block: int, size: int, small: bool) -> bool:
    rest = block - size
    return rest >= MIN_BLOCK if small else rest > SMALL_SIZE


@dataclass
class Peaks:
    """High-water marks of one replay, in bytes."""

    allocated: int
    reserved: int
    #: segments ``cudaMalloc``-ed over the replay.
    segments: int


class CachingAllocator:
    """One device's caching allocator, one stream (a training step's kernels run on the default
    stream; the autograd engine's device thread uses it too)."""

    def __init__(self) -> None:
        # per pool: free blocks as sorted (size, segment, offset)
        self._free = {True: [], False: []}
        # (segment, offset) -> [size, allocated?]; (segment, end) -> offset
        self._blocks: dict[tuple[int, int], list] = {}
        self._ends: dict[tuple[int, int], int] = {}
        self._segment_small: list[bool] = []
        self._live: dict[int, tuple[int, int]] = {}
        self.allocated = 0
        self.reserved = 0
        self.peak_allocated = 0
        self.peak_reserved = 0

    # ------------------------------------------------------------------ blocks
    def _put_free(self, seg: int, off: int, size: int) -> None:
        self._blocks[(seg, off)] = [size, False]
        self._ends[(seg, off + size)] = off
        bisect.insort(self._free[self._segment_small[seg]], (size, seg, off))

    def _take_free(self, seg: int, off: int) -> int:
        size = self._blocks.pop((seg, off))[0]
        del self._ends[(seg, off + size)]
        pool = self._free[self._segment_small[seg]]
        del pool[bisect.bisect_left(pool, (size, seg, off))]
        return size

    def malloc(self, key: int, nbytes: int) -> None:
        size = round_size(nbytes)
        small = size <= SMALL_SIZE
        pool = self._free[small]
        i = bisect.bisect_left(pool, (size, -1, -1))
        if i < len(pool):
            block, seg, off = pool[i]
            self._take_free(seg, off)
        else:
            block = allocation_size(size)
            seg, off = len(self._segment_small), 0
            self._segment_small.append(small)
            self.reserved += block
            self.peak_reserved = max(self.peak_reserved, self.reserved)
        if should_split(block, size, small):
            self._put_free(seg, off + size, block - size)
            block = size
        self._blocks[(seg, off)] = [block, True]
        self._ends[(seg, off + block)] = off
        self._live[key] = (seg, off)
        self.allocated += block
        self.peak_allocated = max(self.peak_allocated, self.allocated)

    def free(self, key: int) -> None:
        seg, off = self._live.pop(key)
        size = self._blocks.pop((seg, off))[0]
        del self._ends[(seg, off + size)]
        self.allocated -= size
        nxt = (seg, off + size)
        if nxt in self._blocks and not self._blocks[nxt][1]:
            size += self._take_free(*nxt)
        prev = self._ends.get((seg, off))
        if prev is not None and not self._blocks[(seg, prev)][1]:
            size += self._take_free(seg, prev)
            off = prev
        self._put_free(seg, off, size)

    def reset_peaks(self) -> None:
        """``torch.cuda.reset_peak_memory_stats()``."""
        self.peak_allocated = self.allocated
        self.peak_reserved = self.reserved


def replay(events: Sequence[int], *, reset_at: int = 0) -> Peaks:
    """Replay a sequence (:mod:`.sequence` encoding) and return its peaks from event ``reset_at``
    on (the peaks are reset there, as a measurement of the last step does)."""
    alloc = CachingAllocator()
    key = 0
    for i, e in enumerate(events):
        if i == reset_at:
            alloc.reset_peaks()
        if e >= 0:
            alloc.malloc(key, e)
            key += 1
        else:
            alloc.free(~e)
    if reset_at >= len(events):
        alloc.reset_peaks()
    return Peaks(alloc.peak_allocated, alloc.peak_reserved, len(alloc._segment_small))
