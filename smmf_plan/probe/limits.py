"""Memory caps for a probe subprocess, and what counts as running out of memory.

CPU (Linux): ``resource.setrlimit(RLIMIT_AS)`` in the child, set *after* torch and the model
libraries are imported and the thread pool is warm, to the current address-space size plus the
cap. So the cap limits what the training (model, batch, optimizer, steps) may add; the interpreter
and libraries already loaded are not counted against it (their size differs per platform: this
machine's CUDA build of torch alone is ~0.5 GiB resident). ``RLIMIT_AS`` limits *address space*,
not resident memory: reserved-but-untouched mappings (malloc arenas, thread stacks, mmap slack)
count too, so the cap is conservative — a run that passes under it fits in that much RAM; a run
refused under it may still fit by a margin. A cgroup v2 ``memory.max`` would limit resident memory
instead but needs a delegated, writable cgroup, which an unprivileged process rarely has; it is not
used.

CUDA: ``torch.cuda.set_per_process_memory_fraction(cap / total)``, which the caching allocator
enforces on its reserved memory (the CUDA context is not counted).

A failure to allocate (``MemoryError``, a ``RuntimeError``/``torch.OutOfMemoryError`` whose message
says "out of memory" or "can't allocate", ``std::bad_alloc``), or the child being killed by
``SIGKILL`` (the kernel's OOM killer), is an OOM: the probe reports status ``"oom"`` with the step it
happened at, never a crash.
"""

from __future__ import annotations

import signal
from typing import Any

from .rss import vm_size_bytes

OOM_MARKERS = ("out of memory", "can't allocate", "cannot allocate", "bad_alloc",
               "not enough memory", "failed to allocate")

METHODS = {
    "rlimit_as": "Linux RLIMIT_AS over the post-import address space (conservative: counts "
                 "reserved address space, not only resident memory)",
    "cuda_memory_fraction": "torch.cuda.set_per_process_memory_fraction (caching allocator's "
                            "reserved memory; CUDA context not counted)",
}


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed allocation."""
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    if name in ("OutOfMemoryError",):
        return True
    # wrapped failures (e.g. a SourceError around the allocator's RuntimeError) keep the message
    seen = 0
    while exc is not None and seen < 5:
        text = str(exc).lower()
        if any(m in text for m in OOM_MARKERS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def killed_by_oom(returncode: int | None) -> bool:
    """A child that died of ``SIGKILL`` was, in practice, killed by the kernel's OOM killer."""
    return returncode is not None and returncode == -signal.SIGKILL


def apply_cpu_cap(cap_bytes: int) -> dict[str, Any]:
    """Limit this process's address space to its current size + ``cap_bytes`` (Linux)."""
    import resource


    current = vm_size_bytes()
    if current is None:
        raise RuntimeError("cannot read VmSize from /proc/self/status: a CPU memory cap needs Linux")
    limit = current + int(cap_bytes)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY and limit > hard:
        limit = hard
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return {"method": "rlimit_as", "cap_bytes": int(cap_bytes), "address_space_at_cap": current,
            "limit_bytes": limit, "note": METHODS["rlimit_as"]}


def apply_cuda_cap(cap_bytes: int, device=None) -> dict[str, Any]:
    """Limit the caching allocator of ``device`` to ``cap_bytes``."""
    import torch

    total = torch.cuda.get_device_properties(device or 0).total_memory
    fraction = min(1.0, max(0.0, cap_bytes / total))
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return {"method": "cuda_memory_fraction", "cap_bytes": int(cap_bytes), "fraction": fraction,
            "device_total_bytes": int(total), "note": METHODS["cuda_memory_fraction"]}
