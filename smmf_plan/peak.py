"""Measure the peak memory of a real training step (the ground truth the estimate is checked
against; the probe reuses it): on the CPU (below), and on a CUDA device
(:func:`measure_cuda_step`: the caching allocator's peak ``allocated`` and ``reserved``).

Two measurements of the same step, taken in a fresh process so nothing else lives in it:

* **RSS growth**: ``VmRSS`` after the imports and before the model exists is the baseline; just
  before the measured step ``5`` is written to ``/proc/self/clear_refs`` (resets ``VmHWM``, the
  peak RSS), and after it ``VmHWM - baseline`` is what the step cost the process, model and
  optimizer state included. Under default glibc this varies run to run by up to ~7%; with
  ``MALLOC_MMAP_THRESHOLD_=131072`` in the environment (every allocation ≥ 128 KiB is its own
  mapping, returned to the OS when freed) it is deterministic, and that is what
  :func:`measure_in_subprocess` sets by default.
* **Tensor level**: a :class:`~smmf_plan.trace.StorageTracker` on the real tensors counts
  the live bytes of the storages the step creates (parameters, buffers and optimizer state are
  counted separately and exactly), so ``params + buffers + state + step peak`` is the peak of live
  tensor bytes, free of allocator effects. The optimizer step's own peak above what was live when
  it started is ``step_extra_bytes`` (the temporaries).

The measured step is the last of ``steps`` (default 3: the first creates the optimizer state,
``zero_grad(set_to_none=True)`` before each), with a fresh input batch per step.

Run as ``python -m smmf_plan.peak RECIPE_JSON``; it prints one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

from .optimizers import parse
from .options import ModelOptions
from .probe import rss  # /proc/self/status and clear_refs, one home
from .recipe import AMP_DTYPES
from .sources import build_module, load_model
from .sources.lora import attach_lora
from .sources.module import specs_from_module
from .trace import StorageTracker, default_loss, input_spec_for
from .trace.prepare import set_dtypes
from .trace.step import _enable_checkpointing

#: what :func:`measure_in_subprocess` sets in the child's environment by default.
DETERMINISTIC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


@dataclass
class StepMeasurement:
    baseline_rss: int
    #: VmHWM during the measured step minus the baseline (model, state and step all included).
    rss_growth: int
    param_bytes: int
    buffer_bytes: int
    state_bytes: int
    #: peak live bytes of storages the measured step created (fwd + bwd + optimizer step).
    step_peak_bytes: int
    #: optimizer step's peak live bytes above what was live when ``step()`` began.
    step_extra_bytes: int
    #: params + buffers + state + step_peak_bytes (None without the tensor-level tracker).
    tensor_peak_bytes: int | None
    seconds: float
    hwm_reset: bool
    env: dict[str, str]

    def to_dict(self) -> dict:
        return asdict(self)


def _build(recipe: dict):
    import torch

    m = recipe["model"]
    torch.manual_seed(0)
    if "timm" in m:
        import timm

        return timm.create_model(m["timm"], pretrained=False, **m.get("kwargs", {}))
    if "transformers" in m:
        import transformers

        t = m["transformers"]
        config = getattr(transformers, t["config_class"])(**t.get("config", {}))
        return getattr(transformers, t["model_class"])(config)
    if "source" in m:
        return build_module(load_model(m["source"]), device="cpu")
    raise ValueError(f"unknown model recipe {m!r}")


def _import_for(recipe: dict) -> None:
    m = recipe["model"]
    import torch  # noqa: F401

    if "timm" in m or "source" in m:
        import timm  # noqa: F401
    if "transformers" in m or "source" in m:
        import transformers  # noqa: F401
    if "transformers" in m:  # transformers imports lazily: load the model's code before the baseline
        getattr(transformers, m["transformers"]["model_class"])
        getattr(transformers, m["transformers"]["config_class"])


def _storage_set_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        st = t.untyped_storage()
        if st._cdata not in seen:
            seen.add(st._cdata)
            total += st.nbytes()
    return total


def _state_tensors(opt):
    import torch

    for st in opt.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor):
                yield v


def measure_step(recipe: dict) -> StepMeasurement | list[StepMeasurement]:
    """Measure in this process (call it in a fresh one; see the module docstring).

    ``recipe``: ``{"model": {"timm": NAME, "kwargs": {...}} | {"transformers": {"config_class",
    "model_class", "config": {...}}} | {"source": NAME}, "optimizer": ID, "batch_size": B,
    "input_size": [C, H, W] | None, "seq_len": S | None, "steps": 3, "tensor_level": bool,
    "threads": 1, "grad_checkpointing": bool}``: checkpointing switched on as a training script
    does (transformers' ``gradient_checkpointing_enable``, timm's ``set_grad_checkpointing``). With ``"batch_sizes": [...]`` instead of ``batch_size`` the same model and
    optimizer are measured at each batch in turn (a list comes back)."""
    _import_for(recipe)
    import torch


    torch.set_num_threads(int(recipe.get("threads", 1)))
    baseline = rss.rss_bytes()
    t0 = time.perf_counter()
    model = _build(recipe)
    if recipe.get("grad_checkpointing"):
        _enable_checkpointing(model)
    model.train()
    # the specs carry the Linear / output-head facts and names grouped optimizers decide by
    pairs = [(s, p) for s, p in zip(specs_from_module(model), model.parameters()) if p.requires_grad]
    opt = parse(recipe.get("optimizer", "adam")).build(pairs, **recipe.get("hyper", {}))
    results = []
    for b in recipe.get("batch_sizes") or [recipe["batch_size"]]:
        results.append(_measure(recipe, model, opt, int(b), baseline, t0))
    return results if recipe.get("batch_sizes") else results[0]


def _measure(recipe: dict, model, opt, batch_size: int, baseline: int, t0: float) -> StepMeasurement:
    import torch


    spec = input_spec_for(model, batch_size, recipe.get("input_size"), recipe.get("seq_len"))
    steps = int(recipe.get("steps", 3))
    tensor_level = bool(recipe.get("tensor_level", False))
    hwm_ok, tracker = False, None
    step_extra = 0
    for i in range(steps):
        last = i == steps - 1
        opt.zero_grad(set_to_none=True)
        if last:
            if tensor_level:
                tracker = StorageTracker()
                tracker.ignore(model.parameters())
                tracker.ignore(model.buffers())
                tracker.ignore(_state_tensors(opt))
            hwm_ok = rss.reset_peak()
        mode = tracker.mode() if tracker is not None else None
        if mode is not None:
            mode.__enter__()
        try:
            args, kwargs, target = spec.make("cpu")
            if tracker is not None:
                for t in list(args) + list(kwargs.values()) + [target]:
                    if isinstance(t, torch.Tensor):
                        tracker.add(t)
            out = model(*args, **kwargs)
            loss = default_loss(out, target)
            loss.backward()
            if tracker is not None:
                before = dict(tracker.live)
                tracker_peak_bwd = dict(tracker.peak)
                tracker.reset_peak()
            opt.step()
            if tracker is not None:
                step_extra = tracker.peak["raw"] - before["raw"]
                tracker.peak = {k: max(tracker.peak[k], tracker_peak_bwd[k]) for k in tracker.peak}
        finally:
            if mode is not None:
                mode.__exit__(None, None, None)
        del out, loss, args, kwargs, target
    hwm = rss.hwm_bytes()
    params = _storage_set_bytes(model.parameters())
    buffers = _storage_set_bytes(model.buffers())
    state = _storage_set_bytes(_state_tensors(opt))
    step_peak = tracker.peak["raw"] if tracker is not None else 0
    return StepMeasurement(
        baseline_rss=baseline, rss_growth=hwm - baseline, param_bytes=params, buffer_bytes=buffers,
        state_bytes=state, step_peak_bytes=step_peak, step_extra_bytes=step_extra,
        tensor_peak_bytes=params + buffers + state + step_peak if tracker is not None else None,
        seconds=time.perf_counter() - t0, hwm_reset=hwm_ok,
        env={k: os.environ.get(k, "") for k in DETERMINISTIC_ENV})


@dataclass
class CudaStepMeasurement:
    """A real step on a CUDA device: the caching allocator's peaks over the measured step
    (``torch.cuda.reset_peak_memory_stats()`` just before it), weights, gradients, state and
    workspaces included; the CUDA context is in neither."""

    peak_allocated: int
    peak_reserved: int
    #: ``torch.cuda.memory_allocated()`` before the model existed (after a warm-up op).
    baseline_allocated: int
    state_bytes: int
    seconds: float
    device_name: str
    torch_version: str

    def to_dict(self) -> dict:
        return asdict(self)


def run_steps(recipe: dict, device, before_last: Callable[[], None] = lambda: None):
    """Build the run a recipe describes on ``device`` (a ``torch.device``) and train it for
    ``recipe["steps"]`` steps, calling ``before_last()`` just before the last one; returns the
    optimizer. :func:`measure_cuda_step` measures it on a GPU; on the CPU it checks the recipe.

    ``recipe``: ``{"source": NAME (anything smmf-plan resolves), "optimizer": ID, "batch_size": B,
    "input_size": [C, H, W] | None, "seq_len": S | None, "dtype": "bfloat16" | None (pure
    low-precision), "amp": "bf16" | "fp16" | None, "grad_checkpointing": bool, "lora_rank": R |
    None, "lora_targets": [...], "steps": 3}``: the same options the planner reads, so the
    estimate and the measurement describe one run."""
    import torch


    torch.manual_seed(0)
    options = ModelOptions(model=recipe["source"], optimizers=(recipe.get("optimizer", "adam"),),
                           dtype=recipe.get("dtype"), lora_rank=recipe.get("lora_rank"),
                           lora_targets=tuple(recipe.get("lora_targets", ())))
    spec = options.load()
    module = build_module(spec, device="cpu")
    dtype = getattr(torch, recipe["dtype"]) if recipe.get("dtype") else None
    if dtype is not None:
        module = module.to(dtype)
    set_dtypes(module, spec.params)  # each parameter in its planned dtype, frozen as planned
    if recipe.get("lora_rank"):
        module = attach_lora(module, spec.params)
    if recipe.get("grad_checkpointing"):
        _enable_checkpointing(module)
    module = module.to(device).train()
    opt = options.layouts()[0].build([p for p in module.parameters() if p.requires_grad])
    inputs = input_spec_for(module, int(recipe["batch_size"]), recipe.get("input_size"),
                            recipe.get("seq_len"))
    amp = recipe.get("amp")
    steps = int(recipe.get("steps", 3))
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        args, kwargs, target = inputs.make("cpu", dtype)
        args = tuple(a.to(device) for a in args)
        kwargs = {k: v.to(device) for k, v in kwargs.items()}
        target = target.to(device) if isinstance(target, torch.Tensor) else target
        if i == steps - 1:
            before_last()
        with torch.autocast(device.type, dtype=getattr(torch, AMP_DTYPES[amp]) if amp else None,
                            enabled=bool(amp)):
            out = module(*args, **kwargs)
            loss = default_loss(out, target)
        loss.backward()
        opt.step()
        del out, loss, args, kwargs, target
    return opt


def measure_cuda_step(recipe: dict) -> CudaStepMeasurement:
    """One model and optimizer stepped on ``cuda:0`` (call it in a fresh process): the recipe of
    :func:`run_steps`, the caching allocator's peaks over its last step."""
    import torch

    t0 = time.perf_counter()
    dev = torch.device(recipe.get("cuda_device", "cuda:0"))
    x = torch.randn(64, 64, device=dev)
    (x @ x).sum().item()  # CUDA context and cuBLAS up before the baseline
    del x
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated(dev)

    def reset() -> None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)

    opt = run_steps(recipe, dev, reset)
    torch.cuda.synchronize()
    return CudaStepMeasurement(
        peak_allocated=torch.cuda.max_memory_allocated(dev),
        peak_reserved=torch.cuda.max_memory_reserved(dev),
        baseline_allocated=baseline,
        state_bytes=_storage_set_bytes(_state_tensors(opt)),
        seconds=time.perf_counter() - t0,
        device_name=torch.cuda.get_device_name(dev),
        torch_version=torch.__version__,
    )


