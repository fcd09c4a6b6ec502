"""The allocator models a plan can assume (``--allocator``): what a training process's memory is
made of beyond its live tensors, on each kind of device.

==============  ==========================================  ============================
id              the process it describes                    devices (its default there)
==============  ==========================================  ============================
``glibc``       CPU, glibc malloc as installed (the user    CPU boards, ad-hoc sizes
                sets nothing); peak resident set
``glibc-mmap``  CPU, ``MALLOC_MMAP_THRESHOLD_=131072`` in   CPU boards, ad-hoc sizes
                the training process's environment
``cuda``        PyTorch's CUDA caching allocator on a       discrete NVIDIA GPUs
                discrete GPU; peak ``memory_reserved``
``unified``     the CUDA caching allocator on memory the    Jetson
                CPU shares: the host process counts too
``mps``         Apple silicon: MPS tensors and the host     Apple M-series
                process in one unified memory
==============  ==========================================  ============================

Each model states its runtime terms (:func:`runtime_parts`) and how the ``allocator`` part of a
step's breakdown - memory the allocator holds beyond the live tensors at the peak - is found
(:func:`allocator_part`): glibc's retained heap (:mod:`.glibc`), the caching allocator's reserved
but unallocated segments (:mod:`.caching`, replayed on the traced allocation sequence), nothing for
``glibc-mmap`` (measured: the resident set follows the tensors) and ``mps`` (not modelled).
Every figure is stated in :func:`assumptions`. Torch-free.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from ..errors import PlanError
from ..trace.affine import Affine
from . import caching, glibc
from .sequence import OptimizerStep, StepLog, training_sequence

MiB = 1 << 20


@dataclass(frozen=True)
class AllocatorModel:
    """One allocator model (see the module docstring)."""

    id: str
    #: the rounding rule of every block: "cpu" (64 B) or "cuda" (512 B), see :mod:`.rounding`.
    rounding: str
    #: the device allocator family it applies to (``Device.allocator``).
    family: str
    #: applies to unified-memory devices (CPU and GPU share one memory) rather than the others.
    unified: bool
    #: one line for --help, tables and JSON.
    summary: str
    #: what the user does to run under this model (empty: nothing, it is what happens anyway).
    how: str = ""

    def to_dict(self) -> dict:
        return {"id": self.id, "summary": self.summary, "rounding": self.rounding, "how": self.how}


GLIBC = AllocatorModel(
    "glibc", "cpu", "cpu", False,
    "CPU, glibc malloc as installed: peak resident set, freed heap blocks kept resident")
GLIBC_MMAP = AllocatorModel(
    "glibc-mmap", "cpu", "cpu", False,
    "CPU, glibc with MALLOC_MMAP_THRESHOLD_=131072: the resident set follows the live tensors",
    how="set MALLOC_MMAP_THRESHOLD_=131072 in the training process's environment")
CUDA = AllocatorModel(
    "cuda", "cuda", "cuda", False,
    "PyTorch's CUDA caching allocator: peak memory_reserved (512-B blocks, 2 MiB and 20 MiB "
    "segments), cuBLAS workspaces; the CUDA context is outside usable memory")
UNIFIED = AllocatorModel(
    "unified", "cuda", "cuda", True,
    "CUDA caching allocator on unified memory: reserved segments plus the host process "
    "(PyTorch, Python, libraries) in the same memory")
MPS = AllocatorModel(
    "mps", "cpu", "cpu", True,
    "Apple MPS on unified memory: tensors (MPS heaps not modelled) plus the host process")

MODELS: dict[str, AllocatorModel] = {m.id: m for m in (GLIBC, GLIBC_MMAP, CUDA, UNIFIED, MPS)}
IDS: tuple[str, ...] = tuple(MODELS)


def get_model(allocator: str) -> AllocatorModel:
    """The model of an id; :class:`PlanError` (one line, the ids) for an unknown one."""
    key = str(allocator).strip().lower()
    if key in MODELS:
        return MODELS[key]
    close = difflib.get_close_matches(key, IDS, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise PlanError(f"unknown allocator {allocator!r}: {hint}use one of {', '.join(IDS)}")


#: a device's allocator family ("cpu"; "cuda" is a model id too) read as its default model, for
#: callers that hold a device's family rather than a model (per-rank plans, library calls).
FAMILY_DEFAULT: dict[str, AllocatorModel] = {"cpu": GLIBC}


def resolve(allocator: str) -> AllocatorModel:
    """A model id, or a device's allocator family meaning its default model (:func:`get_model`'s
    error for anything else)."""
    return FAMILY_DEFAULT.get(allocator) or get_model(allocator)


def default_for(device) -> AllocatorModel:
    """The model a device's training process runs under when the user sets nothing."""
    unified = getattr(device, "memory_kind", "") == "unified"
    if device.allocator == "cuda":
        return UNIFIED if unified else CUDA
    return MPS if unified else GLIBC


