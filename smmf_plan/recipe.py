"""How a training run stores its weights, gradients and optimizer state, and how it steps: the
:class:`Recipe`, the one place every entry point (command line, ``check``, the memory estimate, the
fit) reads it from. Torch-free.

**Precision.** Each floating parameter is stored in the dtype of its role; gradients and optimizer
state follow the trainable weights (``torch.optim`` creates state with ``zeros_like(param)``;
Adafactor/CAME up-cast half precision, :func:`smmf_plan.dtypes.upcast`):

=====================================  ============================  ==================  =========
recipe (options)                       trainable weights, grads      frozen weights      compute
=====================================  ============================  ==================  =========
none                                   as the checkpoint stores them as stored           as stored
``--dtype D``                          D ("pure D" when D is half)   D                   D
``--amp A``                            float32 (master weights)      as stored           A
``--dtype H --amp A`` (H half)         float32 (master weights)      H (a half base)     A
``--quantize-base Q`` (+ any above)    as above                      Q for Linear        see below
=====================================  ============================  ==================  =========

"As the checkpoint stores them": a weights file's own dtypes, or, for a model built from its
config, the config's ``torch_dtype``/``dtype`` (what ``from_pretrained`` loads since transformers
5, whose default is ``dtype="auto"``); float32 when the config states none. LoRA adapters over a
half-precision base are float32 unless ``--dtype`` says otherwise (PEFT's
``autocast_adapter_dtype=True``). ``--dtype H --amp A`` is the usual PEFT setting: a frozen base
loaded in H, trainable weights in float32, autocast to A; it needs frozen parameters (with every
parameter trained it would be two answers at once, and is refused).

**Quantized base** (``--quantize-base nf4|fp4|int8``, as ``BitsAndBytesConfig(load_in_4bit=True,
bnb_4bit_quant_type=Q)`` / ``load_in_8bit=True`` do): every ``nn.Linear`` (and GPT-2 ``Conv1D``)
that transformers' bitsandbytes integration converts is stored quantized, with bitsandbytes' exact
tensors (:mod:`smmf_plan.quantize`); embeddings, norms, the output head and the modules transformers
keeps out stay in the frozen dtype. Quantized weights cannot train, so the base must be frozen.
The quantized layers compute in the recipe's compute dtype (``bnb_4bit_compute_dtype``; set it so —
``BitsAndBytesConfig`` defaults to float32).

**Gradient accumulation** (``grad_accum`` K): the batch size is the micro-batch, activations are
those of one micro-batch, gradients stay allocated across the K micro-steps (the second and later
micro-steps are the peak: every gradient exists while backward runs), the effective batch is
micro-batch × K.

**Offload** (as torchao's ``CPUOffloadOptimizer`` and ZeRO-Offload do, for one GPU):
``"optimizer"`` keeps the optimizer state, a pinned copy of each trainable parameter and of its
gradient on the host and runs the step there; ``"optimizer+grads"`` also frees each device
gradient as soon as it is copied (``offload_gradients=True``, which torchao does not allow with
gradient accumulation). Parameters under torchao's ``minimal_size`` (4096 elements) stay on the
device with an on-device optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from . import dtypes
from .errors import PlanError
from .model import ModelSpec

if TYPE_CHECKING:  # pragma: no cover
    from .options import ModelOptions, StepOptions
    from .shapes import ParamSpec

#: ``--amp`` spellings → the autocast dtype.
AMP_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"}
#: ``--quantize-base`` values: bitsandbytes 4-bit NormalFloat / FloatingPoint, and LLM.int8().
QUANTIZATIONS = ("nf4", "fp4", "int8")
#: ``--offload`` values.
OFFLOADS = ("optimizer", "optimizer+grads")
#: what each precision kind means (``Recipe.precision``), for the README and ``--help``.
PRECISIONS = {
    "fp32": "every weight, gradient and state tensor in float32 (or float64 when asked)",
    "amp": "float32 master weights, gradients and state; autocast computes in bf16/fp16",
    "pure": "weights, gradients and state all in one half-precision dtype",
    "half-base": "a frozen base in bf16/fp16, trainable weights (adapters) in float32",
    "quantized-base": "a frozen base quantized by bitsandbytes (nf4/fp4/int8)",
    "mixed": "dtypes as a checkpoint mixes them",
}
#: LoRA adapters' parameter names end so (:mod:`smmf_plan.sources.lora`, PEFT's naming).
ADAPTER_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


def _canonical_float(value: str, what: str) -> str:
    try:
        dt = dtypes.canonical(value)
    except ValueError as e:
        raise PlanError(f"{what}: {e}") from None
    if dt not in dtypes.FLOATING:
        raise PlanError(f"{what} {value!r} is not a floating-point dtype: use fp32, bf16, fp16 or fp64")
    return dt


def is_adapter(name: str) -> bool:
    return name.endswith(ADAPTER_SUFFIXES)


def stored_dtype(spec: "ModelSpec") -> str | None:
    """The dtype a checkpoint stores its weights in, where the parameters were built from its
    config alone (``from_config`` builds float32): the config's ``torch_dtype``/``dtype``. None when
    the parameters already carry a weights file's dtypes, or the config states no floating dtype."""
    meta = spec.meta or {}
    if meta.get("weights"):
        return None
    text = meta.get("checkpoint_dtype")
    if not isinstance(text, str):
        return None
    try:
        dt = dtypes.canonical(text)
    except ValueError:
        return None
    return dt if dt in dtypes.FLOATING else None


