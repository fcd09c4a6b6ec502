"""Rounding rules: the bytes one tensor's block takes under each allocator, before any pooling.

The one home of allocation quanta, used by the state planner, the step temporaries, the activation
trace and the memory estimate (what a whole step's blocks cost, pools and segments included, is
:mod:`smmf_plan.allocators.models`). Torch-free.

* ``cpu``: PyTorch's CPU allocator (``c10::alloc_cpu``) hands out 64-byte aligned blocks.
* ``cuda``: PyTorch's CUDA caching allocator rounds every block up to a multiple of 512 B (what
  ``torch.cuda.memory_allocated`` reports). Tensors a CUDA implementation keeps on the host
  (torch Adam's ``step`` without ``fused``/``capturable``) cost nothing on the device.
* ``raw``: no rounding (logical bytes), for exact comparisons.
* pinned host memory (``pin_memory=True``, what CPU offload copies into): PyTorch's
  ``CachingHostAllocator`` rounds every block up to the next power of two
  (``c10::llvm::PowerOf2Ceil``; ``pinned_max_round_threshold`` is unlimited by default),
  :func:`pinned_round`.
"""

from __future__ import annotations

from dataclasses import dataclass


def round_up(nbytes: int, quantum: int) -> int:
    """``nbytes`` rounded up to a multiple of ``quantum`` (0 stays 0)."""
    return -(-nbytes // quantum) * quantum


def pinned_round(nbytes: int) -> int:
    """Bytes a pinned host block of ``nbytes`` takes: the next power of two (0 stays 0)."""
    return 0 if nbytes <= 0 else 1 << (nbytes - 1).bit_length()


@dataclass(frozen=True)
class Allocator:
    """An allocation rule: every block is a multiple of ``quantum`` bytes."""

    id: str
    quantum: int
    description: str

    def round(self, nbytes: int) -> int:
        return round_up(nbytes, self.quantum)


RAW = Allocator("raw", 1, "logical bytes, no rounding")
CPU = Allocator("cpu", 64, "PyTorch CPU allocator: 64-B aligned blocks")
CUDA = Allocator("cuda", 512, "PyTorch CUDA caching allocator: blocks rounded up to 512 B")

#: every rounding rule by id, "raw" included.
ROUNDINGS: dict[str, Allocator] = {a.id: a for a in (RAW, CPU, CUDA)}
#: the allocators a device can have (what plans report allocated bytes for).
DEVICE_ALLOCATORS: tuple[str, ...] = ("cpu", "cuda")
#: quantum by id, for hot loops.
QUANTUM: dict[str, int] = {a.id: a.quantum for a in ROUNDINGS.values()}
CPU_ROUND = CPU.quantum
CUDA_ROUND = CUDA.quantum


def get(allocator: str) -> Allocator:
    try:
        return ROUNDINGS[allocator]
    except KeyError:
        raise ValueError(
            f"unknown allocator {allocator!r}: use one of {', '.join(ROUNDINGS)}") from None