def applicable(device) -> tuple[AllocatorModel, ...]:
    """The models that can describe ``device``."""
    unified = getattr(device, "memory_kind", "") == "unified"
    return tuple(m for m in MODELS.values() if m.family == device.allocator and m.unified == unified)


def for_device(device, allocator: str | None = None) -> AllocatorModel:
    """``allocator`` (an id) checked against ``device``, or the device's default; a model that
    cannot describe the device is a :class:`PlanError` naming the ones that can."""
    if allocator is None:
        return default_for(device)
    model = get_model(allocator)
    ok = applicable(device)
    if model not in ok:
        raise PlanError(f"--allocator {model.id} does not apply to {device.id} "
                        f"({_kind(device)}): use {' or '.join(m.id for m in ok)}")
    return model


def _kind(device) -> str:
    unified = getattr(device, "memory_kind", "") == "unified"
    if device.allocator == "cuda":
        return "CUDA on unified memory" if unified else "a CUDA GPU"
    return "Apple unified memory" if unified else "a CPU device"


# --------------------------------------------------------------------------- runtime terms

#: RSS of a process after ``import torch``, CPU-only build: this machine's measurement (508 MiB,
#: CUDA build, x86-64, torch 2.14) minus the 161 MiB resident in CUDA libraries, rounded up; not
#: measured on ARM (a Raspberry Pi's aarch64 wheel is CPU-only).
PYTORCH_CPU = 350 * MiB
#: the same with the CUDA build (this machine's measurement, rounded up): the host process of a
#: CUDA run on unified memory; not measured on a Jetson.
PYTORCH_CUDA = 510 * MiB
#: RSS that importing the model's library added here.
LIBRARY = {"timm": 196 * MiB, "transformers": 220 * MiB}
#: RSS growth beyond the tensor-level peak of a step with ``MALLOC_MMAP_THRESHOLD_=131072``,
#: measured 24-43 MiB on resnet50/resnet18/mobilenetv2/vit-tiny/tiny GPT-2 (Python objects,
#: kernel code pages, small-allocation heaps): the upper end, rounded up.
STEP_OVERHEAD = 44 * MiB
#: cuBLAS workspace per handle: ``CUBLAS_WORKSPACE_CONFIG`` default ``:4096:8`` on Hopper (32 MiB;
#: ``:4096:2:16:8``, 8.125 MiB, before it: the larger is assumed), and the cuBLASLt workspace
#: (1 MiB, ``CUBLASLT_WORKSPACE_SIZE``), both allocated through the caching allocator per
#: (handle, stream) (aten/src/ATen/cuda/CublasHandlePool.cpp).
CUBLAS_WORKSPACE = 32 * MiB
CUBLASLT_WORKSPACE = 1 * MiB
#: threads that run GEMMs in a training step, each with its own cuBLAS handle: the Python thread
#: (forward, optimizer) and the autograd engine's device thread (backward).
GEMM_THREADS = 2


def workspace_blocks(model: AllocatorModel) -> list[int]:
    """The workspaces a model's runs hold through their allocator (replayed as blocks)."""
    if model.rounding != "cuda":
        return []
    return [CUBLAS_WORKSPACE, CUBLASLT_WORKSPACE] * GEMM_THREADS


def runtime_parts(model: AllocatorModel, library: str | None) -> dict[str, int]:
    """The named runtime terms of a step under ``model`` (the ``runtime`` part is their sum)."""
    parts: dict[str, int] = {}
    if model.rounding == "cuda":
        parts["cublas_workspace"] = sum(workspace_blocks(model))
        if not model.unified:
            return parts
    parts["pytorch"] = PYTORCH_CUDA if model.rounding == "cuda" else PYTORCH_CPU
    if library in LIBRARY:
        parts["library"] = LIBRARY[library]
    parts["step_overhead"] = STEP_OVERHEAD
    return parts


