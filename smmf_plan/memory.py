"""End-to-end memory of one training step, per optimizer:
weights + gradients + optimizer state + activations + step temporaries + runtime.

The model of a step (every term is a stated assumption, listed in ``MemoryEstimate.assumptions``):

* **weights**: every parameter (frozen ones included) and buffer, in the planned dtype. With
  ``amp`` the weights stay fp32 (master weights); the low-precision copies autocast makes are
  created by the step, so the trace counts them under activations.
* **grads**: one gradient per trainable parameter, in its dtype (fp32 under ``amp``).
* **state** (``state_allocated``): :func:`smmf_plan.plan.plan_state`, each tensor rounded as the
  allocator rounds (the logical bytes, ``state_bytes``, are kept beside the breakdown).
* **activations**: the traced step's peak beyond the gradients (see
  :mod:`smmf_plan.trace`): saved activations still alive, backward transients and the
  gradients not produced yet all netted out; two traces give ``a + b·batch``.
* **temporaries**: the optimizer step runs after backward has freed the activations, so its
  temporaries (each optimizer's rule in :mod:`smmf_plan.optimizers`, plus what the caller still holds, e.g. logits) add
  to the total only where they exceed the activation term: ``max(0, retained + step_temp -
  activations)``. The sum of the terms is then the larger of the backward peak and the step peak.
* **runtime**: a documented constant per allocator (:data:`RUNTIME`), see below.

The parts are :data:`smmf_plan.breakdown.PARTS`; each optimizer's
:class:`~smmf_plan.breakdown.Breakdown` has ``total_bytes`` = the exact sum of its parts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from . import dtypes
from .breakdown import Breakdown, StepMemory
from .errors import PlanError
from .optimizers import OptimizerVariant, Unsupported
from .allocators import DEVICE_ALLOCATORS as ALLOCATORS, QUANTUM as _QUANTUM, round_up
from .model import ModelSpec
from .plan import plan_state, with_dtype
from .shapes import ParamSpec
from .units import format_bytes
from .trace import DEFAULT_SEQ_LEN, IMAGE_CLASSIFICATION

MiB = 1 << 20

#: CPU runtime, stated. ``pytorch``: RSS of a process after ``import torch`` for a CPU-only build,
#: taken as this machine's measurement (508 MiB, CUDA build, x86-64, torch 2.14) minus the 161 MiB
#: resident in CUDA libraries: an upper bound for a CPU-only build, not measured on ARM (a
#: Raspberry Pi's aarch64 wheel is CPU-only). ``library``: what importing the model's library
#: added here (timm 196 MiB, transformers with a model's code 220 MiB). ``step_overhead``: RSS
#: growth beyond the tensor-level peak of a step with ``MALLOC_MMAP_THRESHOLD_=131072``, measured
#: 24-43 MiB on resnet50/resnet18/mobilenetv2/vit-tiny/tiny GPT-2 (Python objects, kernel code
#: pages, small-allocation heaps): the upper end, rounded up.
CPU_RUNTIME = {"pytorch": 350 * MiB, "step_overhead": 44 * MiB}
LIBRARY_RUNTIME = {"timm": 196 * MiB, "transformers": 220 * MiB}
#: CUDA runtime, stated: the CUDA context is NOT included (a device's usable memory already
#: subtracts it); counted are cuBLAS/cuBLASLt workspaces the caching allocator holds (8 × 4 MiB,
#: torch's default ``CUBLAS_WORKSPACE_CONFIG=:4096:8``). Caching-allocator slack (reserved but not
#: allocated) is not modelled.
CUDA_RUNTIME = {"cublas_workspace": 32 * MiB}

AMP_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"}


@dataclass
class MemoryEstimate:
    model: str
    batch_size: int
    allocator: str
    #: per optimizer id: the step's parts at ``batch_size``.
    breakdowns: dict[str, Breakdown]
    activation_model: Any  # ActivationModel | None
    assumptions: list[str]
    #: per optimizer id: the raw step temporaries (before netting against activations).
    step_temp: dict[str, int] = field(default_factory=dict)
    #: named parts of ``runtime_bytes``.
    runtime_parts: dict[str, int] = field(default_factory=dict)
    input: str | None = None
    seconds: float = 0.0
    _fixed: dict[str, tuple[int, int, int]] = field(default_factory=dict, repr=False)
    #: per optimizer id: True when its step scratch is kept between steps (never netted).
    persistent: dict[str, bool] = field(default_factory=dict)
    #: per optimizer id: the logical optimizer-state bytes (``StatePlan.state_bytes``).
    state_bytes: dict[str, int] = field(default_factory=dict)

    def breakdown_at(self, optimizer: str, batch: int) -> Breakdown:
        """The breakdown at another batch size, from the affine activation model (no re-trace)."""
        w, g, s = self._fixed[optimizer]
        act, temp = act_temp(self.activation_model, batch, self.allocator,
                              self.step_temp[optimizer], self.persistent.get(optimizer, False))
        return _breakdown(w, g, s, act, temp, sum(self.runtime_parts.values()))

    def total_at(self, optimizer: str) -> Callable[[int], int]:
        """``batch -> total bytes`` for the fit stage's largest-batch search (non-decreasing)."""
        return lambda batch: self.breakdown_at(optimizer, batch).total_bytes

    @property
    def complete(self) -> bool:
        return self.activation_model is not None

    def steps(self) -> dict[str, StepMemory]:
        """Per optimizer: its breakdown at the estimated batch, ``total_at`` (the affine
        activation model and the step temporaries re-evaluated at each batch) and its logical
        state bytes: what the fit layer and every renderer take."""
        return {oid: StepMemory(oid, bd, self.total_at(oid), complete=self.complete,
                                state_bytes=self.state_bytes.get(oid))
                for oid, bd in self.breakdowns.items()}

    def to_dict(self) -> dict:
        am = self.activation_model
        return {
            "model": self.model, "batch_size": self.batch_size, "allocator": self.allocator,
            "input": self.input,
            "optimizers": {k: s.to_dict() for k, s in self.steps().items()},
            "runtime_parts": dict(self.runtime_parts),
            "activation_model": None if am is None else {
                "traced_batches": list(am.batches),
                "fixed_bytes": am.activation[self.allocator].fixed,
                "per_sample_bytes": am.activation[self.allocator].per_sample,
                "saved_bytes": am.saved_at(self.batch_size),
            },
            "assumptions": list(self.assumptions),
            "seconds": round(self.seconds, 3),
        }


