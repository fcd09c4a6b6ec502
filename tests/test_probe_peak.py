"""The probe's CPU peak method (VmRSS baseline, /proc/self/clear_refs, VmHWM) sees what is
allocated inside the measured window, and the OOM classification used by the worker."""

from __future__ import annotations

import gc
import signal

import pytest

from smmf_plan.probe import rss
from smmf_plan.probe.limits import is_oom, killed_by_oom

MiB = 2**20

needs_proc = pytest.mark.skipif(not rss.available(), reason="needs Linux /proc/self/clear_refs")


@needs_proc
def test_a_200_mib_tensor_inside_the_window_raises_the_peak_by_200_mib():
    import torch

    gc.collect()
    base = rss.rss_bytes()
    window = rss.PeakWindow()
    t = torch.ones(200 * MiB // 4)  # fp32, every page written
    del t  # freed before the reading: the high-water mark still holds it
    growth = window.segment_peak() - base
    assert abs(growth - 200 * MiB) < 12 * MiB, growth / MiB


@needs_proc
def test_reset_forgets_an_earlier_peak():
    import mmap

    import torch

    t = torch.ones(120 * MiB // 4)
    del t
    gc.collect()
    base = rss.rss_bytes()
    window = rss.PeakWindow()  # resets VmHWM to the current RSS
    # fresh anonymous pages, whatever malloc's thresholds are after earlier tests in this process
    small = mmap.mmap(-1, 8 * MiB)
    small.write(b"x" * (8 * MiB))
    growth = window.segment_peak() - base
    small.close()
    assert 6 * MiB < growth < 40 * MiB, growth / MiB  # the 120 MiB peak before the reset is gone


@needs_proc
def test_window_keeps_the_largest_segment():
    import torch

    gc.collect()
    base = rss.rss_bytes()
    window = rss.PeakWindow()
    a = torch.ones(100 * MiB // 4)
    del a
    first = window.segment_peak() - base
    b = torch.ones(30 * MiB // 4)
    del b
    second = window.segment_peak() - base
    assert second < first - 50 * MiB
    assert window.peak - base == first


def test_oom_classification():
    assert is_oom(MemoryError())
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"))
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 MiB"))
    try:
        try:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] can't allocate memory")
        except RuntimeError:
            raise ValueError("timm could not build the model") from None
    except ValueError as wrapped:
        assert is_oom(wrapped)  # the allocator's failure is still seen through the wrapper
    assert not is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_oom(ValueError("bad config"))
    assert killed_by_oom(-signal.SIGKILL)
    assert not killed_by_oom(-signal.SIGSEGV) and not killed_by_oom(1) and not killed_by_oom(0)
