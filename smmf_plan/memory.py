"""End-to-end memory of one training step, per optimizer:
weights + gradients + optimizer state + activations + step temporaries + runtime.

The model of a step (every term is a stated assumption, listed in ``MemoryEstimate.assumptions``):

* **weights**: every parameter (frozen ones included) and buffer, as the recipe
  (:class:`~smmf_plan.recipe.Recipe`) stores it: its dtype per role, bitsandbytes' tensors for a
  quantized base (:mod:`smmf_plan.quantize`). Under ``amp`` the trainable weights stay fp32
  (master weights); the low-precision copies autocast makes are created by the step, so the trace
  counts them under activations.
* **grads**: one gradient per trainable parameter, in its dtype (fp32 under ``amp``); with
  gradients offloaded only those of the parameters kept on the device.
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
* **host parts** (``--offload``): the pinned copies, the offloaded state, the host step's
  temporaries and the process on the host (:data:`HOST_RUNTIME`), checked against the host memory.

With gradient accumulation the batch is the micro-batch and the trace is a later micro-step. When
the activations cannot be traced they are unknown (``None``), not zero: every sum is then a lower
bound and the estimate says why (``incomplete_reason``).

The parts are :data:`smmf_plan.breakdown.PARTS`; each optimizer's
:class:`~smmf_plan.breakdown.Breakdown` has ``total_bytes`` = the exact sum of its parts.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

from . import dtypes
from .allocators import DEVICE_ALLOCATORS as ALLOCATORS
from .allocators import QUANTUM as _QUANTUM
from .allocators import models as allocator_models
from .allocators import pinned_round, round_up
from .allocators.sequence import OptimizerStep, StepLog
from .breakdown import Breakdown, StepMemory
from .errors import PlanError, TraceError
from .fit import check_batch_size
from .model import ModelSpec
from .optimizers import OptimizerVariant, StateTensor, Unsupported
from .plan import plan_state
from .quantize import quantized_weights, stored_tensors
from .recipe import Recipe
from .shapes import ParamSpec
from .sources import build_module
from .sources.cache import cache_dir, store_json, versions
from .sources.module import specs_from_module
from .sources.resolve import NO_ARCHITECTURE, has_architecture
from .tasks import IMAGE_CLASSIFICATION
from .trace import DEFAULT_SEQ_LEN, ActivationModel, Affine, activation_model, input_spec_for
from .trace.prepare import buffer_bytes, prepare
from .units import format_bytes

MiB = 1 << 20

#: the training process's own host memory beside a GPU (offload): the import RSS of PyTorch's CUDA
#: build (:data:`smmf_plan.allocators.models.PYTORCH_CUDA`), plus the model library.
HOST_RUNTIME = {"pytorch": allocator_models.PYTORCH_CUDA}
#: torchao ``CPUOffloadOptimizer(minimal_size=4096)``: smaller parameters stay on the device.
OFFLOAD_MINIMAL_SIZE = 4096


@dataclass(frozen=True)
class _Fixed:
    """One optimizer's parts that do not grow with the batch, and its step temporaries."""

    weights: int
    grads: int
    state: int
    #: the step's raw temporaries on the device (before netting against the activations).
    step_temp: int
    #: True when the optimizer keeps its step scratch between steps (never netted).
    persistent: bool
    #: host parts (offload): host_copies, host_state, host_temporaries, host_runtime.
    host: tuple[tuple[str, int], ...] = ()


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
    _fixed: dict[str, _Fixed] = field(default_factory=dict, repr=False)
    #: per optimizer id: True when its step scratch is kept between steps (never netted).
    persistent: dict[str, bool] = field(default_factory=dict)
    #: per optimizer id: the logical optimizer-state bytes (``StatePlan.state_bytes``).
    state_bytes: dict[str, int] = field(default_factory=dict)
    #: the recipe the step was planned with.
    recipe: Recipe = field(default_factory=Recipe)
    #: ``Recipe.to_dict`` with the model's resolved dtypes (the JSON ``recipe`` object).
    recipe_info: dict = field(default_factory=dict)
    #: why the activations are not known (None when they are).
    incomplete_reason: str | None = None
    #: per optimizer id: ``batch -> bytes`` of the allocator part.
    _slack: dict[str, Callable[[int], int]] = field(default_factory=dict, repr=False)

    @property
    def rounding(self) -> str:
        """The block rounding of every part ("cpu" or "cuda")."""
        return allocator_models.resolve(self.allocator).rounding

    def breakdown_at(self, optimizer: str, batch: int) -> Breakdown:
        """The breakdown at another batch size, from the affine activation model (no re-trace)."""
        f = self._fixed[optimizer]
        act, temp = act_temp(self.activation_model, batch, self.rounding, f.step_temp, f.persistent)
        slack = self._slack[optimizer](batch) if optimizer in self._slack else 0
        return _breakdown(f, act, temp, slack, sum(self.runtime_parts.values()))

    def total_at(self, optimizer: str) -> Callable[[int], int]:
        """``batch -> device bytes`` for the fit stage's largest-batch search (non-decreasing)."""
        return lambda batch: self.breakdown_at(optimizer, batch).device_bytes

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
            "input": self.input, "recipe": dict(self.recipe_info),
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