def _breakdown(weights: int, grads: int, state: int, act: int, temp: int, runtime: int) -> Breakdown:
    return Breakdown(weights=weights, grads=grads, state_allocated=state, activations=act,
                     temporaries=temp, runtime=runtime)


def act_temp(am, batch: int, allocator: str, step_temp: int, persistent: bool = False) -> tuple[int, int]:
    """Activations at ``batch`` and the temporaries counted beyond them: the step's peak over
    what backward leaves alive, or all of it when the optimizer keeps its scratch between steps."""
    if am is None:
        return 0, step_temp
    act = am.bytes_at(batch, allocator)
    if persistent:
        return act, step_temp
    retained = am.retained_at(batch, allocator)
    return act, max(0, retained + step_temp - act)


def _sum_rounded(specs: Sequence[ParamSpec], q: int, trainable_only: bool = False) -> int:
    return sum(round_up(s.nbytes, q) for s in specs if s.nbytes and (s.trainable or not trainable_only))


def runtime_parts(allocator: str, library: str | None) -> dict[str, int]:
    if allocator == "cuda":
        return dict(CUDA_RUNTIME)
    parts = {"pytorch": CPU_RUNTIME["pytorch"]}
    if library in LIBRARY_RUNTIME:
        parts["library"] = LIBRARY_RUNTIME[library]
    parts["step_overhead"] = CPU_RUNTIME["step_overhead"]
    return parts


