"""Child side of the probe: ``python -m smmf_plan.probe.worker`` reads one :class:`ProbeJob` as JSON
on stdin, trains the model for ``steps`` steps with one optimizer, and writes JSON lines on stdout:
``{"event": "phase", ...}``, one ``{"event": "step", "step": k, "loss": ...}`` per step, and last
``{"event": "result", ...}``. Anything libraries print goes to stderr (stdout is reserved for the
protocol), so the parent can follow progress and know the last step reached if the child dies.

What is measured (see :func:`run_job`):

- ``state_bytes``: bytes of every tensor in ``optimizer.state`` after the last step, exact.
- ``peak_bytes``: CPU — peak RSS growth over the baseline taken after imports and a warm-up op and
  before the model is created (``VmHWM`` after ``/proc/self/clear_refs``, :mod:`.rss`), over model
  creation and all steps; CUDA — ``torch.cuda.max_memory_allocated`` over the same window minus
  the allocated bytes at the baseline.
- ``step_ms`` / ``optimizer_step_ms``: median wall time of forward+backward (``zero_grad``, forward,
  loss, ``backward``) and of ``optimizer.step()`` alone, over steps 2..N: the first step is a
  warm-up (lazy state allocation, first-touch page faults, kernel selection) and is excluded;
  ``None`` when only one step ran. CUDA times are taken after ``torch.cuda.synchronize()``.
- ``losses``: the loss at each step, on the same fixed batch.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

from ..measure import total_state_bytes
from ..model import ModelSpec
from ..optimizers import parse
from ..sources import build_module
from . import rss
from .inputs import compute_loss, input_spec, make_batch
from .job import ProbeJob
from .limits import apply_cpu_cap, apply_cuda_cap, is_oom

Emit = Callable[[dict], None]

def _warm_up(torch, device) -> None:
    """Start the intra-op thread pool and the allocator before the baseline, so their fixed cost
    is part of the runtime and not of the first training step."""
    x = torch.randn(2, 3, 16, 16, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=device, requires_grad=True)
    y = torch.nn.functional.conv2d(x, w).relu().mean() + (x.flatten(1) @ x.flatten(1).T).mean()
    y.backward()
    del x, w, y


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def run_job(job: ProbeJob, emit: Emit | None = None, *, apply_cap: bool = False) -> dict[str, Any]:
    """Run ``job`` in this process and return its result (``status`` ``"ok"``, ``"oom"`` or
    ``"error"``). ``emit`` receives the phase and step events as they happen. ``apply_cap``
    limits *this* process's memory for good (RLIMIT_AS cannot be raised back), so only the
    subprocess entry point (:func:`main`) sets it."""
    emit = emit or (lambda ev: None)
    result: dict[str, Any] = {"optimizer": job.optimizer, "status": "ok", "lr": job.learning_rate,
                              "device_type": job.device_type}
    step = 0
    try:
        layout = parse(job.optimizer)
        missing = layout.missing_requirement()
        if missing:
            result.update(status="error", error=missing, at_step=0)
            return result
        result.update(_train(job, layout, emit, result, apply_cap))
    except BaseException as e:  # noqa: BLE001 - every failure becomes a status, never a crash
        if isinstance(e, KeyboardInterrupt):
            raise
        step = result.get("_step", 0)
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()
        result.update(status="oom" if is_oom(e) else "error", error=msg[:500], at_step=step)
        del e
    result.pop("_step", None)
    gc.collect()
    return result


def _train(job: ProbeJob, layout, emit: Emit, result: dict, apply_cap: bool) -> dict[str, Any]:
    import torch


    spec = ModelSpec.from_dict(job.model)
    layout = layout.bind(spec.facts)
    meta = spec.meta or {}
    if meta.get("lora"):
        raise ValueError("the probe does not train LoRA adapters yet; probe the base model")
    # import the model library and the optimizer implementation before the baseline
    if meta.get("library") == "timm":
        import timm  # noqa: F401
    elif meta.get("library") == "transformers":
        import transformers  # noqa: F401
    layout.build([torch.nn.Parameter(torch.zeros(1))], lr=job.learning_rate)
    # building on the meta device imports the modeling code (and what it pulls in lazily, e.g.
    # scipy's OpenBLAS, whose thread init spins forever when malloc fails under RLIMIT_AS)
    del_me = build_module(spec, device="meta")
    del del_me

    cuda = job.device_type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise ValueError("--device-type cuda: torch sees no CUDA device here")
    device = torch.device("cuda" if cuda else "cpu")
    in_spec = input_spec(spec, batch_size=job.batch_size, input_size=job.input_size, seq_len=job.seq_len)
    if job.num_threads:
        prev_threads = torch.get_num_threads()
        torch.set_num_threads(job.num_threads)
        try:
            return _train_on(job, layout, emit, result, apply_cap, torch, spec, in_spec, cuda, device)
        finally:
            torch.set_num_threads(prev_threads)
    return _train_on(job, layout, emit, result, apply_cap, torch, spec, in_spec, cuda, device)


def _train_on(job: ProbeJob, layout, emit: Emit, result: dict, apply_cap: bool, torch, spec,
              in_spec, cuda: bool, device) -> dict[str, Any]:
    _warm_up(torch, device)
    gc.collect()

    measured: dict[str, Any] = {}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
        measured["method"] = "cuda max_memory_allocated minus allocated bytes at the baseline"
    base_rss = rss.rss_bytes()
    cpu_peak = not cuda and rss.available()
    if not cuda:
        measured["method"] = ("peak RSS growth over the post-import baseline (VmHWM after "
                              "/proc/self/clear_refs)") if cpu_peak else "unavailable (no /proc)"
    measured["runtime_bytes"] = base_rss
    if job.cap_bytes is not None and apply_cap:
        result["cap"] = apply_cuda_cap(job.cap_bytes) if cuda else apply_cpu_cap(job.cap_bytes)
    window = rss.PeakWindow() if cpu_peak else None

    def sync():
        if cuda:
            torch.cuda.synchronize()

    emit({"event": "phase", "phase": "build"})
    torch.manual_seed(job.seed)
    model = build_module(spec, device=device.type)
    trainable = {p.name: p.trainable for p in spec.params}
    for name, p in model.named_parameters():
        p.requires_grad_(trainable.get(name, True))
    model.train()
    batch = make_batch(in_spec, device)
    # the planned specs (Linear / head facts, --target choices, names) decide the groups
    specs = {s.name: s for s in spec.params}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = layout.build([(specs.get(n, n), p) for n, p in named], lr=job.learning_rate)
    sync()
    setup_peak = window.segment_peak() - base_rss if window else None

    losses: list[float] = []
    fb_ms: list[float] = []
    opt_ms: list[float] = []
    step_peaks: list[int] = []
    emit({"event": "phase", "phase": "train", "steps": job.steps})
    for k in range(1, job.steps + 1):
        result["_step"] = k
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        sync()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = compute_loss(model, batch)
        loss.backward()
        sync()
        t1 = time.perf_counter()
        optimizer.step()
        sync()
        t2 = time.perf_counter()
        value = float(loss.detach().float().item())
        del loss
        losses.append(value)
        if cuda:
            step_peaks.append(int(torch.cuda.max_memory_allocated() - base_cuda))
        elif window:
            step_peaks.append(int(window.segment_peak() - base_rss))
        if k > 1:
            fb_ms.append((t1 - t0) * 1e3)
            opt_ms.append((t2 - t1) * 1e3)
        emit({"event": "step", "step": k, "loss": value, "peak_bytes": step_peaks[-1] if step_peaks else None})

    if cuda:
        peak = max(step_peaks) if step_peaks else None
        measured["reserved_peak_bytes"] = int(torch.cuda.max_memory_reserved())
    elif window:
        peak = max([setup_peak or 0, *step_peaks])
    else:
        peak = None
    measured.update(
        state_bytes=int(total_state_bytes(optimizer)),
        peak_bytes=int(peak) if peak is not None else None,
        step_ms=_median(fb_ms),
        optimizer_step_ms=_median(opt_ms),
        losses=losses,
        setup_peak_bytes=setup_peak,
        step_peak_bytes=step_peaks,
        steps_completed=len(losses),
        timing_excludes_first_step=True,
        num_threads=torch.get_num_threads(),
    )
    result["input"] = {"task": in_spec.task, "description": in_spec.describe()}
    result["torch"] = torch.__version__
    return {"measured": measured}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the subprocess: job JSON from the first argument or stdin."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed by libraries goes to stderr
    sys.stdout = sys.stderr

    def emit(ev: dict) -> None:
        proto.write(json.dumps(ev) + "\n")
        proto.flush()

    args = sys.argv[1:] if argv is None else argv
    text = args[0] if args and args[0] != "-" else sys.stdin.read()
    job = ProbeJob.from_dict(json.loads(text))
    result = run_job(job, emit, apply_cap=True)
    emit({"event": "result", **result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