def host_parts(parts: Mapping[str, int]) -> int:
    """The runtime bytes that the process had before its first tensor (import terms)."""
    return parts.get("pytorch", 0) + parts.get("library", 0)


# --------------------------------------------------------------------------- the allocator part

def allocator_part(model: AllocatorModel, *, weights: Sequence[int], logs: Mapping[int, StepLog],
                   step: OptimizerStep, tensors_at: Callable[[int], int],
                   churn_at: Callable[[int], int], recomputes: bool = False
                   ) -> Callable[[int], int]:
    """``batch -> bytes`` of the ``allocator`` part: memory the allocator holds beyond the live
    tensors at the peak, from the allocation logs of the traced batches (``logs``: batch -> log).

    ``weights``: the block sizes allocated before the first step (parameters, buffers);
    ``tensors_at(b)``: the step's tensor bytes at its peak as the breakdown counts them (weights +
    gradients + state + activations + temporaries + workspaces); ``churn_at(b)``: the bytes every
    step frees and allocates again (gradients + activations + temporaries); ``recomputes``: the
    logs were traced with gradient checkpointing. Between and beyond the traced batches the part
    is the line through them (never decreasing).

    Under ``glibc`` a checkpointed step's recomputed blocks refill the holes their forward twins
    left (each layer's are freed before the next layer's are recomputed): the same-size term
    counts at most :data:`.glibc.HOLES_PER_LIVE` blocks per block alive at once, and the heap share
    of the churn is that of the step without them (:func:`.glibc.without_recomputation`); the
    churn adds forward's small transient blocks (:func:`.glibc.forward_transients`)."""
    if model in (GLIBC_MMAP, MPS) or not logs:
        return lambda batch: 0
    (b1, l1), (b2, l2) = sorted(logs.items())[:2] if len(logs) > 1 else (sorted(logs.items()) * 2)[:2]
    if model is GLIBC:
        blocks = [_blocks(log, step) for log in (l1, l2)]
        same = [glibc.largest_class_bytes(b, log.events) for b, log in zip(blocks, (l1, l2))]
        line = Affine.through(b1, same[0], b2, same[1]) if b2 != b1 else Affine(same[0], 0)
        if recomputes:
            s1, s2 = (glibc.heap_share(_blocks(log, step, glibc.without_recomputation(
                log.events, log.forward_end))) for log in (l1, l2))
        else:
            s1, s2 = (glibc.heap_share(b) for b in blocks)

        def share(batch: int) -> float:
            """Exact at the traced batches, linear between and clamped beyond them; every
            block counts as heap below the first (smaller blocks there, never fewer)."""
            if batch < b1:
                return 1.0
            t = min(1.0, (batch - b1) / (b2 - b1)) if b2 != b1 else 0.0
            return s1 + (s2 - s1) * t

        t1, t2 = (glibc.forward_transients(log.events, log.forward_end) for log in (l1, l2))
        transients = Affine.through(b1, t1, b2, t2) if b2 != b1 else Affine(t1, 0)
        return lambda batch: glibc.retained_bytes(
            line.at(batch), int(churn_at(batch) * share(batch)) + transients.at(batch))
    # the caching allocator: reserved beyond the allocated blocks at the peak
    pre = list(weights) + workspace_blocks(model)
    slack = []
    for b, log in ((b1, l1), (b2, l2)):
        seq = training_sequence(pre, log, step)
        peaks = caching.replay(seq.events, reset_at=seq.last_step_at)
        slack.append(max(0, peaks.reserved - tensors_at(b)))
    line = Affine.through(b1, slack[0], b2, slack[1]) if b2 != b1 else Affine(slack[0], 0)
    return line.at


def _blocks(log: StepLog, step: OptimizerStep, traced: list[int] | None = None) -> list[int]:
    """The blocks one steady-state step allocates that can leave holes: the traced ones and the
    optimizer's temporaries alive together - all of them on the foreach path, one parameter's on
    the for-loop path (each parameter's are freed before the next one's, next to each other, so
    they merge and the next parameter reuses them: counted once, for the largest parameter).
    ``traced``: the traced blocks to count in place of the log's."""
    blocks = [e for e in log.events if e >= 0] if traced is None else traced
    if step.path == "fused" or step.keeps_scratch or not step.temps:
        return blocks
    if step.path == "foreach":
        return blocks + [n for sizes in step.temps for n in sizes]
    return blocks + list(max(step.temps, key=sum))


# --------------------------------------------------------------------------- assumptions