def _library_of(model_spec: ModelSpec, module) -> str | None:
    lib = (model_spec.meta or {}).get("library")
    if lib:
        return lib
    if module is not None:
        if hasattr(module, "config") and hasattr(module.config, "to_dict"):
            return "transformers"
        if hasattr(module, "pretrained_cfg"):
            return "timm"
    return None


def _apply_trainable(module, specs: Sequence[ParamSpec]) -> None:
    """Freeze the module's parameters the spec marks frozen (names and aliases)."""
    frozen = {n for s in specs if not s.trainable for n in (s.name, *s.aliases)}
    if not frozen:
        return
    for name, p in module.named_parameters(remove_duplicate=False):
        if name in frozen:
            p.requires_grad_(False)


@dataclass
class StepBasis:
    """What every optimizer's step estimate shares: the planned specs, the traced activation
    model, buffers, runtime and the assumptions stated so far (:func:`step_basis`)."""

    specs: list[ParamSpec]
    allocator: str
    batch_size: int
    activation_model: Any  # ActivationModel | None
    buffer_bytes: int
    input: str | None
    library: str | None
    runtime_parts: dict[str, int]
    assumptions: list[str]
    amp: str | None
    t0: float

    @property
    def runtime_bytes(self) -> int:
        return sum(self.runtime_parts.values())


def estimate(model_spec: ModelSpec, layouts: Sequence[OptimizerVariant], *, batch_size: int = 1,
             input_size: Sequence[int] | str | None = None, seq_len: int | None = None,
             dtype: str | None = None, amp: str | None = None, grad_checkpointing: bool = False,
             allocator: str = "cpu", module_factory: Callable[[], Any] | None = None,
             trace: bool = True, runtime_bytes: int | None = None) -> MemoryEstimate:
    """Estimate one training step's memory for each optimizer in ``layouts``.

    ``module_factory()`` returns the model as an ``nn.Module`` on the meta device (default:
    :func:`smmf_plan.sources.build_module`); it is what gets traced. ``dtype`` re-types the
    weights (pure low-precision training); ``amp`` ("bf16"/"fp16") keeps fp32 master weights and
    traces forward under autocast. Without a buildable module (weights without a config) or with
    ``trace=False`` the activation term is 0 and the estimate says so. ``runtime_bytes`` replaces
    the stated runtime baseline with one the user measured on the device (``--runtime``)."""
    basis = step_basis(model_spec, batch_size=batch_size, input_size=input_size, seq_len=seq_len,
                       dtype=dtype, amp=amp, grad_checkpointing=grad_checkpointing,
                       allocator=allocator, module_factory=module_factory, trace=trace,
                       runtime_bytes=runtime_bytes)
    specs, am, q = basis.specs, basis.activation_model, _QUANTUM[allocator]
    weights = _sum_rounded(specs, q) + basis.buffer_bytes
    grads = _sum_rounded(specs, q, trainable_only=True)
    runtime = basis.runtime_bytes
    assumptions = basis.assumptions
    breakdowns, temps, fixed, logical = {}, {}, {}, {}
    trainable = [s for s in specs if s.trainable]
    runnable, rules = [], []
    for layout in layouts:
        layout = layout.bind(model_spec.facts)
        try:
            planned = plan_state(specs, layout)
        except Unsupported as e:
            assumptions.append(f"{layout.id}: not estimated, its implementation cannot train this "
                               f"model: {e}")
            continue
        runnable.append(layout)
        rule = layout.info.target_rule
        if rule and rule not in rules:
            rules.append(rule)
        state = planned.allocated_bytes[allocator]
        logical[layout.id] = planned.state_bytes
        st = layout.step_temp_bytes(trainable, allocator)
        temps[layout.id] = st
        fixed[layout.id] = (weights, grads, state)
        keeps = layout.keeps_scratch
        act, temp = act_temp(am, basis.batch_size, allocator, st, keeps)
        breakdowns[layout.id] = _breakdown(weights, grads, state, act, temp, runtime)
    layouts = runnable
    assumptions += rules
    assumptions.append(TEMPORARIES_ASSUMPTION)
    est = MemoryEstimate(model_spec.name, basis.batch_size, allocator, breakdowns, am, assumptions,
                         temps, basis.runtime_parts, basis.input, 0.0, fixed,
                         {layout.id: layout.keeps_scratch for layout in layouts}, logical)
    est.seconds = time.perf_counter() - basis.t0
    return est


