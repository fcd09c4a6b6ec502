"""The fused CUDA kernel: two Triton launches per step for all parameters of a bucket.

A bucket is the parameters of one group that share device, dtype (fp32, bf16 or fp16) and step.
Every parameter, viewed as its square-matricized ``(n̂, m̂)`` matrix, is cut into tasks of
``ROWS`` rows (a multiple of 8, so that a task owns whole bytes of the packed sign):

1. ``_sweep`` (one program per task, all parameters in one launch through a table of pointers):
   reads the gradient and the parameter once, decompresses ``M`` from the old sign and factors,
   updates both moments and the parameter, writes the new sign bits, the new row factors (its
   own rows, summed in float64 across column chunks) and its column partial sums and total.
2. ``_finish`` (one program per parameter and block of columns): adds the tasks' column partials
   in a fixed order in float64 and normalises the column factor by the sum of the tasks' totals.

No host synchronisation: the hyper-parameters are Python floats passed as kernel arguments, the
table of pointers is copied to the device asynchronously from pinned memory, and nothing reads a
device value on the host. Results do not depend on scheduling (no atomics, fixed summation order).

Sign bits: where ``m̂ % 8 == 0`` a tile packs its bits in registers and stores whole bytes. Other
widths write one flag byte per element into a scratch buffer and pack the task's bytes after a
barrier (2 more bytes of traffic per element, only for such parameters).

Runs on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1``), which is how the tests
check it against the eager kernel without a GPU.
"""

from __future__ import annotations

import functools
import threading

from ._layout import TRITON_ROWS as ROWS
from ._layout import triton_scratch

#: columns per tile of the sweep (rows per task: ``ROWS``); columns per program of the finish
COLS = 128
FINISH_COLS = 256
_FIELDS = 15  # int64 fields per parameter in the table

_lock = threading.Lock()
_result: dict[str, object] = {}


def load_error() -> str | None:
    """``None`` when Triton is importable (CUDA builds of torch ship it), else why not."""
    with _lock:
        if not _result:
            try:
                _result["kernels"] = _compile()
            except Exception as exc:
                text = str(exc).strip().splitlines()
                _result["error"] = f"Triton is unavailable ({text[0] if text else type(exc).__name__})"
        return _result.get("error")  # type: ignore[return-value]


def step(params, grads, states, shapes, *, first: bool, packed: bool, beta1: float, beta2: float,
         lr: float, eps: float, decay: float, coupled: float, ws) -> None:
    """One fused step for same-dtype parameters on one device (CUDA, or CPU under the Triton
    interpreter); arguments as :func:`smmf_plan.optim._cpp.step`."""
    import torch

    from ._kernels import is_fake

    why = load_error()
    if why:
        raise RuntimeError(why)
    kernels = _result["kernels"]
    device = params[0].device
    floats, flags = triton_scratch(shapes, first=first, packed=packed)
    colbuf = ws.get("triton_columns", floats, torch.float32, device)
    flagbuf = ws.get("triton_flags", max(flags, 1), torch.uint8, device)
    if is_fake(params[0]):
        return  # shapes only: the scratch above is what a real step allocates
    table, tasks = _table(params, grads, states, shapes, first, colbuf, flagbuf, packed)
    meta = ws.cached("triton_table", table, lambda: _to_device(table, device))
    task_map = _task_map(tuple(shapes), device)
    kernels.sweep[(tasks,)](
        meta, task_map, beta1, 1.0 - beta1, beta2, 1.0 - beta2, lr, eps, decay, coupled,
        DTYPE=kernels.dtype(params[0].dtype), FIRST=first, PACKED=packed, WD=decay != 1.0 or coupled != 0.0, ROWS=ROWS, COLS=COLS,
        FIELDS=_FIELDS, num_warps=8)
    max_m = max(m for _, m in shapes)
    kernels.finish[(len(params), -(-max_m // FINISH_COLS))](
        meta, FIRST=first, ROWS=ROWS, FIELDS=_FIELDS, BLOCK=FINISH_COLS, num_warps=4)


def _table(params, grads, states, shapes, first, colbuf, flagbuf, packed):
    """int64 per parameter: n, m, first task, tasks, pointers (w, g, row_m, col_m, sign, row_v,
    col_v, column partials, flags), whether ``m % 8 == 0``, 0."""
    rows = []
    task0 = 0
    col_at = colbuf.data_ptr()
    flag_at = flagbuf.data_ptr()
    moments = 2 if first else 1
    for p, g, s, (n, m) in zip(params, grads, states, shapes):
        tasks = -(-n // ROWS)
        rows += [n, m, task0, tasks, p.data_ptr(), g.data_ptr(),
                 s["row_m"].data_ptr() if first else 0, s["col_m"].data_ptr() if first else 0,
                 s["sign"].data_ptr() if first else 0, s["row_v"].data_ptr(), s["col_v"].data_ptr(),
                 col_at, flag_at, int(m % 8 == 0), 0]
        col_at += 4 * moments * tasks * (m + 1)
        if first and packed and m % 8:
            flag_at += n * m
        task0 += tasks
    return rows, task0


def _to_device(table: list[int], device):
    import torch

    host = torch.tensor(table, dtype=torch.int64)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host


@functools.lru_cache(maxsize=64)
def _task_map_host(shapes: tuple) -> list[int]:
    out = []
    for k, (n, _) in enumerate(shapes):
        for b in range(-(-n // ROWS)):
            out += [k, b]
    return out


_TASK_MAPS: dict[tuple, object] = {}


def _task_map(shapes: tuple, device):
    """(parameter, row block) per task; the same every step for the same parameters, so cached
    on the device."""
    key = (shapes, str(device))
    cached = _TASK_MAPS.get(key)
    if cached is None:
        cached = _to_device(_task_map_host(shapes), device)
        if len(_TASK_MAPS) > 64:
            _TASK_MAPS.clear()
        _TASK_MAPS[key] = cached
    return cached


def _compile():
    from . import _triton_kernels as k

    return _Kernels(k.sweep, k.finish)


class _Kernels:
    def __init__(self, sweep, finish) -> None:
        import torch
        import triton.language as tl

        self.sweep = sweep
        self.finish = finish
        self._dtypes = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}

    def dtype(self, dtype):
        return self._dtypes[dtype]