@dataclass(frozen=True)
class Recipe:
    """How one training run stores and steps (see the module docstring). Validated on creation:
    a bad value or a contradictory combination is a :class:`PlanError` naming the fix. Checks that
    need the model (frozen parameters to quantize, a half base to hold) are :meth:`check`."""

    #: ``--dtype``: every weight in this dtype (with ``amp``: the frozen base only). None: as stored.
    dtype: str | None = None
    #: ``--amp``: autocast compute dtype ("bfloat16"/"float16"); trainable weights stay float32.
    amp: str | None = None
    #: ``--quantize-base``: one of :data:`QUANTIZATIONS`, or None.
    quantize_base: str | None = None
    #: ``--double-quant``: 4-bit absmax quantized again (``bnb_4bit_use_double_quant``).
    double_quant: bool = False
    #: ``--grad-checkpointing``: activations recomputed in backward.
    grad_checkpointing: bool = False
    #: ``--grad-accum``: micro-steps per optimizer step.
    grad_accum: int = 1
    #: ``--offload``: one of :data:`OFFLOADS`, or None.
    offload: str | None = None

    def __post_init__(self) -> None:
        def set_(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.dtype is not None:
            set_("dtype", _canonical_float(self.dtype, "--dtype"))
        if self.amp is not None:
            key = str(self.amp).strip().lower()
            if key not in AMP_DTYPES:
                raise PlanError(f"--amp {self.amp!r} is not a mixed-precision dtype: use bf16 or fp16")
            set_("amp", AMP_DTYPES[key])
            if self.dtype is not None and self.dtype not in ("float32", *dtypes.HALF):
                raise PlanError(f"--amp keeps float32 master weights; --dtype {self.dtype} is neither "
                                "float32 nor a half-precision base: use --dtype fp32, bf16 or fp16")
        if self.quantize_base is not None:
            q = str(self.quantize_base).strip().lower()
            if q not in QUANTIZATIONS:
                raise PlanError(f"--quantize-base {self.quantize_base!r} is not a quantization: use "
                                f"{', '.join(QUANTIZATIONS)}")
            set_("quantize_base", q)
            if self.dtype is not None and self.dtype not in ("float32", *dtypes.HALF):
                raise PlanError(f"--quantize-base quantizes 16/32-bit weights (bitsandbytes); --dtype "
                                f"{self.dtype} is not one: use --dtype fp32, bf16 or fp16")
        if not isinstance(self.double_quant, bool):
            raise PlanError(f"double quantization must be true or false, got {self.double_quant!r}")
        if self.double_quant and self.quantize_base not in ("nf4", "fp4"):
            raise PlanError("--double-quant quantizes the absmax of 4-bit weights: add "
                            "--quantize-base nf4 (or fp4), or drop --double-quant")
        if isinstance(self.grad_accum, bool) or not isinstance(self.grad_accum, int) or self.grad_accum < 1:
            raise PlanError(f"--grad-accum {self.grad_accum!r} is not a number of micro-steps: give a "
                            "whole number >= 1 (1: no accumulation)")
        if self.offload is not None:
            off = str(self.offload).strip().lower()
            if off not in OFFLOADS:
                raise PlanError(f"--offload {self.offload!r} is not an offload: use "
                                f"{' or '.join(OFFLOADS)}")
            set_("offload", off)
            if off == "optimizer+grads" and self.grad_accum > 1:
                raise PlanError("--offload optimizer+grads frees each gradient once it is on the host, "
                                "so gradients cannot accumulate: use --offload optimizer with "
                                "--grad-accum, or drop --grad-accum")

    # ------------------------------------------------------------------ building
    @classmethod
    def from_options(cls, model: "ModelOptions", step: "StepOptions | None" = None) -> "Recipe":
        """The recipe a command line or a check configuration asks for."""
        kw: dict[str, Any] = {"dtype": model.dtype, "quantize_base": model.quantize_base,
                              "double_quant": model.double_quant}
        if step is not None:
            kw.update(amp=step.amp, grad_checkpointing=step.grad_checkpointing,
                      grad_accum=step.grad_accum or 1, offload=step.offload)
        return cls(**kw)

    def with_(self, **changes: Any) -> "Recipe":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    # ------------------------------------------------------------------ dtypes per role
    @property
    def offloads_grads(self) -> bool:
        return self.offload == "optimizer+grads"

    def param_dtype(self, param: "ParamSpec", stored: str | None = None) -> str:
        """The dtype ``param`` is stored in under this recipe; ``stored`` is the checkpoint's dtype
        (:func:`stored_dtype`) for parameters built from a config. Non-floating tensors keep theirs."""
        if param.dtype not in dtypes.FLOATING:
            return param.dtype
        source = stored or param.dtype
        if not param.trainable:
            return self.dtype or source
        if self.amp is not None:
            return "float32"
        if self.dtype is not None:
            return self.dtype
        if is_adapter(param.name):  # PEFT autocast_adapter_dtype: half adapters train in float32
            return dtypes.upcast(source)
        return source

    def apply(self, spec: "ModelSpec") -> "ModelSpec":
        """``spec`` with every parameter in the dtype this recipe stores it in (a new ModelSpec;
        applying twice gives the same result)."""
        stored = stored_dtype(spec)
        params = []
        for p in spec.params:
            dt = self.param_dtype(p, stored)
            params.append(p if dt == p.dtype else replace(p, dtype=dt))
        meta = dict(spec.meta or {})
        if stored is not None:
            meta["weights_dtype_from"] = "config torch_dtype"
        return ModelSpec(spec.name, spec.source, params, meta)

    def check(self, spec: "ModelSpec") -> None:
        """Refuse what this model makes contradictory (one-line :class:`PlanError`)."""
        frozen = any(not p.trainable for p in spec.params)
        if self.amp is not None and self.dtype in dtypes.HALF and not frozen:
            short = {"bfloat16": "bf16", "float16": "fp16"}[self.dtype]
            raise PlanError(f"--dtype {short} with --amp stores a frozen base in {short} beside float32 "
                            "trainable weights, but every parameter is trained: drop --dtype for AMP "
                            f"(float32 master weights) or --amp for pure {short}")
        if self.quantize_base is not None and not frozen:
            raise PlanError(f"--quantize-base {self.quantize_base} quantizes the frozen base, but every "
                            "parameter is trained: freeze it with --lora-rank/--lora-targets, "
                            "--trainable or --freeze")

    def precision(self, spec: "ModelSpec") -> str:
        """The precision kind (a key of :data:`PRECISIONS`) of ``spec`` as this recipe stores it."""
        if self.quantize_base is not None:
            return "quantized-base"
        if self.amp is not None:
            return "amp"
        floats = [p for p in self.apply(spec).params if p.dtype in dtypes.FLOATING]
        train = {p.dtype for p in floats if p.trainable}
        frozen = {p.dtype for p in floats if not p.trainable}
        every = train | frozen
        if len(every) == 1:
            return "pure" if every <= dtypes.HALF else "fp32"
        if frozen and frozen <= dtypes.HALF and train and not train & dtypes.HALF:
            return "half-base"
        return "mixed"

    def compute_dtype(self, spec: "ModelSpec") -> str:
        """What the forward computes in: the autocast dtype, else the dtype most weights have."""
        if self.amp is not None:
            return self.amp
        counts: dict[str, int] = {}
        for p in self.apply(spec).params:
            if p.dtype in dtypes.FLOATING:
                counts[p.dtype] = counts.get(p.dtype, 0) + p.numel
        return max(counts, key=counts.__getitem__) if counts else "float32"

    # ------------------------------------------------------------------ words and JSON
    def describe(self, spec: "ModelSpec") -> str:
        """One line: ``AMP bf16 (float32 master weights) · checkpointing · 4 micro-steps · …``."""
        kind = self.precision(spec)
        planned = self.apply(spec)
        frozen = sorted({p.dtype for p in planned.params if not p.trainable and p.dtype in dtypes.FLOATING})
        train = sorted({p.dtype for p in planned.params if p.trainable and p.dtype in dtypes.FLOATING})
        if kind == "quantized-base":
            q = self.quantize_base + (" (double quant)" if self.double_quant else "")
            text = (f"{q} base, rest of the base in {'/'.join(frozen) or '-'}, trainable "
                    f"{'/'.join(train) or '-'}, compute {self.compute_dtype(spec)}")
        elif kind == "amp":
            text = f"AMP {self.amp} (float32 master weights" + (
                f", frozen base {'/'.join(frozen)})" if frozen and frozen != ["float32"] else ")")
        elif kind == "half-base":
            text = f"{'/'.join(frozen)} frozen base, {'/'.join(train)} trainable weights"
        elif kind == "pure":
            text = f"pure {train[0] if train else frozen[0]}"
        elif kind == "fp32":
            text = (train or frozen or ["float32"])[0]
        else:
            text = "mixed dtypes: " + "/".join(sorted(set(train) | set(frozen)))
        parts = [text]
        if self.grad_checkpointing:
            parts.append("gradient checkpointing")
        if self.grad_accum > 1:
            parts.append(f"{self.grad_accum} micro-steps per optimizer step")
        if self.offload:
            parts.append(f"{self.offload} offloaded to the host")
        return " · ".join(parts)

    def to_dict(self, spec: "ModelSpec | None" = None, batch_size: int | None = None) -> dict:
        """The ``recipe`` object of JSON documents (schema in the README)."""
        d: dict[str, Any] = {
            "dtype": self.dtype, "amp": self.amp, "quantize_base": self.quantize_base,
            "double_quant": self.double_quant, "grad_checkpointing": self.grad_checkpointing,
            "grad_accum": self.grad_accum, "offload": self.offload,
        }
        if spec is not None:
            planned = self.apply(spec)
            d["precision"] = self.precision(spec)
            d["compute_dtype"] = self.compute_dtype(spec)
            d["trainable_dtypes"] = sorted({p.dtype for p in planned.params if p.trainable})
            d["frozen_dtypes"] = sorted({p.dtype for p in planned.params if not p.trainable})
        if batch_size is not None:
            d["micro_batch_size"] = batch_size
            d["effective_batch_size"] = batch_size * self.grad_accum
        return d

