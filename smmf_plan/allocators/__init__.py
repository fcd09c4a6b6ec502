"""Allocators: how a runtime turns the tensors of a training step into the memory it really takes.

The one home of allocators. By concern:

* :mod:`.rounding` - the bytes one tensor's block takes (64-B aligned on CPU, 512-B blocks on
  CUDA); used by the state planner, the step temporaries, the trace and the estimate;
* :mod:`.sequence` - the allocation sequence of training steps that an allocator model replays;
* :mod:`.caching` - PyTorch's CUDA caching allocator (pools, segments, splitting), replayed;
* :mod:`.glibc` - glibc malloc on CPU, default and with ``MALLOC_MMAP_THRESHOLD_`` set;
* :mod:`.models` - the allocator models a plan can assume (``--allocator``), each with its runtime
  terms and the assumptions it states.

Torch-free.
"""

from __future__ import annotations

from .rounding import (
                       CPU,
                       CPU_ROUND,
                       CUDA,
                       CUDA_ROUND,
                       DEVICE_ALLOCATORS,
                       QUANTUM,
                       RAW,
                       ROUNDINGS,
                       Allocator,
                       get,
                       pinned_round,
                       round_up,
)

__all__ = ["CPU", "CPU_ROUND", "CUDA", "CUDA_ROUND", "DEVICE_ALLOCATORS", "QUANTUM", "RAW",
           "ROUNDINGS", "Allocator", "get", "pinned_round", "round_up"]
