"""SMMF (Park & Lee, AAAI 2025) as the bundled :class:`smmf_plan.optim.SMMF` stores it.

This module is the one definition of SMMF's state and of its kernels' block size: the optimizer
(:mod:`smmf_plan.optim`) imports :func:`smmf_state`, :data:`SIGN_STORAGES`, :func:`is_factorized`
and :data:`BLOCK_NUMEL` from here and allocates exactly the tensors :func:`smmf_state` returns, so
planner and optimizer cannot drift apart. Torch-free; it never imports :mod:`smmf_plan.optim` (the
registry builds the optimizer through its import path).

Factorized path (every parameter when ``vector_reshape`` is true, the paper's default): with
``(n̂, m̂) = square_matricize(shape)``, the first moment keeps ``row_m (n̂,)``, ``col_m (m̂,)`` and a
sign matrix, the second ``row_v (n̂,)``, ``col_v (m̂,)``. The sign is bit-packed into ``⌈n̂m̂/8⌉``
``uint8`` (``sign="packed"``, what the paper's tables count) or one ``bool`` per element
(``sign="bool"``, what the paper's reference code stores). Without a first moment (``beta=None``)
only ``row_v``/``col_v`` remain. Vectors are fp32 for half-precision parameters.

Dense path (``vector_reshape=False`` and a parameter whose squeezed rank is 1): Adam-like
``exp_avg``/``exp_avg_sq`` of the parameter's shape, fp32 for half-precision parameters.

Step temporaries: SMMF keeps its step scratch **between steps** (page faults of fresh buffers cost
more than the arithmetic), and what it keeps depends on the kernel ``SMMF(fused=None)`` picks —
the ``fused`` path by default on CPU (the C++ kernel) and CUDA (the Triton kernel), the
``for-loop`` path for its eager kernels (``fused=False``, fp64, no compiler):

* ``fused`` on CPU: float64 column sums of ``3·m̂`` per task (:func:`cpu_tasks`: up to 4 per
  thread; :func:`cpu_scratch_elems`: the largest parameter counts), for :data:`PLAN_THREADS` torch
  threads.
* ``fused`` on CUDA: per task of :data:`TRITON_ROWS` rows its column partials and total, for
  every factorized parameter (one launch updates them all), and a flag byte per element of the
  parameters whose ``m̂`` is not a multiple of 8 (:func:`triton_scratch`).
* ``for-loop`` (eager): a parameter is updated in row blocks of at most :data:`BLOCK_NUMEL`
  elements: the decompressed first moment and the second-moment matrix (2 × block, state
  dtype), a state-dtype scratch for the sign compare (1 × block) and, for packed signs, a byte
  per element plus a 4-B index per sign byte (3/8 × block), and a few factor-sized vectors
  (3 × (n̂ + m̂)). Without a first moment only the second-moment matrix.

Dense-path parameters add two full-size foreach results (``g·g`` and ``sqrt(V) + eps``) on every
path.

Sharded on dim 0 (FSDP2, :func:`shard_state`). Every SMMF operation is elementwise or a row/column
sum of the square-matricized matrix, and sums split across ranks, so the exact sharded design
(``../shared/reference/distributed-training.md``) keeps the rank-1 factors of the **full**
``(n̂, m̂)`` matrix on every rank (``row_m``, ``col_m``, ``row_v``, ``col_v``: replicated, rebuilt by
one all-reduce of partial sums per step) and only the rank's slice of the sign: the ``k`` local
elements, ``⌈k/8⌉`` bytes packed or the local shape as ``bool``. A rank whose shard is empty still
keeps the factors. Dense-path parameters keep Adam-like moments of the local shape.

Probe learning rate 1e-3, the paper's.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from .. import dtypes
from ..allocators import get, round_up
from ..shapes import ParamSpec, Shape, square_matricize
from .base import (
    VERIFIED_BY_TESTS,
    ZERO_FLAT,
    Interval,
    OptimizerInfo,
    Option,
    Options,
    Requirement,
    StateTensor,
)

SIGN_STORAGES = ("packed", "bool")

#: elements per row block of the eager kernel (``smmf_plan.optim._kernels``): a parameter is
#: updated block by block, and the scratch buffers the optimizer keeps between steps are sized to
#: the largest block. Defined here so that the planner's temporaries rule and the kernel agree.
BLOCK_NUMEL = 1 << 20


def is_factorized(shape: Shape, vector_reshape: bool) -> bool:
    """The reference's routing: only a squeezed-rank-1 tensor with ``vector_reshape=False`` takes
    the dense path (``(1, 768)`` and ``(C, 1, 1, 1)`` count as vectors)."""
    squeezed_rank = sum(1 for s in shape if s != 1)
    return vector_reshape or squeezed_rank != 1


def block_rows(m: int) -> int:
    """Rows of an ``(n̂, m̂)`` matrix per block: a multiple of 8 (blocks start on a sign byte)."""
    return max(8, (BLOCK_NUMEL // max(m, 1)) // 8 * 8)


#: the fused CPU kernel (``smmf_plan/optim/csrc/smmf_cpu.cpp``) splits a parameter into tasks of
#: at least this many elements, up to ``CPU_TASKS_PER_THREAD`` per thread (threads claim them as
#: they come free, so one descheduled thread does not hold up a step).
CPU_MIN_PER_TASK = 1 << 15
CPU_TASKS_PER_THREAD = 4
#: rows per group of the fused CPU kernel (``kRowGroup`` in the .cpp: its column partials are
#: flushed into double precision every group); a task is a run of whole groups.
CPU_ROW_GROUP = 16


def cpu_tasks(n: int, m: int, threads: int) -> int:
    """Row tasks of the fused CPU kernel for an ``(n̂, m̂)`` matrix: runs of whole
    :data:`CPU_ROW_GROUP`-row groups (a task starts on a sign byte), each with its own column
    partials. Fixed for a thread count, so the column sums are added in the same order every step
    (deterministic results)."""
    groups = -(-n // CPU_ROW_GROUP)
    return max(1, min(CPU_TASKS_PER_THREAD * threads, groups, (n * m) // CPU_MIN_PER_TASK))


def cpu_scratch_elems(shapes: Iterable[tuple[int, int]], threads: int) -> int:
    """float64 elements of the column-sum scratch the fused CPU kernel uses (kept between steps):
    ``3·m̂`` per task, ``m̂`` rounded up to 16 (double sums of ``|M|`` and ``V``, two float
    partials); the largest parameter counts."""
    return max((3 * -(-m // 16) * 16 * cpu_tasks(n, m, threads) for n, m in shapes), default=0)


#: rows per task of the fused CUDA (Triton) kernel (a multiple of 8: a task owns whole sign bytes)
TRITON_ROWS = 32


def triton_scratch(shapes: Iterable[tuple[int, int]], *, first: bool, packed: bool) -> tuple[int, int]:
    """(float32 elements, flag bytes) of the scratch the fused CUDA kernel keeps for one bucket of
    ``(n̂, m̂)`` matrices: per task of ``TRITON_ROWS`` rows, its column partial sums and total for
    ``V`` (and ``|M|``); and one flag byte per element of the parameters whose ``m̂`` is not a
    multiple of 8 (packed signs only: their bits are packed after a barrier)."""
    moments = 2 if first else 1
    floats = flags = 0
    for n, m in shapes:
        floats += moments * -(-n // TRITON_ROWS) * (m + 1)
        if first and packed and m % 8:
            flags += n * m
    return floats, flags


def packed_sign_bytes(numel: int) -> int:
    return -(-numel // 8)


def smmf_state(
    shape: Shape, dtype: str, *, first_moment: bool = True, sign: str = "packed",
    vector_reshape: bool = True,
) -> list[StateTensor]:
    """The state tensors SMMF keeps for one parameter of ``shape`` and ``dtype``."""
    if sign not in SIGN_STORAGES:
        raise ValueError(f"sign must be one of {SIGN_STORAGES}, got {sign!r}")
    vec = dtypes.upcast(dtypes.canonical(dtype))
    if not is_factorized(shape, vector_reshape):
        out = [StateTensor("exp_avg", shape, vec)] if first_moment else []
        return out + [StateTensor("exp_avg_sq", shape, vec)]
    n, m = square_matricize(shape)
    out = []
    if first_moment:
        out += [StateTensor("row_m", (n,), vec), StateTensor("col_m", (m,), vec)]
        if sign == "packed":
            out.append(StateTensor("sign", (packed_sign_bytes(n * m),), "uint8"))
        else:
            out.append(StateTensor("sign", (n, m), "bool"))
    return out + [StateTensor("row_v", (n,), vec), StateTensor("col_v", (m,), vec)]


def state(o: Options, spec: ParamSpec, group: str) -> list[StateTensor]:
    return smmf_state(spec.shape, spec.dtype, first_moment=o["beta"] is not None, sign=o["sign"],
                      vector_reshape=o["vector_reshape"])


def shard_state(o: Options, spec: ParamSpec, local_shape: Shape, group: str) -> list[StateTensor]:
    """What one rank keeps for its dim-0 shard of ``spec`` (see the module docstring): the full
    matrix's factors, replicated, and the sign of the local elements only."""
    full = state(o, spec, group)
    if not is_factorized(spec.shape, o["vector_reshape"]):
        # routed by the whole tensor: a 1-row shard of a (3,) vector is still a vector's moments
        return [StateTensor(t.name, tuple(local_shape), t.dtype) for t in full]
    local_numel = 1
    for d in local_shape:
        local_numel *= d
    out = []
    for t in full:
        if t.name != "sign":
            out.append(t)
        elif o["sign"] == "packed":
            out.append(StateTensor("sign", (packed_sign_bytes(local_numel),), "uint8"))
        else:
            out.append(StateTensor("sign", tuple(local_shape), "bool"))
    return out