def measure_in_subprocess(recipe: dict, *, env: dict[str, str] | None = None, timeout: float = 600
                          ) -> StepMeasurement | list[StepMeasurement] | CudaStepMeasurement:
    """:func:`measure_step` in a fresh Python process. ``env`` sets the malloc environment
    (default :data:`DETERMINISTIC_ENV`; ``{}``: glibc's defaults): the variables of
    :data:`DETERMINISTIC_ENV` are never inherited from this process, so ``env={}`` measures what
    a user who sets nothing gets."""
    full_env = {k: v for k, v in os.environ.items() if k not in DETERMINISTIC_ENV}
    full_env.update(DETERMINISTIC_ENV if env is None else env)
    proc = subprocess.run([sys.executable, "-m", "smmf_plan.peak", json.dumps(recipe)],
                          capture_output=True, text=True, env=full_env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement failed ({proc.returncode}): {proc.stderr[-2000:]}")
    doc = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith(("{", "["))][-1])
    if isinstance(doc, list):
        return [StepMeasurement(**d) for d in doc]
    if recipe.get("device") == "cuda":
        return CudaStepMeasurement(**doc)
    return StepMeasurement(**doc)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    recipe = json.loads(argv[0])
    got = measure_cuda_step(recipe) if recipe.get("device") == "cuda" else measure_step(recipe)
    doc = [g.to_dict() for g in got] if isinstance(got, list) else got.to_dict()
    print(json.dumps(doc), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