def _breakdown(f: _Fixed, act: int | None, temp: int, slack: int, runtime: int) -> Breakdown:
    unknown = ("activations",) if act is None else ()
    return Breakdown(weights=f.weights, grads=f.grads, state_allocated=f.state, activations=act or 0,
                     temporaries=temp, allocator=slack, runtime=runtime, unknown=unknown,
                     **dict(f.host))


def act_temp(am, batch: int, rounding: str, step_temp: int, persistent: bool = False
             ) -> tuple[int | None, int]:
    """Activations at ``batch`` (None: not known) and the temporaries counted beyond them: the
    step's peak over what backward leaves alive, or all of it when the optimizer keeps its scratch
    between steps (or when the activations are not known: a lower bound)."""
    if am is None:
        return None, step_temp
    act = am.bytes_at(batch, rounding)
    if persistent:
        return act, step_temp
    retained = am.retained_at(batch, rounding)
    return act, max(0, retained + step_temp - act)


def _sum_rounded(specs: Sequence[ParamSpec], q: int, trainable_only: bool = False) -> int:
    return sum(round_up(s.nbytes, q) for s in specs if s.nbytes and (s.trainable or not trainable_only))


def optimizer_step(layout: OptimizerVariant, trainable: Sequence[ParamSpec], rounding: str,
                   states: Sequence[Sequence[StateTensor]] | None = None) -> OptimizerStep:
    """What ``layout``'s step allocates per trainable parameter (for the allocator replay): its
    device-resident state tensors, and its temporaries as blocks of the parameter's size rounded
    as ``rounding`` rounds it (the count from the optimizer's own temporaries rule applied to that
    parameter alone).
    ``states``: each parameter's state tensors where they are not ``layout.state``'s (one rank's
    shard of the parameter, :mod:`smmf_plan.dist`)."""
    if states is None:
        groups = layout.group_names(trainable)
        states = [layout.state(spec, g) for spec, g in zip(trainable, groups)]
    state = tuple(tuple(t.nbytes for t in tensors if not (rounding == "cuda" and t.on_host))
                  for tensors in states)
    path = layout.code_path(rounding)
    temps = []
    for spec in trainable:
        # the temporaries rule counts blocks at the allocator's rounded size: cut at that size
        # (cut at the raw size, a 2-B parameter's one 512-B CUDA temporary became 256 blocks)
        n = round_up(spec.nbytes, _QUANTUM[rounding]) if spec.nbytes else 0
        t = layout.step_temp_bytes([spec], rounding, path=path) if n else 0
        full, rest = divmod(t, n) if n else (0, 0)
        temps.append((n,) * full + ((rest,) if rest else ()))
    return OptimizerStep(state, tuple(temps), path, layout.keeps_scratch)


def host_runtime_bytes(library: str | None) -> int:
    """The training process's own host memory beside a GPU (offload's ``host_runtime`` part)."""
    return HOST_RUNTIME["pytorch"] + allocator_models.LIBRARY.get(library or "", 0)


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


def offloaded(specs: Sequence[ParamSpec], recipe: Recipe) -> list[ParamSpec]:
    """The trainable parameters an offloading recipe moves to the host: those of at least
    :data:`OFFLOAD_MINIMAL_SIZE` elements (torchao keeps smaller ones on the device)."""
    if recipe.offload is None:
        return []
    return [s for s in specs if s.trainable and s.numel >= OFFLOAD_MINIMAL_SIZE]