#: how every estimate counts the optimizer step's temporaries.
TEMPORARIES_ASSUMPTION = (
    "temporaries: the optimizer step's peak temporaries on the code path it takes by default "
    "(for-loop Adam on CPU, foreach on CUDA; each optimizer's in smmf-plan optimizers) plus "
    "outputs still held, counted only beyond the activation term (the step runs "
    "after backward has freed the activations); SMMF keeps its row-block scratch between "
    "steps, so its temporaries are always counted (those of its eager kernels: an upper "
    "bound when its fused C++ kernel runs)")


def step_basis(model_spec: ModelSpec, *, batch_size: int = 1,
               input_size: Sequence[int] | str | None = None, seq_len: int | None = None,
               dtype: str | None = None, amp: str | None = None, grad_checkpointing: bool = False,
               allocator: str = "cpu", module_factory: Callable[[], Any] | None = None,
               trace: bool = True, runtime_bytes: int | None = None,
               amp_trace: str = "autocast") -> StepBasis:
    """Everything :func:`estimate` shares between optimizers: the inputs validated, the specs in
    the planned dtype, the traced activation model, buffers, runtime and assumptions.

    ``amp_trace`` says how mixed precision runs: ``"autocast"`` (torch AMP: fp32 parameters,
    forward under autocast, the low-precision weight copies counted in the activations) or
    ``"cast"`` (the engine hands the model low-precision parameters — FSDP2's
    ``MixedPrecisionPolicy``, DeepSpeed's bf16/fp16 modes — so the step is traced in the AMP dtype
    without autocast, while the specs stay fp32 for the caller to place)."""
    from .fit import check_batch_size

    t0 = time.perf_counter()
    batch_size = check_batch_size(batch_size)
    if allocator not in ALLOCATORS:
        raise PlanError(f"unknown allocator {allocator!r}: use one of {', '.join(ALLOCATORS)}")
    if amp is not None and str(amp).lower() not in AMP_DTYPES:
        raise PlanError(f"--amp {amp!r} is not a mixed-precision dtype: use bf16 or fp16")
    if amp is not None and dtype is not None and dtypes.canonical(dtype) != "float32":
        raise PlanError("--amp keeps fp32 master weights: drop --dtype or set it to float32")
    amp_name = AMP_DTYPES[str(amp).lower()] if amp is not None else None
    if dtype is not None:
        try:
            dtypes.canonical(dtype)
        except Exception:  # noqa: BLE001
            raise PlanError(f"--dtype {dtype!r} is not a dtype: use e.g. float32, bfloat16") from None
    specs = with_dtype(model_spec.params, dtype)
    assumptions: list[str] = []
    cast = amp_name is not None and amp_trace == "cast"
    trace_dtype, trace_amp = (amp_name, None) if cast else (dtype, amp_name)

    am, buffer_bytes, in_desc, library = None, 0, None, (model_spec.meta or {}).get("library")
    if trace:
        facts = _cached_facts(model_spec, with_dtype(model_spec.params, trace_dtype),
                              dtype=trace_dtype, amp_name=trace_amp,
                              input_size=input_size, seq_len=seq_len, batch_size=batch_size,
                              grad_checkpointing=grad_checkpointing, module_factory=module_factory)
        library = facts["library"]
        if facts.get("error"):
            assumptions.append(f"activations not estimated: {facts['error']}")
        else:
            am = _model_from_facts(facts)
            buffer_bytes = facts["buffer_bytes"][allocator]
            in_desc = facts["input"]
            b1, b2 = am.batches
            how = (f"meta tensors in {amp_name} (the engine casts the parameters; no autocast)"
                   if cast else f"fake CPU tensors under {amp_name} autocast" if amp_name
                   else "meta tensors")
            assumptions.append(
                f"activations: one forward+backward traced on {how} at batch {b1} and {b2} "
                f"({in_desc.split(' · ', 1)[-1]}), every storage's lifetime tracked; other batch "
                "sizes extrapolated linearly")
            if facts["task"] != IMAGE_CLASSIFICATION:
                assumptions.append(f"text input: {facts['seq_len']} tokens per sample "
                                   f"(--seq-len; default {DEFAULT_SEQ_LEN} or the model's maximum positions)")
            if grad_checkpointing:
                assumptions.append("gradient checkpointing on (recomputation traced)")
    else:
        assumptions.append("activations not estimated (tracing off)")

    rparts = runtime_parts(allocator, library) if runtime_bytes is None else {"given": int(runtime_bytes)}
    assumptions.append(
        f"weights: {len(specs)} parameter tensors" + (f" + buffers ({buffer_bytes:,} B)" if buffer_bytes else "")
        + (f", fp32 master weights; {amp_name} copies made by autocast counted in activations"
           if amp_name and not cast else f", fp32 master weights, {amp_name} compute" if cast
           else f", dtype {dtypes.canonical(dtype)}" if dtype else "")
        + "; gradients for trainable parameters only")
    if allocator == "cpu":
        assumptions.append(
            "allocator cpu: 64-B aligned tensors; RSS modelled with MALLOC_MMAP_THRESHOLD_=131072 "
            "(deterministic, measured = tensor peak + 24-43 MiB); under default glibc RSS measured "
            "up to 1.35x the tensor-level peak - set that variable in the training process")
    if runtime_bytes is not None:
        assumptions.append(f"runtime baseline: {format_bytes(runtime_bytes, unit='MiB')} as given "
                           "with --runtime")
    elif allocator == "cpu":
        assumptions.append(
            "runtime baseline (stated, not measured on the device; measure yours and pass "
            "--runtime): PyTorch CPU-only process "
            f"{format_bytes(rparts['pytorch'], 0, unit='MiB')} (x86-64 import RSS minus CUDA "
            "libraries; ARM builds not measured; this machine's CUDA build is 508 MiB)"
            + (f" + {library} import {format_bytes(rparts['library'], 0, unit='MiB')}"
               if "library" in rparts else "")
            + f" + {format_bytes(rparts['step_overhead'], 0, unit='MiB')} step overhead (Python "
              "objects, kernel pages)")
    else:
        assumptions.append("runtime baseline: 32 MiB cuBLAS workspaces; the CUDA context is not "
                           "counted because a device's usable memory already excludes it")
    if allocator == "cuda":
        assumptions.append("allocator cuda: every tensor rounded up to 512 B (memory_allocated); "
                           "caching-allocator slack not modelled")
    return StepBasis(specs, allocator, batch_size, am, buffer_bytes, in_desc, library, rparts,
                     assumptions, amp_name, t0)