def _dense_and_shapes(o: Options, specs: Sequence[ParamSpec], quantum: int):
    """Dense-path parameters' foreach results (``g·g`` and ``sqrt(V) + eps``), and the
    ``(n̂, m̂)`` of the factorized ones with their state item size."""
    dense = 0
    shapes = []
    for spec in specs:
        item = 4 if dtypes.canonical(spec.dtype) in dtypes.HALF else dtypes.itemsize(spec.dtype)
        if not is_factorized(spec.shape, o["vector_reshape"]):
            dense += 2 * round_up(spec.numel * item, quantum)
        else:
            shapes.append((square_matricize(spec.shape), item))
    return dense, shapes


def eager_temp_bytes(o: Options, specs: Sequence[ParamSpec], quantum: int) -> int:
    """The eager kernels' scratch (the ``for-loop`` path; see the module docstring): the largest
    block's buffers plus the dense-path parameters' foreach results."""
    first = o["beta"] is not None
    # in units of one state-dtype element: decompressed M, V, a float scratch for the sign
    # compare, and for packed signs a bool per element plus a 4-B index per sign byte
    per_elem = 1.0 if not first else (3 + (3 / 8 if o["sign"] == "packed" else 0))
    dense, shapes = _dense_and_shapes(o, specs, quantum)
    peak = 0
    for (n, m), item in shapes:
        block = min(n, block_rows(m)) * m
        here = round_up(int(per_elem * block * item), quantum) + 3 * round_up((n + m) * item, quantum)
        peak = max(peak, here)
    return peak + dense


