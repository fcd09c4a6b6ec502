"""Resettable peak RSS of this process on Linux (the probe's CPU peak measurement).

Method: read ``VmRSS`` from ``/proc/self/status`` as the baseline (after imports, before the model
exists); write ``5`` to ``/proc/self/clear_refs``, which resets the kernel's high-water mark
``VmHWM`` to the current RSS; run the work; read ``VmHWM``. ``VmHWM - baseline`` is the peak
resident memory the work added. It counts every page the process touched (tensors, allocator
slack, glibc arenas that were not returned to the OS, Python objects), which is what a user's
machine has to provide; it is not a tensor-level figure.
"""

from __future__ import annotations

import os

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _status_kib(key: str) -> int | None:
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int | None:
    """Current resident set size (``VmRSS``), or ``None`` where ``/proc`` has none."""
    k = _status_kib("VmRSS")
    return None if k is None else k * 1024


def hwm_bytes() -> int | None:
    """Peak resident set size since start or the last :func:`reset_peak` (``VmHWM``)."""
    k = _status_kib("VmHWM")
    return None if k is None else k * 1024


def vm_size_bytes() -> int | None:
    """Current virtual address-space size (``VmSize``), what ``RLIMIT_AS`` limits."""
    k = _status_kib("VmSize")
    return None if k is None else k * 1024


def reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS; ``False`` where the kernel does not allow it."""
    try:
        fd = os.open(_CLEAR_REFS, os.O_WRONLY)
    except OSError:
        return False
    try:
        os.write(fd, b"5")
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def available() -> bool:
    """Whether resettable peak RSS works here (Linux with ``/proc/self/clear_refs``)."""
    return rss_bytes() is not None and hwm_bytes() is not None and reset_peak()


class PeakWindow:
    """Peak RSS over several segments: call :meth:`segment_peak` to close a segment (returns its
    peak and resets the mark); :attr:`peak` is the maximum over all segments so far."""

    def __init__(self) -> None:
        self.peak = 0
        reset_peak()

    def segment_peak(self) -> int:
        hwm = hwm_bytes() or 0
        self.peak = max(self.peak, hwm)
        reset_peak()
        return hwm