# --------------------------------------------------------------------------- traced facts + cache

#: bump when the cached trace facts change meaning (2: "task" in the one task vocabulary).
FACTS_VERSION = 2


def _trace_facts(model_spec: ModelSpec, specs: Sequence[ParamSpec], *, dtype, amp_name, input_size,
                 seq_len, batch_size: int, grad_checkpointing: bool, module_factory) -> dict:
    """Trace the model and return what an estimate needs from the trace, as plain JSON data."""
    import torch

    from .trace import activation_model, input_spec_for

    def factory():
        if module_factory is not None:
            m = module_factory()
        else:
            from .sources import build_module

            m = build_module(model_spec, device="meta")
        if dtype is not None:
            m = m.to(getattr(torch, dtypes.canonical(dtype)))
        _apply_trainable(m, specs)  # by the planned names, before adapters rename the bases
        if any(s.name.endswith(".lora_A.weight") for s in specs):
            from .sources.lora import attach_lora

            m = attach_lora(m, specs)
        return m

    try:
        module = factory()
    except PlanError as e:
        return {"error": str(e), "library": _library_of(model_spec, None)}
    spec_in = input_spec_for(module, batch_size, input_size, seq_len)
    if dtype is not None and spec_in.is_image:
        from dataclasses import replace

        spec_in = replace(spec_in, float_dtype=dtypes.canonical(dtype))
    buffers = {a: sum(round_up(b.numel() * b.element_size(), _QUANTUM[a]) for b in module.buffers())
               for a in ALLOCATORS}
    first = [module]

    def reuse():  # the first trace reuses the module built above
        return first.pop() if first else factory()

    am = activation_model(reuse, spec_in, grad_checkpointing=grad_checkpointing,
                          amp_dtype=getattr(torch, amp_name) if amp_name else None)
    return {
        "error": None,
        "library": _library_of(model_spec, module),
        "batches": list(am.batches),
        "activation": {k: [v.fixed, v.per_sample] for k, v in am.activation.items()},
        "retained": {k: [v.fixed, v.per_sample] for k, v in am.retained.items()},
        "saved": [am.saved.fixed, am.saved.per_sample],
        "buffer_bytes": buffers,
        "input": spec_in.describe(),
        "task": spec_in.task,
        "seq_len": spec_in.seq_len,
        "trace_seconds": round(am.seconds, 3),
    }