#: torch threads a plan assumes for the fused CPU kernel's scratch (it grows with the thread count:
#: one task of column sums per thread). Plans are the same on every planning machine; a 64-thread
#: run keeps at most a few MiB more than planned.
PLAN_THREADS = 8


def fused_cpu_temp_bytes(o: Options, specs: Sequence[ParamSpec], quantum: int,
                         threads: int = PLAN_THREADS) -> int:
    """The fused C++ kernel's scratch: the column sums of the largest parameter's thread tasks
    (:func:`cpu_scratch_elems`, float64), with ``threads`` torch threads."""
    dense, shapes = _dense_and_shapes(o, specs, quantum)
    nm = [s for s, _ in shapes]
    return (round_up(8 * cpu_scratch_elems(nm, threads), quantum) if nm else 0) + dense


def fused_cuda_temp_bytes(o: Options, specs: Sequence[ParamSpec], quantum: int) -> int:
    """The fused Triton kernel's scratch: column partials per task of every factorized parameter
    (one launch updates them all) and the flag bytes (:func:`triton_scratch`)."""
    dense, shapes = _dense_and_shapes(o, specs, quantum)
    if not shapes:
        return dense
    floats, flags = triton_scratch([s for s, _ in shapes], first=o["beta"] is not None,
                                   packed=o["sign"] == "packed")
    return round_up(4 * floats, quantum) + round_up(max(flags, 1), quantum) + dense


def fused_temp_bytes(o: Options, specs: Sequence[ParamSpec], quantum: int) -> int:
    """The ``fused`` path's rule on the device the plan is for: CUDA plans round with the CUDA
    allocator's quantum (512 B), every other quantum is a CPU plan."""
    if quantum == get("cuda").quantum:
        return fused_cuda_temp_bytes(o, specs, quantum)
    return fused_cpu_temp_bytes(o, specs, quantum)


def constructor(o: Options) -> dict:
    return dict(beta=o["beta"], sign=o["sign"], vector_reshape=o["vector_reshape"])


INFO = OptimizerInfo(
    id="smmf", display_name="SMMF", paper_name="SMMF",
    summary="SMMF: square-matricized rank-1 factors for both moments + a sign matrix",
    implementation="smmf_plan.optim:SMMF",
    requires=Requirement("smmf-plan", "smmf_plan.optim"),
    reproduces="smmf_plan.optim.SMMF (bundled; allocates its state from smmf_state)",
    verified=VERIFIED_BY_TESTS + " (the fused CPU kernel's rule exactly; the Triton kernel's under "
    "the Triton interpreter)",
    options={
        "sign": Option("packed", "choice", "sign matrix storage: 1 bit (packed) or 8 bits (bool, "
                       "as the paper's code)", choices=SIGN_STORAGES),
        "beta": Option(0.9, "float|none", "first-moment decay; none keeps no first moment",
                       Interval(0, 1)),
        "vector_reshape": Option(True, "bool", "factorize vectors too (the paper's default); "
                                 "false keeps Adam-like moments for squeezed-rank-1 parameters"),
    },
    state=state,
    shard_state=shard_state,
    temporaries={"for-loop": eager_temp_bytes, "fused": fused_temp_bytes},
    paths={"cpu": ("fused", "for-loop"), "cuda": ("fused", "for-loop")},
    path_args={"fused": {"fused": True}, "for-loop": {"fused": False}},
    keeps_scratch=True,
    probe_lr=1e-3, constructor=constructor,
    dist_caveats={
        "zero": ZERO_FLAT + "SMMF square-matricizes a block that crosses parameter boundaries",
    },
)
