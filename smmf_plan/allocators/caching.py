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

:func:`replay` runs one loop over the events (about a microsecond each in CPython: a plan replays
hundreds of thousands) and remembers each sequence's peaks for the rest of the process, so the
same sequence planned again (another device of the model, another rank class or optimizer with
the same blocks) is not replayed.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, insort
from collections import OrderedDict
from dataclasses import dataclass
from hashlib import blake2b
from typing import Iterable, Sequence

from .rounding import round_up

MIN_BLOCK = 512            # kMinBlockSize
SMALL_SIZE = 1 << 20       # kSmallSize
SMALL_BUFFER = 2 << 20     # kSmallBuffer
LARGE_BUFFER = 20 << 20    # kLargeBuffer
MIN_LARGE_ALLOC = 10 << 20  # kMinLargeAlloc
ROUND_LARGE = 2 << 20      # kRoundLarge

# A block's position is one int: its segment above _OFF_BITS, its offset in MIN_BLOCK units below
# (every block and segment is a multiple of MIN_BLOCK); a free pool's entry is its size above
# _POS_BITS and its position below, so a pool sorts by (size, segment, offset) as
# get_free_block's BlockComparatorSize does, with ints for keys instead of tuples.
_UNIT = MIN_BLOCK.bit_length() - 1   # offsets in 512-B units
_OFF_BITS = 50                       # offsets below 2**59 B within a segment
_POS_BITS = 80                       # segments below 2**30
_POS_MASK = (1 << _POS_BITS) - 1


def round_size(n: int) -> int:
    return MIN_BLOCK if n < MIN_BLOCK else round_up(n, MIN_BLOCK)


