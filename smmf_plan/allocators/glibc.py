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
  refill), with ``n`` at most :data:`HOLES_PER_LIVE` × the most such blocks alive at once
  (:func:`largest_class_bytes`);
* **churn**: :data:`CHURN` × the bytes freed and allocated again every step (gradients,
  activations, step temporaries) in blocks the heap serves stay resident as holes; blocks above
  32 MiB (a large model's logits) are mapped and unmapped every time and hold nothing
  (:func:`heap_share`). The churn also counts :data:`TRANSIENT` × the bytes of the blocks under
  :data:`SMALL_TRANSIENT` that forward frees before it ends (:func:`forward_transients`: the
  per-layer intermediates the step's peak does not hold - few without checkpointing, every
  layer's with it).

The coefficients are round values that put the estimate at or above the median peak RSS growth of
fresh processes (``MALLOC_MMAP_THRESHOLD_`` unset) on every configuration measured for
``reports/memory-accuracy.md``, within 25% above it (1.00-1.23x over 21 configurations); the
report lists each one. The band is narrow: the tiny GPT-2 at batch 8 with checkpointing (1.00x, a
560-660 MiB spread over 8 processes) and mobilenetv2 and resnet50 at batch 8 (1.23x) bound it from
both sides, so no coefficient has room to move.

**Gradient checkpointing.** Backward recomputes each checkpointed segment's forward, uses it and
frees it before the next segment's: the recomputed blocks refill the holes their twins left, they do
not add holes. Measured (fresh processes, 1 thread, median of 3; reports/memory-accuracy.md):
resnet50 at batch 8 allocates its largest class (24.5 MiB) 35 times per step with checkpointing
against 27 without, yet the resident set beyond the glibc-mmap run's stayed 256 MiB against 241
(vit_tiny 14 against 9, resnet18 27 against 32, mobilenetv2 63 against 57 MiB). Hence the cap on
``n`` (a class alive 8 blocks at a time counts at most 24, however often it is recomputed;
:data:`HOLES_PER_LIVE` = 3 is the smallest whole number that leaves every measured step without
checkpointing where the uncapped count put it - their classes are allocated at most 3 times as often
as they are alive at once - and keeps the checkpointed vision models at or above their medians) and
a heap share that leaves the recomputed blocks out (:func:`without_recomputation`). With both, the
checkpointed estimate is below the plain one on every model family and bundled config the tests
trace (tests/test_trace_families.py).

The small language models measured behave otherwise: checkpointing saved them 16-77 MiB of tensors
(glibc-mmap runs) and their default-glibc resident set did not fall (medians of 8 processes with
checkpointing against 3 without: the tiny GPT-2 at batch 8 610 against 567 MiB, bert_tiny 656
against 664, llama_tiny 861 against 854). Their recomputed blocks are small (0.5-2.7 MiB: one
layer's hidden states and MLP intermediates at a time), allocated between the vocabulary-sized
blocks (15-31 MiB) that backward frees and allocates, and the holes they leave stay open. The
vision models' recomputed blocks are mostly 4.5-24.5 MiB, and their resident set fell with their
tensors. Hence the transient term: forward's transient blocks under :data:`SMALL_TRANSIENT` (4 MiB:
the round value between the language models' largest, 2.7 MiB, and the vision models' large ones)
count in the churn at :data:`TRANSIENT` of their bytes, and :data:`CHURN` = 0.6 and :data:`SAME_SIZE` = 0.8 (from 0.55 and 0.75) lift
the three language models to their medians (1.00-1.06x) - fitted on these measurements, with no
configuration held out.

**Threads.** The figures are for 1 intra-op thread (``torch.set_num_threads(1)``), as measured.
Worker threads that call malloc get their own arenas (up to 8 per core on 64-bit); measured here
with 2 and 4 threads (x86-64, 2 cores, fresh processes), the resident set stayed within the 1-thread
process-to-process spread: resnet18 at batch 8 266 MiB median with 2 threads (268 and 279 in two
processes with 4) against 270 with 1, vit_tiny at batch 8 157 against 153, bert_tiny 664 against
664, the tiny GPT-2 at batch 4 386 against 406 (359-407 with 1 thread) - but one of its two 4-thread
processes reached 439 MiB, 3% over its estimate; with ``MALLOC_MMAP_THRESHOLD_`` set, 2 threads
added 2-3 MiB. Not modelled, stated with every estimate; not measured on ARM (a Raspberry Pi's
aarch64 wheels run other GEMM and convolution kernels). Torch-free.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

from .rounding import CPU_ROUND, round_up

#: glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit (4 MiB × sizeof(long)): the dynamic threshold's cap.
MMAP_THRESHOLD_MAX = 32 << 20
#: the threshold the ``glibc-mmap`` model assumes the user sets (``MALLOC_MMAP_THRESHOLD_``).
MMAP_THRESHOLD = 131072
#: share of one same-size class's allocations per step that stays resident as holes.
SAME_SIZE = 0.8
#: a size class leaves at most this many holes per block of it alive at once (see the docstring).
HOLES_PER_LIVE = 3
#: share of the step's churn (gradients + activations + temporaries) that stays resident as holes.
CHURN = 0.6
#: forward's transient blocks smaller than this count in the churn (see the docstring) ...
SMALL_TRANSIENT = 4 << 20
#: ... at this share of their bytes.
TRANSIENT = 0.5


def largest_class_bytes(blocks: Iterable[int], events: Sequence[int] = ()) -> int:
    """The step's largest heap block size (64-B aligned, at most :data:`MMAP_THRESHOLD_MAX`) times
    how often the step allocates it, at most :data:`HOLES_PER_LIVE` times as often as ``events``
    (a traced allocation sequence, :mod:`.sequence`'s encoding) holds such blocks alive at once."""
    counts = Counter(round_up(n, CPU_ROUND) for n in blocks if 0 < n <= MMAP_THRESHOLD_MAX)
    if not counts:
        return 0
    size = max(counts)
    n = counts[size]
    if events:
        n = min(n, HOLES_PER_LIVE * max(1, live_at_once(events, size)))
    return size * n


def live_at_once(events: Sequence[int], size: int) -> int:
    """The most blocks of ``size`` (64-B aligned) alive together in an allocation sequence."""
    sizes: list[int] = []
    live = most = 0
    for e in events:
        if e >= 0:
            sizes.append(round_up(e, CPU_ROUND))
            if sizes[-1] == size:
                live += 1
                most = max(most, live)
        elif sizes[~e] == size:
            live -= 1
    return most


def heap_share(blocks: Iterable[int]) -> float:
    """The share of a step's allocated bytes in blocks the heap serves (at most
    :data:`MMAP_THRESHOLD_MAX`): larger ones are always their own mapping, returned when freed."""
    sizes = [n for n in blocks if n > 0]
    total = sum(sizes)
    return sum(n for n in sizes if n <= MMAP_THRESHOLD_MAX) / total if total else 1.0


def without_recomputation(events: Sequence[int], forward_end: int) -> list[int]:
    """The block sizes a traced step allocates (``events`` in :mod:`.sequence`'s encoding),
    less those gradient checkpointing recomputes: per block that forward allocated and freed
    again before it ended (what checkpointing does not save), one backward allocation of that
    size."""
    sizes: list[int] = []
    transient: Counter = Counter()
    for k, e in enumerate(events):
        if e >= 0:
            sizes.append(e)
        elif k < forward_end:
            transient[sizes[~e]] += 1
    kept = []
    for k, e in enumerate(events):
        if e < 0:
            continue
        if k >= forward_end and transient[e] > 0:
            transient[e] -= 1
            continue
        kept.append(e)
    return kept


def forward_transients(events: Sequence[int], forward_end: int) -> int:
    """:data:`TRANSIENT` × the bytes of the blocks smaller than :data:`SMALL_TRANSIENT` that
    forward allocates and frees again before it ends (``events`` in :mod:`.sequence`'s encoding): the per-layer intermediates
    a step's peak does not hold - with gradient checkpointing, every layer's but the saved segment
    inputs."""
    sizes: list[int] = []
    total = 0
    for k, e in enumerate(events[:forward_end]):
        if e >= 0:
            sizes.append(e)
        elif sizes[~e] < SMALL_TRANSIENT:
            total += sizes[~e]
    return int(TRANSIENT * total)


def retained_bytes(same_size_class: int, churn: int) -> int:
    """Heap bytes a default-glibc process keeps resident beyond the live tensors at the peak: the
    larger of the same-size term and the churn term (see the module docstring)."""
    return max(int(SAME_SIZE * same_size_class), int(CHURN * churn))