def _fixed_parts(specs: Sequence[ParamSpec], stored: Sequence[ParamSpec], buffer_bytes: int,
                 layout: OptimizerVariant, recipe: Recipe, allocator: str, library: str | None
                 ) -> tuple[_Fixed, int]:
    """One optimizer's fixed parts under ``recipe`` (device and host) and its logical state;
    ``allocator`` is the block rounding ("cpu" or "cuda")."""
    q = _QUANTUM[allocator]
    weights = _sum_rounded(stored, q) + buffer_bytes
    moved = offloaded(specs, recipe)
    moved_names = {s.name for s in moved}
    kept = [s for s in specs if s.trainable and s.name not in moved_names]
    planned = plan_state(specs, layout)
    if not moved:
        grads = _sum_rounded(specs, q, trainable_only=True)
        temp = layout.step_temp_bytes([s for s in specs if s.trainable], allocator)
        return _Fixed(weights, grads, planned.allocated_bytes[allocator], temp,
                      layout.keeps_scratch), planned.state_bytes
    # offload (torchao CPUOffloadOptimizer): the device keeps the small parameters' state and, unless
    # offloaded too, every gradient; the host keeps pinned copies, the state and runs the step
    on_device = plan_state(kept, layout) if kept else None
    grads = _sum_rounded(kept if recipe.offloads_grads else [s for s in specs if s.trainable], q)
    temp = layout.step_temp_bytes(kept, allocator) if kept else 0
    host_state = plan_state(moved, layout).allocated_bytes["cpu"]
    per_param = [layout.step_temp_bytes([s], "cpu") for s in moved]
    host_temp = sum(per_param) if layout.keeps_scratch else max(per_param)
    copies = 2 * sum(pinned_round(s.nbytes) for s in moved)
    host = (("host_copies", copies), ("host_state", host_state), ("host_temporaries", host_temp),
            ("host_runtime", host_runtime_bytes(library)))
    state = on_device.allocated_bytes[allocator] if on_device else 0
    return _Fixed(weights, grads, state, temp, layout.keeps_scratch, host), planned.state_bytes


@dataclass
class StepBasis:
    """What every optimizer's step estimate shares (:func:`step_basis`): the recipe, the planned
    specs and the tensors the weights take, the traced activation model, buffers, runtime and
    the assumptions stated so far."""

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
    recipe: Recipe = field(default_factory=Recipe)
    #: the tensors the weights take (a quantized base's bitsandbytes tensors in place of its weights).
    stored: list[ParamSpec] = field(default_factory=list)
    #: ``Recipe.to_dict`` with the model's resolved dtypes.
    recipe_info: dict = field(default_factory=dict)
    #: why the activations are not known (None when they are).
    incomplete_reason: str | None = None
    #: a quantized base: each quantized weight's name → its layer's (out, in) features.
    quantized: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def runtime_bytes(self) -> int:
        return sum(self.runtime_parts.values())

    @property
    def rounding(self) -> str:
        """The block rounding of every part ("cpu" or "cuda")."""
        return allocator_models.resolve(self.allocator).rounding


#: how every estimate counts the optimizer step's temporaries.
TEMPORARIES_ASSUMPTION = (
    "temporaries: the optimizer step's peak temporaries on the code path it takes by default "
    "(for-loop Adam on CPU, foreach on CUDA; each optimizer's in smmf-plan optimizers) plus "
    "outputs still held, counted only beyond the activation term (the step runs "
    "after backward has freed the activations); SMMF keeps its row-block scratch between "
    "steps, so its temporaries are always counted (those of its eager kernels: an upper "
    "bound when its fused C++ kernel runs)")