def allocation_size(size: int) -> int:
    """The segment ``cudaMalloc``-ed for a rounded request of ``size`` bytes with no free block."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return round_up(size, ROUND_LARGE)


#: the smallest rest of a block that is split off, by pool (small: True).
_MIN_REST = {True: MIN_BLOCK, False: SMALL_SIZE + 1}


def should_split(block: int, size: int, small: bool) -> bool:
    return block - size >= _MIN_REST[small]


@dataclass(frozen=True)
class Peaks:
    """High-water marks of one replay, in bytes."""

    allocated: int
    reserved: int
    #: segments ``cudaMalloc``-ed over the replay.
    segments: int


class CachingAllocator:
    """One device's caching allocator, one stream (a training step's kernels run on the default
    stream; the autograd engine's device thread uses it too), fed a sequence's events."""

    def __init__(self) -> None:
        # per pool (small: True): its free blocks' entries, sorted
        self._free: dict[bool, list[int]] = {True: [], False: []}
        # each segment's pool, by segment number
        self._segment_pool: list[list[int]] = []
        # free blocks: position -> size, and end position -> position (to merge with neighbours)
        self._free_at: dict[int, int] = {}
        self._free_end: dict[int, int] = {}
        # every allocation's block by id: position (-1 once freed) and size
        self._pos: list[int] = []
        self._size: list[int] = []
        self.allocated = 0
        self.reserved = 0
        self.peak_allocated = 0
        self.peak_reserved = 0

    @property
    def segments(self) -> int:
        """Segments ``cudaMalloc``-ed so far."""
        return len(self._segment_pool)

    def run(self, events: Iterable[int]) -> None:
        """Allocate and free as ``events`` say (:mod:`.sequence` encoding: ids count this
        allocator's allocations from 0). One loop with the state in locals: it replays a
        training step's tens of thousands of events per plan."""
        pools, segment_pool = self._free, self._segment_pool
        free_at, free_end = self._free_at, self._free_end
        live_pos, live_size = self._pos, self._size
        allocated, reserved = self.allocated, self.reserved
        peak_allocated, peak_reserved = self.peak_allocated, self.peak_reserved
        rounded: dict[int, int] = {}
        for e in events:
            if e >= 0:  # malloc
                size = rounded.get(e)
                if size is None:
                    size = rounded[e] = round_size(e)
                small = size <= SMALL_SIZE
                pool = pools[small]
                i = bisect_left(pool, size << _POS_BITS)  # the smallest free block that fits
                if i < len(pool):
                    entry = pool.pop(i)
                    block, pos = entry >> _POS_BITS, entry & _POS_MASK
                    del free_at[pos]
                    del free_end[pos + (block >> _UNIT)]
                else:  # a new segment
                    block = allocation_size(size)
                    pos = len(segment_pool) << _OFF_BITS
                    segment_pool.append(pool)
                    reserved += block
                    if reserved > peak_reserved:
                        peak_reserved = reserved
                rest = block - size
                if rest >= _MIN_REST[small]:  # split: the rest stays free
                    end = pos + (size >> _UNIT)
                    free_at[end] = rest
                    free_end[end + (rest >> _UNIT)] = end
                    insort(pool, rest << _POS_BITS | end)
                    block = size
                live_pos.append(pos)
                live_size.append(block)
                allocated += block
                if allocated > peak_allocated:
                    peak_allocated = allocated
                continue
            k = ~e  # free: merge with the free neighbours in its segment, back to its pool
            pos, size = live_pos[k], live_size[k]
            if pos < 0:
                raise ValueError(f"block {k} is freed twice")
            live_pos[k] = -1
            allocated -= size
            pool = segment_pool[pos >> _OFF_BITS]
            nxt = pos + (size >> _UNIT)
            n = free_at.pop(nxt, 0)
            if n:
                del free_end[nxt + (n >> _UNIT)]
                del pool[bisect_left(pool, n << _POS_BITS | nxt)]
                size += n
            prev = free_end.pop(pos, None)
            if prev is not None:
                n = free_at.pop(prev)
                del pool[bisect_left(pool, n << _POS_BITS | prev)]
                size += n
                pos = prev
            free_at[pos] = size
            free_end[pos + (size >> _UNIT)] = pos
            insort(pool, size << _POS_BITS | pos)
        self.allocated, self.reserved = allocated, reserved
        self.peak_allocated, self.peak_reserved = peak_allocated, peak_reserved

    def reset_peaks(self) -> None:
        """``torch.cuda.reset_peak_memory_stats()``."""
        self.peak_allocated = self.allocated
        self.peak_reserved = self.reserved


#: peaks of the sequences replayed in this process, by (digest of the sequence, ``reset_at``): a
#: plan replays the same sequence again for every device of one allocator model and for every
#: optimizer or rank class whose blocks are the same; at most :data:`CACHE_SIZE`, least recently
#: used dropped first.
_CACHE: OrderedDict[tuple[bytes, int], Peaks] = OrderedDict()
CACHE_SIZE = 1024


def _digest(events: Sequence[int]) -> bytes:
    try:
        data = array("q", events).tobytes()
    except OverflowError:  # a block of 8 EiB or more: its decimal text
        data = ",".join(map(str, events)).encode()
    return blake2b(data, digest_size=16).digest()


def replay(events: Sequence[int], *, reset_at: int = 0) -> Peaks:
    """Replay a sequence (:mod:`.sequence` encoding) and return its peaks from event ``reset_at``
    on (the peaks are reset there, as a measurement of the last step does). A sequence replayed
    before in this process is answered from :data:`_CACHE`."""
    key = (_digest(events), reset_at)
    peaks = _CACHE.get(key)
    if peaks is not None:
        _CACHE.move_to_end(key)
        return peaks
    peaks = _replay(events, reset_at)
    _CACHE[key] = peaks
    if len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return peaks


def _replay(events: Sequence[int], reset_at: int) -> Peaks:
    alloc = CachingAllocator()
    if reset_at < 0:  # nothing is reset
        alloc.run(events)
    else:
        alloc.run(events[:reset_at])
        alloc.reset_peaks()
        alloc.run(events[reset_at:])
    return Peaks(alloc.peak_allocated, alloc.peak_reserved, alloc.segments)
