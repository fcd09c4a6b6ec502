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
* **allocator**: memory the allocator holds beyond the live tensors at the peak - glibc's retained
  heap, the CUDA caching allocator's reserved but unallocated segments - per the allocator model
  (:mod:`smmf_plan.allocators.models`, ``--allocator``), from the traced allocation sequence.
* **runtime**: the process itself (PyTorch and the model library on CPU and unified memory), and
  the cuBLAS workspaces on CUDA, as the allocator model states them.

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
from .allocators import DEVICE_ALLOCATORS as ALLOCATORS, QUANTUM as _QUANTUM, models as allocator_models, round_up
from .allocators.sequence import OptimizerStep, StepLog
from .model import ModelSpec
from .plan import plan_state, with_dtype
from .shapes import ParamSpec
from .trace import DEFAULT_SEQ_LEN, IMAGE_CLASSIFICATION

MiB = 1 << 20

AMP_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"}


@dataclass
class MemoryEstimate:
    model: str
    batch_size: int
    #: the allocator model's id (:data:`smmf_plan.allocators.models.IDS`).
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
    #: per optimizer id: ``batch -> bytes`` of the allocator part.
    _slack: dict[str, Callable[[int], int]] = field(default_factory=dict, repr=False)

    @property
    def rounding(self) -> str:
        """The block rounding of every part ("cpu" or "cuda")."""
        return allocator_models.resolve(self.allocator).rounding

    def breakdown_at(self, optimizer: str, batch: int) -> Breakdown:
        """The breakdown at another batch size, from the affine activation model (no re-trace)."""
        w, g, s = self._fixed[optimizer]
        act, temp = act_temp(self.activation_model, batch, self.rounding,
                             self.step_temp[optimizer], self.persistent.get(optimizer, False))
        slack = self._slack[optimizer](batch) if optimizer in self._slack else 0
        return _breakdown(w, g, s, act, temp, slack, sum(self.runtime_parts.values()))

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
                "fixed_bytes": am.activation[self.rounding].fixed,
                "per_sample_bytes": am.activation[self.rounding].per_sample,
                "saved_bytes": am.saved_at(self.batch_size),
            },
            "assumptions": list(self.assumptions),
            "seconds": round(self.seconds, 3),
        }


def _breakdown(weights: int, grads: int, state: int, act: int, temp: int, slack: int,
               runtime: int) -> Breakdown:
    return Breakdown(weights=weights, grads=grads, state_allocated=state, activations=act,
                     temporaries=temp, allocator=slack, runtime=runtime)


def act_temp(am, batch: int, rounding: str, step_temp: int, persistent: bool = False) -> tuple[int, int]:
    """Activations at ``batch`` and the temporaries counted beyond them: the step's peak over
    what backward leaves alive, or all of it when the optimizer keeps its scratch between steps."""
    if am is None:
        return 0, step_temp
    act = am.bytes_at(batch, rounding)
    if persistent:
        return act, step_temp
    retained = am.retained_at(batch, rounding)
    return act, max(0, retained + step_temp - act)


def _sum_rounded(specs: Sequence[ParamSpec], q: int, trainable_only: bool = False) -> int:
    return sum(round_up(s.nbytes, q) for s in specs if s.nbytes and (s.trainable or not trainable_only))


def _optimizer_step(layout: OptimizerVariant, trainable: Sequence[ParamSpec], rounding: str) -> OptimizerStep:
    """What ``layout``'s step allocates per trainable parameter (for the allocator replay): its
    device-resident state tensors, and its temporaries as blocks of the parameter's size (the
    count from the optimizer's own temporaries rule applied to that parameter alone)."""
    groups = layout.group_names(trainable)
    state = tuple(tuple(t.nbytes for t in layout.state(spec, g) if not (rounding == "cuda" and t.on_host))
                  for spec, g in zip(trainable, groups))
    path = layout.code_path(rounding)
    temps = []
    for spec in trainable:
        n = spec.nbytes
        t = layout.step_temp_bytes([spec], rounding, path=path) if n else 0
        full, rest = divmod(t, n) if n else (0, 0)
        temps.append((n,) * full + ((rest,) if rest else ()))
    return OptimizerStep(state, tuple(temps), path, layout.keeps_scratch)


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
    #: the allocator model's id (:data:`smmf_plan.allocators.models.IDS`).
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
    #: traced batch -> the allocation sequence of its forward + backward (for the allocator part).
    logs: dict[int, StepLog] = field(default_factory=dict)

    @property
    def runtime_bytes(self) -> int:
        return sum(self.runtime_parts.values())

    @property
    def rounding(self) -> str:
        """The block rounding of every part ("cpu" or "cuda")."""
        return allocator_models.resolve(self.allocator).rounding


