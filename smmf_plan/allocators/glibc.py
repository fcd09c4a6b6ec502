"""glibc malloc under a training process on CPU: what the resident set holds beyond the live tensors.

PyTorch's CPU allocator asks glibc for every tensor (``posix_memalign`` with 64-B alignment).

**With ``MALLOC_MMAP_THRESHOLD_=131072``** (the ``glibc-mmap`` model) every block of 128 KiB or
more is its own ``mmap`` and goes back to the OS when freed, and setting the threshold switches
glibc's dynamic threshold off: the resident set follows the live tensors. Measured here on five
models: the peak RSS growth of a step is the tensor-level peak plus 24-43 MiB (Python objects,
kernel code pages, small-allocation heaps), deterministic to 0.1%; nothing else to model.

**By default** (the ``glibc`` model) the mmap threshold starts at 128 KiB and rises to the size of
every mmapped block freed, up to ``DEFAULT_MMAP_THRESHOLD_MAX`` (32 MiB on 64-bit): after the
first step frees its activations, every block up to 32 MiB comes from the heap, and the heap keeps
what is freed below its top (only a free top beyond twice the threshold is trimmed). Traced with an
``LD_PRELOAD`` malloc logger on real steps (resnet18, resnet50, a 2-layer GPT-2), the heap at the
peak held the live blocks plus holes: freed blocks that later requests did not fill, because

* a freed block cannot take the next block of the same size: ``posix_memalign`` asks glibc for the
  size plus 64 + 32 B (alignment + minimum chunk), 96 B more than the hole;
* the small objects PyTorch and Python allocate beside every tensor (TensorImpl, StorageImpl,
  autograd nodes: 16-600 B, placed by glibc in the slots a block's alignment leaves free) keep
  neighbouring holes from merging, for as long as they live.

Which holes stay open depends on those small objects' lifetimes, which a trace on meta tensors does
not see (and identical runs differ by up to 7-13%), so the retained bytes are an upper bound fitted
to measurements rather than a replay. Two terms, the larger counts (:func:`retained_bytes`):

* **same-size blocks**: the step's largest heap block size (≤ 32 MiB), allocated ``n`` times per
  step, leaves up to :data:`SAME_SIZE` × ``n`` × size resident (the holes those blocks cannot
  refill);
* **churn**: :data:`CHURN` × the bytes freed and allocated again every step (gradients,
  activations, step temporaries) in blocks the heap serves stay resident as holes; blocks above
  32 MiB (a large model's logits) are mapped and unmapped every time and hold nothing
  (:func:`heap_share`).

The coefficients are the smallest round values that put the estimate at or above the median peak
RSS growth of fresh processes (``MALLOC_MMAP_THRESHOLD_`` unset) on every configuration measured
for ``reports/memory-accuracy.md``, within 25% above it; the report lists each one.

Not modelled: thread arenas. A process whose worker threads allocate (oneDNN scratch, OpenMP
reductions) gets per-thread heaps as well; measured with 2 threads here, resnet18 at batch 8 rose
from 267 to 303 MiB, which the bound still covers. Torch-free.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from .rounding import CPU_ROUND, round_up

#: glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit (4 MiB × sizeof(long)): the dynamic threshold's cap.
MMAP_THRESHOLD_MAX = 32 << 20
#: the threshold the ``glibc-mmap`` model assumes the user sets (``MALLOC_MMAP_THRESHOLD_``).
MMAP_THRESHOLD = 131072
#: share of one same-size class's allocations per step that stays resident as holes.
SAME_SIZE = 0.75
#: share of the step's churn (gradients + activations + temporaries) that stays resident as holes.
CHURN = 0.55


def largest_class_bytes(blocks: Iterable[int]) -> int:
    """The step's largest heap block size (64-B aligned, at most :data:`MMAP_THRESHOLD_MAX`) times
    how often the step allocates it."""
    counts = Counter(round_up(n, CPU_ROUND) for n in blocks if 0 < n <= MMAP_THRESHOLD_MAX)
    if not counts:
        return 0
    size = max(counts)
    return size * counts[size]


def heap_share(blocks: Iterable[int]) -> float:
    """The share of a step's allocated bytes in blocks the heap serves (at most
    :data:`MMAP_THRESHOLD_MAX`): larger ones are always their own mapping, returned when freed."""
    sizes = [n for n in blocks if n > 0]
    total = sum(sizes)
    return sum(n for n in sizes if n <= MMAP_THRESHOLD_MAX) / total if total else 1.0


def retained_bytes(same_size_class: int, churn: int) -> int:
    """Heap bytes a default-glibc process keeps resident beyond the live tensors at the peak: the
    larger of the same-size term and the churn term (see the module docstring)."""
    return max(int(SAME_SIZE * same_size_class), int(CHURN * churn))