def estimate(model_spec: ModelSpec, layouts: Sequence[OptimizerVariant], *, batch_size: int = 1,
             input_size: Sequence[int] | str | None = None, seq_len: int | None = None,
             recipe: Recipe | None = None, dtype: str | None = None, amp: str | None = None,
             grad_checkpointing: bool = False, allocator: str = "glibc",
             module_factory: Callable[[], Any] | None = None, trace: bool = True,
             runtime_bytes: int | None = None) -> MemoryEstimate:
    """Estimate one training step's memory for each optimizer in ``layouts`` under ``recipe``
    (:class:`~smmf_plan.recipe.Recipe`: precision, quantized base, checkpointing, accumulation,
    offload; ``dtype``/``amp``/``grad_checkpointing`` are shorthands for a recipe of those alone).

    ``module_factory()`` returns the model as an ``nn.Module`` on the meta device (default:
    :func:`smmf_plan.sources.build_module`); it is what gets traced, made into the module the
    recipe trains (:func:`smmf_plan.trace.prepare.prepare`). ``batch_size`` is the micro-batch.
    Without a buildable module (weights without a config) the activations are not known: the
    estimate says so (``complete`` False, activations ``None``) and its totals are lower bounds;
    ``trace=False`` does the same on purpose. ``runtime_bytes`` replaces the stated runtime
    baseline with one the user measured on the device (``--runtime``).
    ``allocator`` is an allocator model id (:mod:`smmf_plan.allocators.models`; a device's
    allocator, "cpu" or "cuda", means its default model): it sets the block rounding, the runtime
    terms and the ``allocator`` part."""
    basis = step_basis(model_spec, batch_size=batch_size, input_size=input_size, seq_len=seq_len,
                       recipe=recipe, dtype=dtype, amp=amp, grad_checkpointing=grad_checkpointing,
                       allocator=allocator, module_factory=module_factory, trace=trace,
                       runtime_bytes=runtime_bytes)
    model = allocator_models.resolve(basis.allocator)
    rounding = model.rounding
    recipe, am, runtime = basis.recipe, basis.activation_model, basis.runtime_bytes
    assumptions = basis.assumptions
    workspaces = sum(allocator_models.workspace_blocks(model))
    weight_blocks = ([s.nbytes for s in basis.stored if s.nbytes]
                     + ([basis.buffer_bytes] if basis.buffer_bytes else []))
    moved = {s.name for s in offloaded(basis.specs, recipe)}
    on_device = [s for s in basis.specs if s.trainable and s.name not in moved]
    breakdowns, temps, fixed, logical, slack = {}, {}, {}, {}, {}
    runnable, rules = [], []
    for layout in layouts:
        layout = layout.bind(model_spec.facts)
        try:
            f, logical[layout.id] = _fixed_parts(basis.specs, basis.stored, basis.buffer_bytes,
                                                 layout, recipe, rounding, basis.library)
        except Unsupported as e:
            assumptions.append(f"{layout.id}: not estimated, its implementation cannot train this "
                               f"model: {e}")
            continue
        runnable.append(layout)
        rule = layout.info.target_rule
        if rule and rule not in rules:
            rules.append(rule)
        fixed[layout.id] = f
        temps[layout.id] = f.step_temp

        def parts_at(batch: int, f=f) -> tuple[int | None, int]:
            return act_temp(am, batch, rounding, f.step_temp, f.persistent)

        def tensors_at(batch: int, f=f, parts_at=parts_at) -> int:
            act, temp = parts_at(batch)
            return f.weights + f.grads + f.state + (act or 0) + temp + workspaces

        def churn_at(batch: int, f=f, parts_at=parts_at) -> int:
            act, temp = parts_at(batch)  # a scratch kept between steps is not churned
            return f.grads + (act or 0) + (0 if f.persistent else temp)

        slack[layout.id] = allocator_models.allocator_part(
            model, weights=weight_blocks, logs=basis.logs,
            step=optimizer_step(layout, on_device, rounding), tensors_at=tensors_at,
            churn_at=churn_at, recomputes=recipe.grad_checkpointing)
        act, temp = parts_at(basis.batch_size)
        breakdowns[layout.id] = _breakdown(f, act, temp, slack[layout.id](basis.batch_size), runtime)
    assumptions = assumptions + rules + [TEMPORARIES_ASSUMPTION]
    est = MemoryEstimate(model_spec.name, basis.batch_size, basis.allocator, breakdowns, am,
                         assumptions, temps, basis.runtime_parts, basis.input, 0.0, fixed,
                         {layout.id: layout.keeps_scratch for layout in runnable}, logical,
                         recipe=recipe, recipe_info=basis.recipe_info,
                         incomplete_reason=basis.incomplete_reason, _slack=slack)
    est.seconds = time.perf_counter() - basis.t0
    return est