def estimate(model_spec: ModelSpec, layouts: Sequence[OptimizerVariant], *, batch_size: int = 1,
             input_size: Sequence[int] | str | None = None, seq_len: int | None = None,
             dtype: str | None = None, amp: str | None = None, grad_checkpointing: bool = False,
             allocator: str = "glibc", module_factory: Callable[[], Any] | None = None,
             trace: bool = True, runtime_bytes: int | None = None) -> MemoryEstimate:
    """Estimate one training step's memory for each optimizer in ``layouts``.

    ``module_factory()`` returns the model as an ``nn.Module`` on the meta device (default:
    :func:`smmf_plan.sources.build_module`); it is what gets traced. ``dtype`` re-types the
    weights (pure low-precision training); ``amp`` ("bf16"/"fp16") keeps fp32 master weights and
    traces forward under autocast. Without a buildable module (weights without a config) or with
    ``trace=False`` the activation term is 0 and the estimate says so. ``runtime_bytes`` replaces
    the stated runtime baseline with one the user measured on the device (``--runtime``).
    ``allocator`` is an allocator model id (:mod:`smmf_plan.allocators.models`; a device's
    allocator, "cpu" or "cuda", means its default model): it sets the block rounding, the runtime
    terms and the ``allocator`` part."""
    basis = step_basis(model_spec, batch_size=batch_size, input_size=input_size, seq_len=seq_len,
                       dtype=dtype, amp=amp, grad_checkpointing=grad_checkpointing,
                       allocator=allocator, module_factory=module_factory, trace=trace,
                       runtime_bytes=runtime_bytes)
    model = allocator_models.resolve(basis.allocator)
    specs, am, rounding = basis.specs, basis.activation_model, model.rounding
    q = _QUANTUM[rounding]
    weights = _sum_rounded(specs, q) + basis.buffer_bytes
    grads = _sum_rounded(specs, q, trainable_only=True)
    runtime = basis.runtime_bytes
    assumptions = basis.assumptions
    workspaces = sum(allocator_models.workspace_blocks(model))
    weight_blocks = ([s.nbytes for s in specs if s.nbytes]
                     + ([basis.buffer_bytes] if basis.buffer_bytes else []))
    breakdowns, temps, fixed, logical, slack = {}, {}, {}, {}, {}
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
        state = planned.allocated_bytes[rounding]
        logical[layout.id] = planned.state_bytes
        st = layout.step_temp_bytes(trainable, rounding)
        temps[layout.id] = st
        fixed[layout.id] = (weights, grads, state)
        keeps = layout.keeps_scratch

        def parts_at(batch: int, st=st, keeps=keeps) -> tuple[int, int]:
            return act_temp(am, batch, rounding, st, keeps)

        def tensors_at(batch: int, state=state, parts_at=parts_at) -> int:
            return weights + grads + state + sum(parts_at(batch)) + workspaces

        def churn_at(batch: int, parts_at=parts_at, keeps=keeps) -> int:
            act, temp = parts_at(batch)  # a scratch kept between steps is not churned
            return grads + act + (0 if keeps else temp)

        slack[layout.id] = allocator_models.allocator_part(
            model, weights=weight_blocks, logs=basis.logs,
            step=_optimizer_step(layout, trainable, rounding), tensors_at=tensors_at,
            churn_at=churn_at)
        act, temp = parts_at(basis.batch_size)
        breakdowns[layout.id] = _breakdown(weights, grads, state, act, temp,
                                           slack[layout.id](basis.batch_size), runtime)
    layouts = runnable
    assumptions += rules
    assumptions.append(TEMPORARIES_ASSUMPTION)
    est = MemoryEstimate(model_spec.name, basis.batch_size, basis.allocator, breakdowns, am,
                         assumptions, temps, basis.runtime_parts, basis.input, 0.0, fixed,
                         {layout.id: layout.keeps_scratch for layout in layouts}, logical, slack)
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
               allocator: str = "glibc", module_factory: Callable[[], Any] | None = None,
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
    model = allocator_models.resolve(allocator)
    allocator, rounding = model.id, model.rounding
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
    logs: dict[int, StepLog] = {}
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
            buffer_bytes = facts["buffer_bytes"][rounding]
            logs = {int(b): StepLog.from_json(log) for b, log in zip(facts["batches"], facts["logs"])}
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

    rparts = (allocator_models.runtime_parts(model, library) if runtime_bytes is None
              else {"given": int(runtime_bytes)})
    assumptions.append(
        f"weights: {len(specs)} parameter tensors" + (f" + buffers ({buffer_bytes:,} B)" if buffer_bytes else "")
        + (f", fp32 master weights; {amp_name} copies made by autocast counted in activations"
           if amp_name and not cast else f", fp32 master weights, {amp_name} compute" if cast
           else f", dtype {dtypes.canonical(dtype)}" if dtype else "")
        + "; gradients for trainable parameters only")
    assumptions += allocator_models.assumptions(model, rparts, library, runtime_bytes is not None)
    return StepBasis(specs, allocator, batch_size, am, buffer_bytes, in_desc, library, rparts,
                     assumptions, amp_name, t0, logs)


# --------------------------------------------------------------------------- traced facts + cache

#: bump when the cached trace facts change meaning (2: "task" in the one task vocabulary;
#: 3: "logs", the allocation sequence of each traced batch).
FACTS_VERSION = 3


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
        "logs": [t.log.to_json() for t in am.traces],
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
        if facts.get("error") is None and {"batches", "activation", "retained", "saved", "logs"} <= set(facts):
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