def _model_from_facts(facts: dict):
    from .trace import ActivationModel, Affine

    return ActivationModel(
        batches=tuple(facts["batches"]),
        activation={k: Affine(*v) for k, v in facts["activation"].items()},
        retained={k: Affine(*v) for k, v in facts["retained"].items()},
        saved=Affine(*facts["saved"]),
    )


def _facts_key(model_spec: ModelSpec, options: dict) -> str:
    import hashlib
    import json

    from .sources.cache import versions

    spec = model_spec.to_dict()
    spec["meta"] = {k: v for k, v in spec["meta"].items() if k != "cache"}
    blob = json.dumps({"v": FACTS_VERSION, "spec": spec, "options": options, "versions": versions()},
                      sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _cached_facts(model_spec: ModelSpec, specs: Sequence[ParamSpec], *, module_factory, **options) -> dict:
    """:func:`_trace_facts`, cached as JSON beside the shape cache so that a repeated estimate
    imports no torch. Only estimates of a resolved source are cached (a hand-built
    ``module_factory`` has no stable identity)."""
    import json
    import os

    from .sources.cache import cache_dir, store_json

    if module_factory is not None:
        return _trace_facts(model_spec, specs, module_factory=module_factory, **options)
    from .sources.resolve import NO_ARCHITECTURE, has_architecture

    if not has_architecture(model_spec):  # known without building it (or importing torch)
        return {"error": f"{model_spec.name}: {NO_ARCHITECTURE}",
                "library": (model_spec.meta or {}).get("library")}
    path = os.path.join(cache_dir(), "activations", _facts_key(model_spec, options) + ".json")
    try:
        with open(path, "rb") as f:
            facts = json.load(f)
        if facts.get("error") is None and {"batches", "activation", "retained", "saved"} <= set(facts):
            return facts
    except (OSError, ValueError):
        pass
    facts = _trace_facts(model_spec, specs, module_factory=None, **options)
    store_json(path, facts)
    return facts


def spec_of_module(module, name: str = "model", **meta: Any) -> ModelSpec:
    """A :class:`ModelSpec` for an ``nn.Module`` built by hand (tests, scripts)."""
    from .sources.module import specs_from_module

    lib = "transformers" if hasattr(getattr(module, "config", None), "to_dict") else \
        "timm" if hasattr(module, "pretrained_cfg") else None
    return ModelSpec(name, lib or "module", specs_from_module(module), {"library": lib, **meta})