def step_basis(model_spec: ModelSpec, *, batch_size: int = 1,
               input_size: Sequence[int] | str | None = None, seq_len: int | None = None,
               recipe: Recipe | None = None, dtype: str | None = None, amp: str | None = None,
               grad_checkpointing: bool = False, allocator: str = "glibc",
               module_factory: Callable[[], Any] | None = None, trace: bool = True,
               runtime_bytes: int | None = None, amp_trace: str = "autocast") -> StepBasis:
    """Everything :func:`estimate` shares between optimizers: the inputs validated, the specs as
    ``recipe`` stores them, the traced activation model, buffers, runtime and assumptions.

    ``amp_trace`` says how mixed precision runs: ``"autocast"`` (torch AMP: fp32 parameters,
    forward under autocast, the low-precision weight copies counted in the activations) or
    ``"cast"`` (the engine hands the model low-precision parameters — FSDP2's
    ``MixedPrecisionPolicy``, DeepSpeed's bf16/fp16 modes — so the step is traced in the AMP dtype
    without autocast, while the specs stay as the recipe stores them for the caller to place)."""
    t0 = time.perf_counter()
    batch_size = check_batch_size(batch_size)
    model = allocator_models.resolve(allocator)
    allocator, rounding = model.id, model.rounding
    if recipe is None:
        recipe = Recipe(dtype=dtype, amp=amp, grad_checkpointing=grad_checkpointing)
    elif dtype is not None or amp is not None or grad_checkpointing:
        raise TypeError("estimate: give a recipe or dtype/amp/grad_checkpointing, not both")
    planned = recipe.apply(model_spec)
    recipe.check(planned)
    specs = planned.params
    assumptions: list[str] = []
    logs: dict[int, StepLog] = {}
    cast = recipe.amp is not None and amp_trace == "cast"
    # the engine casts the parameters itself: the step is traced as pure low precision
    # (a quantized base and accumulation traced as the recipe has them; the engine places the
    # offloaded parts itself)
    traced_recipe = recipe.with_(dtype=recipe.amp, amp=None, offload=None) if cast else recipe
    if traced_recipe.offload is not None and not traced_recipe.offloads_grads:
        # the optimizer's state on the host leaves the device's step as it is: the trace (and its
        # cached facts) of the run without offload serves
        traced_recipe = traced_recipe.with_(offload=None)
    traced_specs = traced_recipe.apply(model_spec).params if cast else specs
    compute = traced_recipe.compute_dtype(model_spec)

    am, buffer_bytes, in_desc, library = None, 0, None, (model_spec.meta or {}).get("library")
    quantized: dict[str, tuple[int, int]] | None = None
    reason = None
    if trace:
        facts = _cached_facts(model_spec, traced_specs, recipe=traced_recipe, compute=compute,
                              input_size=input_size, seq_len=seq_len, batch_size=batch_size,
                              module_factory=module_factory)
        library = facts["library"]
        quantized = _quantized_from(facts)
        if facts.get("error"):
            reason = facts["error"]
        else:
            am = _model_from_facts(facts)
            buffer_bytes = facts["buffer_bytes"][rounding]
            logs = {int(b): StepLog.from_json(log) for b, log in zip(facts["batches"], facts["logs"])}
            in_desc = facts["input"]
            b1, b2 = am.batches
            how = (f"meta tensors in {recipe.amp} (the engine casts the parameters; no autocast)"
                   if cast else f"fake CPU tensors under {recipe.amp} autocast" if recipe.amp
                   else "meta tensors")
            assumptions.append(
                f"activations: one forward+backward traced on {how} at batch {b1} and {b2} "
                f"({in_desc.split(' · ', 1)[-1]}), every storage's lifetime tracked; other batch "
                "sizes extrapolated linearly")
            if facts["task"] not in (IMAGE_CLASSIFICATION,) and facts.get("seq_len"):
                assumptions.append(f"text input: {facts['seq_len']} tokens per sample "
                                   f"(--seq-len; default {DEFAULT_SEQ_LEN} or the model's maximum positions)")
            if recipe.grad_checkpointing:
                assumptions.append("gradient checkpointing on (recomputation traced)")
    else:
        reason = "tracing off"
    if recipe.quantize_base is not None and quantized is None:
        quantized = _quantized_layers(model_spec, specs, recipe, module_factory)
    if reason is not None:
        assumptions.append(f"activations not known: {reason}; every total is a lower bound")
    stored = stored_tensors(specs, quantized or {}, recipe.quantize_base, recipe.double_quant)

    rparts = (allocator_models.runtime_parts(model, library) if runtime_bytes is None
              else {"given": int(runtime_bytes)})
    assumptions.append("recipe: " + recipe.describe(model_spec))
    assumptions.append(_weights_assumption(planned, recipe, quantized or {}, buffer_bytes))
    if recipe.grad_accum > 1:
        assumptions.append(
            f"gradient accumulation: batch {batch_size} is the micro-batch, {recipe.grad_accum} "
            f"micro-steps per optimizer step (effective batch {batch_size * recipe.grad_accum}); "
            "traced as a second micro-step, every gradient allocated while backward runs")
    if recipe.offload is not None:
        assumptions.append(_offload_assumption(recipe, library))
    assumptions += allocator_models.assumptions(model, rparts, library, runtime_bytes is not None)
    return StepBasis(list(specs), allocator, batch_size, am, buffer_bytes, in_desc, library, rparts,
                     assumptions, recipe.amp, t0, logs=logs, recipe=recipe, stored=stored,
                     recipe_info=recipe.to_dict(model_spec, batch_size), incomplete_reason=reason,
                     quantized=dict(quantized or {}))


