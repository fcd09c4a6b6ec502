"""The fused CPU kernel: ``csrc/smmf_cpu.cpp``, built on first use with ``torch.utils.cpp_extension.load``.

The source ships as package data and registers the operator ``torch.ops.smmf_plan.fused_step_``
(CPU implementation in C++, a no-op fake implementation registered here so that a step runs under
``FakeTensorMode``). It is compiled once per machine and torch version into torch's extension
cache (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``; about 30 s, announced on
stderr), then loaded from there. Building is serialised within a process by a lock and across
processes by torch's file lock in the build directory, so parallel test workers build it once.

Needs a C++ compiler (``$CXX`` or ``c++``) and ninja (a dependency of smmf-plan; found on ``PATH``
or through the ``ninja`` Python package). Where either is missing, :func:`load_error` says so in
one line and the optimizer falls back to the eager kernels (``SMMF(fused=None)``) or raises
(``SMMF(fused=True)``).

Flags: ``-O3`` for portable code and an AVX2 path compiled for that target alone and chosen at
run time (``__builtin_cpu_supports``), so the cached binary runs on any x86-64 or ARM machine that
shares the cache; ``-ffp-contract=off`` keeps both paths bit-identical; ``-fopenmp`` makes
``at::parallel_for`` use torch's own OpenMP thread pool (the same ``libgomp.so.1`` torch loads;
not on macOS, whose compiler lacks it: the kernel runs single-threaded there). Linux and macOS
(GCC or Clang); elsewhere the build fails and ``fused=None`` falls back to the eager kernels.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import threading
from pathlib import Path

SOURCE = Path(__file__).with_name("csrc") / "smmf_cpu.cpp"
# Apple's clang has no -fopenmp: there at::parallel_for runs on the calling thread alone
_OPENMP = [] if sys.platform == "darwin" else ["-fopenmp"]
CFLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", *_OPENMP]
LDFLAGS = [*_OPENMP]

_lock = threading.Lock()
_result: dict[str, object] = {}  # "op" or "error", once tried


def _name() -> str:
    digest = hashlib.sha256(SOURCE.read_bytes() + repr((CFLAGS, LDFLAGS)).encode()).hexdigest()[:10]
    return f"smmf_plan_cpu_{digest}"


def _ninja_on_path() -> str | None:
    """Make ninja findable by torch (which runs ``ninja --version`` from ``PATH``): a ``pip``-installed
    ninja lives in the environment's ``bin``, not on ``PATH`` when the environment is not activated."""
    if shutil.which("ninja"):
        return None
    try:
        import ninja  # the PyPI package: a ninja binary in ninja.BIN_DIR
    except ImportError:
        return "ninja is not installed (pip install ninja)"
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    return None if shutil.which("ninja") else "ninja is not installed (pip install ninja)"


def _compiler() -> str | None:
    cxx = os.environ.get("CXX", "c++")
    return None if shutil.which(cxx) else f"no C++ compiler ({cxx!r} is not on PATH; install g++ or set CXX)"


def _build():
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)  # "No CUDA runtime is found": irrelevant for a CPU-only extension
    try:
        return _load()
    finally:
        log.setLevel(level)


def _load():
    import torch
    from torch.utils import cpp_extension

    problem = _ninja_on_path() or _compiler()
    if problem:
        raise RuntimeError(problem)
    name = _name()
    build_dir = cpp_extension._get_build_directory(name, verbose=False)
    if not any(f.endswith(".so") for f in os.listdir(build_dir)):
        print("smmf-plan: compiling the fused SMMF CPU kernel once (about 30 s; cached in "
              f"{build_dir})", file=sys.stderr, flush=True)
    cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=CFLAGS, extra_ldflags=LDFLAGS,
                       build_directory=build_dir, is_python_module=False, verbose=False)
    op = torch.ops.smmf_plan.fused_step_
    torch.library.register_fake("smmf_plan::fused_step_")(_fake_step)
    return op


def _fake_step(*args, **kwargs) -> None:
    """Shapes and dtypes never change: under fake tensors a step writes nothing."""
    return None


def load_error() -> str | None:
    """``None`` when the kernel is loaded (building it on the first call), else why it cannot be."""
    with _lock:
        if not _result:
            try:
                _result["op"] = _build()
            except Exception as exc:  # no compiler, no ninja, a failed build: say why in one line
                text = str(exc).strip().splitlines()
                _result["error"] = (text[0] if text else type(exc).__name__)[:300]
        return _result.get("error")  # type: ignore[return-value]


def op():
    """The operator (call :func:`load_error` first)."""
    return _result["op"]


#: use the AVX2 path where the CPU has it (tests switch it off to compare it with the portable path)
VECTOR = True


def step(params, grads, states, shapes, *, first: bool, packed: bool, beta1: float, beta2: float,
         lr: float, eps: float, decay: float, coupled: float, ws) -> None:
    """One fused step for CPU parameters (contiguous, fp32/bf16/fp16, gradients of the same dtype)
    of square-matricized ``shapes``; ``states`` are their SMMF state dicts, updated in place.
    ``decay`` multiplies the parameter first (decoupled weight decay), ``coupled`` adds
    ``coupled·W`` to the gradient (Algorithm 6). The column-sum scratch comes from ``ws`` (kept)."""
    import torch

    from ._layout import cpu_scratch_elems, cpu_tasks

    threads = torch.get_num_threads()
    tasks = [cpu_tasks(n, m, threads) for n, m in shapes]
    scratch = ws.get("cpu_columns", cpu_scratch_elems(shapes, threads), torch.float64, params[0].device)
    op()(params, grads,
         [s["row_m"] for s in states] if first else [],
         [s["col_m"] for s in states] if first else [],
         [s["sign"] for s in states] if first else [],
         [s["row_v"] for s in states], [s["col_v"] for s in states],
         [n for n, _ in shapes], [m for _, m in shapes], tasks,
         scratch, packed, beta1 if first else 0.0, beta2, lr, eps, decay, coupled, VECTOR)