def assumptions(model: AllocatorModel, parts: Mapping[str, int], library: str | None,
                given_runtime: bool) -> list[str]:
    """What a figure under ``model`` assumes, one line each (stated beside every estimate)."""
    mib = lambda n: f"{n / MiB:,.0f} MiB"  # noqa: E731
    out = [f"allocator {model.id}: {model.summary}" + (f" ({model.how})" if model.how else "")]
    if model is GLIBC:
        out.append(
            "glibc default: blocks up to 32 MiB come from the heap once the first step has freed "
            "its activations (dynamic mmap threshold) and the heap keeps freed blocks resident; the "
            f"allocator part is the larger of {glibc.SAME_SIZE:g} x the step's largest same-size "
            f"blocks (counted at most {glibc.HOLES_PER_LIVE} per block of that size alive at once: "
            "recomputed blocks refill their twins' holes) and "
            f"{glibc.CHURN:g} x its gradients + activations + temporaries in blocks of "
            f"at most 32 MiB (larger ones are unmapped when freed) + {glibc.TRANSIENT:g} x the "
            f"blocks under {glibc.SMALL_TRANSIENT >> 20} MiB that forward frees (per-layer "
            "intermediates; every layer's with checkpointing), fitted to "
            "measured peak RSS (reports/memory-accuracy.md); set MALLOC_MMAP_THRESHOLD_=131072 and "
            "plan with --allocator glibc-mmap for the tighter, deterministic figure")
        out.append(
            "threads: measured with 1 intra-op thread (torch.set_num_threads(1)); glibc gives "
            "worker threads their own arenas, not modelled: with 2 and 4 threads (x86-64) the "
            "resident set stayed within the 1-thread spread but for one process 4% over; not "
            "measured on ARM - set torch.set_num_threads(1) for the figure as planned")
    elif model is GLIBC_MMAP:
        out.append("glibc-mmap: every block >= 128 KiB is its own mapping, returned when freed; "
                   "measured RSS = tensor-level peak + 24-43 MiB, deterministic")
    elif model.rounding == "cuda":
        out.append(
            "caching allocator (c10/cuda/CUDACachingAllocator.cpp): requests rounded up to 512 B; "
            "<= 1 MiB from 2 MiB small-pool segments, < 10 MiB from 20 MiB segments, larger ones "
            "rounded up to 2 MiB; best-fit reuse, split blocks merge when freed, segments never "
            "returned during training; the allocator part is peak reserved minus the tensors at the "
            "peak, replayed on the traced allocation sequence (3 steps, the last one measured)")
        out.append(
            f"cuBLAS workspaces: {GEMM_THREADS} threads (forward/optimizer and autograd's device "
            f"thread) x ({mib(CUBLAS_WORKSPACE)} cuBLAS, Hopper's default; 8.125 MiB before "
            f"Hopper + {mib(CUBLASLT_WORKSPACE)} cuBLASLt); cuDNN workspaces planned at 0 B: PyTorch "
            "offers each convolution's cuDNN plans only workspaces that fit the largest free "
            "block or free device memory (Conv_v8.cpp), so a step that fits runs, with slower "
            "algorithms when memory is tight; a measured max_memory_allocated on a roomy GPU "
            "includes the largest workspace cuDNN picked (not known before it runs)")
        out.append("CUDA context (~0.3 GiB with lazy module loading) is not counted: a device's "
                   "usable memory already excludes it")
    elif model is MPS:
        out.append("MPS: tensors counted at their 64-B aligned bytes; the MPS allocator's heaps "
                   "and caching are not modelled")
    if model.unified or model.rounding == "cpu":
        if given_runtime:
            out.append(f"runtime baseline: {mib(sum(parts.values()))} as given with --runtime")
        else:
            build = ("CUDA build, this machine's import RSS; not measured on a Jetson"
                     if model.rounding == "cuda" else
                     "CPU-only build: x86-64 import RSS minus CUDA libraries; ARM not measured")
            out.append(
                "host process (stated, not measured on the device; measure yours and pass "
                f"--runtime): PyTorch {mib(parts.get('pytorch', 0))} ({build})"
                + (f" + {library} import {mib(parts['library'])}" if "library" in parts else "")
                + f" + {mib(parts.get('step_overhead', 0))} step overhead (Python objects, "
                  "kernel pages)"
                + (" - counted against the device's memory, which CPU and GPU share"
                   if model.unified else ""))
    return out