def _weights_assumption(planned: ModelSpec, recipe: Recipe, quantized: dict, buffer_bytes: int) -> str:
    by_role: dict[tuple[bool, str], int] = {}
    for p in planned.params:
        if p.name not in quantized:
            key = (p.trainable, p.dtype)
            by_role[key] = by_role.get(key, 0) + 1
    roles = [f"{n} {'trainable' if t else 'frozen'} in {dt}" for (t, dt), n in sorted(by_role.items())]
    text = f"weights: {len(planned.params)} parameter tensors (" + ", ".join(roles)
    if quantized:
        text += (f", {len(quantized)} Linear weights {recipe.quantize_base}"
                 + (" with double quantization" if recipe.double_quant else "")
                 + " as bitsandbytes stores them (codes, absmax, code book; embeddings, norms and "
                 "the output head kept as transformers' integration keeps them)")
    text += ")"
    if buffer_bytes:
        text += f" + buffers ({buffer_bytes:,} B)"
    if recipe.amp:
        text += f"; {recipe.amp} copies made by autocast counted in activations"
    if planned.meta.get("weights_dtype_from"):
        text += "; dtype of the checkpoint from the config's torch_dtype (from_pretrained's default)"
    return text + "; gradients for trainable parameters only"


def _offload_assumption(recipe: Recipe, library: str | None) -> str:
    grads = ("each gradient freed on the device once copied (offload_gradients=True)"
             if recipe.offloads_grads else "gradients also kept on the device")
    return (f"offload ({recipe.offload}), as torchao's CPUOffloadOptimizer: parameters of at least "
            f"{OFFLOAD_MINIMAL_SIZE} elements have their optimizer state, a pinned copy of the "
            f"parameter and one of its gradient on the host (pinned blocks rounded up to powers of "
            f"two), their step runs there one parameter at a time; {grads}; smaller parameters "
            f"stay on the device with their state. Host runtime: "
            f"{format_bytes(host_runtime_bytes(library), 0, unit='MiB')} (PyTorch CUDA build import "
            "RSS measured here, + the model library); CUDA libraries loaded on first use are not "
            "counted")


# --------------------------------------------------------------------------- traced facts + cache

#: bump when the cached trace facts change meaning (2: "task" in the one task vocabulary;
#: 3: "logs", the allocation sequence of each traced batch; 4: the recipe: per-role dtypes,
#: quantized layers, accumulation, offloaded gradients).
FACTS_VERSION = 4


def _raw_module(model_spec: ModelSpec, module_factory):
    if module_factory is not None:
        return module_factory()
    return build_module(model_spec, device="meta")


