"""Ground truth for the storage tracker's tests, measured by PyTorch itself: the peak of live tensor
bytes from the profiler's allocator events (CPU), independent of smmf_plan's tracker.

``torch.profiler`` with ``profile_memory=True`` records every allocation and free the allocator
makes; with ``record_shapes=True`` it also tells which allocations are tensor storages (an id is
assigned to every storage an operator reads). Scratch buffers a kernel allocates for itself
(oneDNN workspaces, reordered weights) get no id and are left out, so the peak is the
tensor-level peak the tracker models. A storage no operator ever reads (a result dropped unused)
gets no id either: a training step reads everything it keeps (outputs feed the loss, gradients
are accumulated), so it does not matter there.
"""

from __future__ import annotations

from typing import Any, Callable


def tensor_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes of tensor storages allocated and still live while ``fn()`` runs (storages that
    existed before count zero; their frees are not subtracted)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True) as prof:
        fn()
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        ev = stack.pop()
        stack.extend(ev.children)
        if ev.tag == _EventType.Allocation and ev.extra_fields.id is not None:
            events.append((ev.start_time_ns, ev.extra_fields.ptr, ev.extra_fields.alloc_size))
    live = peak = 0
    mine: dict[int, int] = {}  # ptr → size of storages allocated inside the window
    for _, ptr, size in sorted(events, key=lambda e: (e[0], e[2])):
        if size > 0:
            mine[ptr] = size
            live += size
        elif mine.pop(ptr, None) is not None:
            live += size
        peak = max(peak, live)
    return peak