def _quantized_layers(model_spec: ModelSpec, specs: Sequence[ParamSpec], recipe: Recipe,
                      module_factory) -> dict[str, tuple[int, int]]:
    """The layers bitsandbytes quantizes (needs the architecture: a PlanError without one)."""
    try:
        module = _raw_module(model_spec, module_factory)
    except PlanError as e:
        raise PlanError(f"--quantize-base {recipe.quantize_base} needs the architecture to know which "
                        f"layers are Linear: {e}") from None
    return quantized_weights(module, specs, recipe.quantize_base)


def _quantized_from(facts: dict) -> dict[str, tuple[int, int]] | None:
    q = facts.get("quantized")
    return None if q is None else {k: tuple(v) for k, v in q.items()}


def _trace_facts(model_spec: ModelSpec, specs: Sequence[ParamSpec], *, recipe: Recipe, compute: str,
                 input_size, seq_len, batch_size: int, module_factory) -> dict:
    """Trace the model as ``recipe`` trains it and return what an estimate needs from the trace
    (and the layers it quantizes), as plain JSON data."""
    import torch

    try:
        raw = _raw_module(model_spec, module_factory)
    except PlanError as e:
        return {"error": str(e), "library": _library_of(model_spec, None), "quantized": None}
    quantized = quantized_weights(raw, specs, recipe.quantize_base) if recipe.quantize_base else {}
    pure = recipe.dtype if recipe.dtype is not None and recipe.amp is None else None

    def build(module=None):
        m = module if module is not None else _raw_module(model_spec, module_factory)
        return prepare(m, specs, quantized=quantized, compute_dtype=compute, buffers_dtype=pure)

    module = build(raw)
    library = _library_of(model_spec, module)
    q_facts = {k: list(v) for k, v in quantized.items()} if recipe.quantize_base else None
    try:
        spec_in = input_spec_for(module, batch_size, input_size, seq_len)
        if recipe.amp is None and compute in dtypes.HALF:
            spec_in = replace(spec_in, float_dtype=compute)
        buffers = {a: buffer_bytes(module, _QUANTUM[a]) for a in ALLOCATORS}
        first = [module]

        def reuse():  # the first trace reuses the module built above
            return first.pop() if first else build()

        am = activation_model(reuse, spec_in, grad_checkpointing=recipe.grad_checkpointing,
                              amp_dtype=getattr(torch, recipe.amp) if recipe.amp else None,
                              accumulate=recipe.grad_accum > 1,
                              offload_grads_from=OFFLOAD_MINIMAL_SIZE if recipe.offloads_grads else None)
    except TraceError as e:  # the step is planned without its activations, and says why
        return {"error": str(e), "library": library, "quantized": q_facts}
    return {
        "error": None,
        "library": library,
        "quantized": q_facts,
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
    return ActivationModel(
        batches=tuple(facts["batches"]),
        activation={k: Affine(*v) for k, v in facts["activation"].items()},
        retained={k: Affine(*v) for k, v in facts["retained"].items()},
        saved=Affine(*facts["saved"]),
    )


def _facts_key(model_spec: ModelSpec, options: dict) -> str:
    spec = model_spec.to_dict()
    spec["meta"] = {k: v for k, v in spec["meta"].items() if k != "cache"}
    blob = json.dumps({"v": FACTS_VERSION, "spec": spec, "options": options, "versions": versions()},
                      sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _cached_facts(model_spec: ModelSpec, specs: Sequence[ParamSpec], *, module_factory, **options) -> dict:
    """:func:`_trace_facts`, cached as JSON beside the shape cache so that a repeated estimate
    imports no torch. Only estimates of a resolved source are cached (a hand-built
    ``module_factory`` has no stable identity)."""

    if module_factory is not None:
        return _trace_facts(model_spec, specs, module_factory=module_factory, **options)
    if not has_architecture(model_spec):  # known without building it (or importing torch)
        return {"error": f"{model_spec.name}: {NO_ARCHITECTURE}",
                "library": (model_spec.meta or {}).get("library"), "quantized": None}
    key_options = {**options, "recipe": options["recipe"].to_dict(),
                   "specs": [p.to_dict() for p in specs]}
    path = os.path.join(cache_dir(), "activations", _facts_key(model_spec, key_options) + ".json")
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
    lib = "transformers" if hasattr(getattr(module, "config", None), "to_dict") else \
        "timm" if hasattr(module, "pretrained_cfg") else None
    return ModelSpec(name, lib or "module", specs_from_module(module), {"library": lib, **meta})
