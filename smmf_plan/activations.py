"""Activation memory of one training step, found by running forward + backward on tensors without
data (the meta device, or fake CPU tensors under ``FakeTensorMode`` for mixed precision).

What is counted (:func:`trace_step`): every tensor storage the step creates is tracked from the
operator that returns it (a ``TorchDispatchMode``) until the storage dies (a weakref finalizer on
the storage), so the live bytes at every moment of forward and backward are known, exactly as an
allocator would see them. Parameters and buffers exist before the step and are not counted; the
input batch is. Three figures come out of one trace:

* ``saved_bytes`` - what is alive at the end of forward: the tensors autograd keeps for backward
  plus the outputs and the input batch (deduplicated by storage), the classic "activations"
  figure. (Saved-tensor hooks were tried: an identity pack hook makes outputs saved by their own
  node a reference cycle, freed late, which inflated a GPT-2 peak by 20%; the storage tracker
  sees the same bytes without changing lifetimes.)
* ``peak_bytes`` - the largest live total during forward + backward: saved activations still
  alive + gradients produced so far + backward's transients (gradients of activations);
* ``grad_bytes`` / ``retained_bytes`` - what is still alive when backward returns: the parameter
  gradients, and what the caller still holds (model outputs such as logits, the loss).

The activation term of a memory breakdown is ``peak_bytes - grad_bytes``: the step's peak beyond the
gradients (which the breakdown counts separately, in full). Each figure is kept raw and rounded per
storage as each allocator rounds (64 B on CPU, 512 B on CUDA).

Assumptions, stated: the trace runs the module's own Python code, so data-dependent control flow
sees meta tensors (an operator that needs values fails and is reported as a :class:`PlanError`);
``scaled_dot_product_attention`` is routed to the kernel the CPU build would pick (flash attention
for CPU when eligible), which saves far less than the math path that meta tensors would otherwise
take. Two traces at batch sizes ``b1 < b2`` give an affine model ``a + b·batch``
(:class:`ActivationModel`), which holds because every activation scales with the batch.
"""

from __future__ import annotations

import contextlib
import math
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from .allocators import QUANTUM as ROUNDING, round_up as _round
from .errors import PlanError

#: documented default sequence length for text models (or the model's maximum positions if less).
DEFAULT_SEQ_LEN = 128
#: default (C, H, W) when a timm model states no input size.
DEFAULT_IMAGE_SIZE = (3, 224, 224)


# --------------------------------------------------------------------------- input specs

@dataclass(frozen=True)
class InputSpec:
    """What one training batch looks like; :meth:`make` builds it on any device.

    ``kind``: "image" (``x (B,C,H,W)`` + integer class targets for a cross-entropy loss),
    "causal-lm"/"masked-lm" (``input_ids`` + ``labels``, both ``(B, seq_len)``), "seq2seq"
    (``input_ids`` + ``labels``; the model derives ``decoder_input_ids`` from the labels),
    "classification" (``input_ids`` + ``labels (B,)``) or "base" (``input_ids`` only; the loss is
    the mean of the first output)."""

    kind: str
    batch_size: int
    input_size: tuple[int, ...] | None = None
    seq_len: int | None = None
    vocab_size: int | None = None
    num_classes: int | None = None
    #: floating dtype of image inputs (canonical name, e.g. "bfloat16"); None: float32.
    float_dtype: str | None = None

    def describe(self) -> str:
        if self.kind == "image":
            return f"batch {self.batch_size} · {'×'.join(map(str, self.input_size or ()))}"
        return f"batch {self.batch_size} · seq_len {self.seq_len}"

    def with_batch(self, batch_size: int) -> "InputSpec":
        return InputSpec(self.kind, batch_size, self.input_size, self.seq_len, self.vocab_size,
                         self.num_classes, self.float_dtype)

    def make(self, device: str = "meta", dtype: Any = None) -> tuple[tuple, dict, Any]:
        """``(args, kwargs, target)``: random values on a real device, none on meta. ``dtype``
        is the floating dtype of image inputs (default float32)."""
        import torch

        b = self.batch_size
        real = device != "meta"
        gen = torch.Generator().manual_seed(0)
        if self.kind == "image":
            dt = dtype or (getattr(torch, self.float_dtype) if self.float_dtype else torch.float32)
            x = torch.randn(b, *self.input_size, generator=gen).to(dt) if real else \
                torch.empty(b, *self.input_size, dtype=dt, device="meta")
            n = max(1, self.num_classes or 1)
            y = torch.randint(0, n, (b,), generator=gen) if real else \
                torch.zeros(b, dtype=torch.long, device="meta")
            return (x,), {}, y

        def ids(shape):
            if real:
                return torch.randint(0, max(1, self.vocab_size or 2), shape, generator=gen)
            return torch.zeros(shape, dtype=torch.long, device="meta")

        s = self.seq_len
        kw = {"input_ids": ids((b, s))}
        if self.kind in ("causal-lm", "masked-lm", "seq2seq"):
            kw["labels"] = kw["input_ids"].clone()
        elif self.kind == "classification":
            kw["labels"] = torch.randint(0, max(1, self.num_classes or 2), (b,), generator=gen) \
                if real else torch.zeros(b, dtype=torch.long, device="meta")
        return (), kw, None


def _check_positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlanError(f"{what} {value!r} must be a whole number ≥ 1")
    return value


def _config_of(obj: Any) -> dict:
    cfg = getattr(obj, "config", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    meta = getattr(obj, "meta", None) or {}
    c = meta.get("config")
    return c if isinstance(c, dict) else {}


def _max_positions(cfg: dict) -> int | None:
    sub = [cfg] + [cfg[k] for k in ("text_config", "decoder", "encoder") if isinstance(cfg.get(k), dict)]
    for c in sub:
        for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx"):
            v = c.get(key)
            if isinstance(v, int) and v > 0:
                return v
    return None


def _vocab(cfg: dict) -> int | None:
    for c in [cfg] + [cfg[k] for k in ("text_config", "decoder") if isinstance(cfg.get(k), dict)]:
        v = c.get("vocab_size")
        if isinstance(v, int) and v > 0:
            return v
    return None


def parse_input_size(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"3,224,224"`` / ``"3x224x224"`` / ``(3, 224, 224)`` → a (C, H, W) tuple of ints ≥ 1."""
    if isinstance(text, str):
        parts = [p for p in text.replace("x", ",").replace("×", ",").split(",") if p.strip()]
        try:
            dims = tuple(int(p) for p in parts)
        except ValueError:
            raise PlanError(f"--input-size {text!r} is not C,H,W: give e.g. 3,224,224") from None
    else:
        dims = tuple(text)
    if len(dims) != 3 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise PlanError(f"--input-size {text!r} is not C,H,W of whole numbers ≥ 1: give e.g. 3,224,224")
    return dims


def input_spec_for(model: Any, batch_size: int, input_size: Sequence[int] | str | None = None,
                   seq_len: int | None = None) -> InputSpec:
    """The batch a training step of ``model`` (a :class:`~smmf_plan.model.ModelSpec` or an
    ``nn.Module``) consumes.

    Image models (timm): ``(B, C, H, W)`` with ``(C, H, W)`` from ``input_size`` or the model's
    ``pretrained_cfg["input_size"]`` (3×224×224 if it states none). Text models (transformers):
    ``seq_len`` tokens, default :data:`DEFAULT_SEQ_LEN` (128) or the config's maximum positions
    if smaller; the task (causal / masked / seq2seq / classification / base) comes from the
    architecture."""
    _check_positive(batch_size, "--batch-size")
    if seq_len is not None:
        _check_positive(seq_len, "--seq-len")
    meta = getattr(model, "meta", None)
    if meta is not None:  # a ModelSpec
        library, task, arch = meta.get("library"), meta.get("task"), meta.get("architecture") or ""
        default_size = meta.get("input_size")
        num_classes = meta.get("num_classes")
    else:
        cfg_obj = getattr(model, "pretrained_cfg", None)
        library = "timm" if cfg_obj is not None and not hasattr(model, "config") else "transformers"
        arch = type(model).__name__
        default_size = (cfg_obj or {}).get("input_size")
        pe_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
        if default_size and isinstance(pe_size, (tuple, list)) and len(pe_size) == 2:
            default_size = (default_size[0], *pe_size)  # built with img_size=...: that wins
        num_classes = getattr(model, "num_classes", None)
        task = None
        if library == "transformers":
            from .sources.hf_config import task_of

            task = task_of(arch, _config_of(model))
    if library == "timm" or (library is None and input_size is not None):
        size = parse_input_size(input_size) if input_size is not None else \
            tuple(default_size) if default_size else DEFAULT_IMAGE_SIZE
        return InputSpec("image", batch_size, input_size=tuple(int(s) for s in size),
                         num_classes=num_classes)
    if library != "transformers":
        raise PlanError("no architecture to run for activations: the model comes from weights "
                        "without a config; put its config.json beside the weights")
    if input_size is not None:
        raise PlanError("--input-size is for image models; use --seq-len for text models")
    cfg = _config_of(model)
    limit = _max_positions(cfg)
    if seq_len is None:
        seq_len = min(DEFAULT_SEQ_LEN, limit) if limit else DEFAULT_SEQ_LEN
    elif limit and seq_len > limit:
        raise PlanError(f"--seq-len {seq_len} exceeds the model's {limit} positions: give ≤ {limit}")
    kind = {"causal-lm": "causal-lm", "masked-lm": "masked-lm", "seq2seq-lm": "seq2seq"}.get(task or "")
    if kind is None:
        kind = "classification" if "ForSequenceClassification" in arch else "base"
    return InputSpec(kind, batch_size, seq_len=seq_len, vocab_size=_vocab(cfg),
                     num_classes=cfg.get("num_labels") if kind == "classification" else None)


# --------------------------------------------------------------------------- the storage tracker

def _storage_key(t) -> int:
    return t.untyped_storage()._cdata


class StorageTracker:
    """Live bytes of tensor storages created while active, per allocator rounding, with peaks.

    A ``TorchDispatchMode`` sees each operator's outputs; a storage not seen before is an
    allocation, and a weakref finalizer on its Python object (which PyTorch keeps alive exactly as
    long as the storage) is its free. Storages registered with :meth:`ignore` (parameters,
    buffers, pre-existing state) are never counted. Works on meta, fake and real tensors."""

    def __init__(self) -> None:
        self.live = {k: 0 for k in ROUNDING}
        self.peak = {k: 0 for k in ROUNDING}
        self._sizes: dict[int, int] = {}
        self._ignored: set[int] = set()
        self.ops = 0

    def ignore(self, tensors) -> None:
        for t in tensors:
            if t is None:
                continue
            st = t.untyped_storage()
            if st._cdata not in self._ignored:
                self._ignored.add(st._cdata)
                # a freed storage's address can be reused by a new one: forget it when it dies
                weakref.finalize(st, self._ignored.discard, st._cdata)

    def add(self, t) -> None:
        """Count ``t``'s storage as live from now (e.g. the input batch)."""
        self._track(t)
        self._bump()

    def _track(self, t) -> None:
        st = t.untyped_storage()
        key = st._cdata
        if key in self._sizes or key in self._ignored:
            return
        n = st.nbytes()
        self._sizes[key] = n
        for k, q in ROUNDING.items():
            self.live[k] += _round(n, q)
        weakref.finalize(st, self._free, key, n)

    def _free(self, key: int, n: int) -> None:
        if self._sizes.pop(key, None) is None:
            return
        for k, q in ROUNDING.items():
            self.live[k] -= _round(n, q)

    def _bump(self) -> None:
        for k in ROUNDING:
            if self.live[k] > self.peak[k]:
                self.peak[k] = self.live[k]

    def reset_peak(self) -> None:
        self.peak = dict(self.live)

    def mode(self):
        """A fresh dispatch mode feeding this tracker (enter it with ``with``); on meta tensors it
        also routes attention to the CPU kernel (see :func:`_cpu_sdp_choice`)."""
        from torch.overrides import TorchFunctionMode
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                return tracker._dispatch(func, args, kwargs or {})

        class _Attention(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if func is torch.nn.functional.scaled_dot_product_attention:
                    out = _sdpa_as_cpu(args, kwargs)
                    if out is not None:
                        return out
                return func(*args, **kwargs)

        import torch

        @contextlib.contextmanager
        def both():
            with _Mode(), _Attention():
                yield

        return both()

    def _dispatch(self, func, args, kwargs):

        out = func(*args, **kwargs)
        self.ops += 1
        for t in _tensors(out):
            self._track(t)
        self._bump()
        return out


def _tensors(out):
    import torch

    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, (tuple, list)):
        return [t for t in out if isinstance(t, torch.Tensor)]
    return ()


_SDP_CACHE: dict[tuple, int] = {}
#: ``SDPBackend.flash_attention``: what ``_fused_sdp_choice`` returns for CPU flash attention.
_FLASH = 1


def _sdpa_as_cpu(args, kwargs):
    """Meta tensors would take the math path of ``scaled_dot_product_attention`` (which saves
    the attention matrix); call the CPU flash kernel instead when a CPU run would."""
    import torch

    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
    bound = dict(zip(names, args))
    bound.update(kwargs)
    q = bound.get("query")
    if not isinstance(q, torch.Tensor) or q.device.type != "meta" or bound.get("enable_gqa"):
        return None
    dropout, causal = float(bound.get("dropout_p", 0.0) or 0.0), bool(bound.get("is_causal", False))
    mask = bound.get("attn_mask")
    if _cpu_sdp_choice((q, bound["key"], bound["value"], mask, dropout, causal), {}) != _FLASH:
        return None
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, bound["key"], bound["value"], dropout, causal, attn_mask=mask,
        scale=bound.get("scale"))[0]


def _cpu_sdp_choice(args, kwargs) -> int | None:
    """On meta tensors, ask the CPU build which attention kernel it would use for the same
    dtypes/head dims/mask/dropout/causal flags (tiny real tensors), instead of meta's math path."""
    import torch

    q, k, v = args[:3]
    if q.device.type != "meta":
        return None
    mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
    dropout = args[4] if len(args) > 4 else kwargs.get("dropout_p", 0.0)
    causal = args[5] if len(args) > 5 else kwargs.get("is_causal", False)
    gqa = kwargs.get("enable_gqa", False)
    key = (q.dtype, q.dim(), q.shape[-1], v.shape[-1], k.shape[-3] if k.dim() > 2 else 1,
           q.shape[-3] if q.dim() > 2 else 1, None if mask is None else mask.dtype, dropout > 0,
           bool(causal), bool(gqa))
    if key not in _SDP_CACHE:
        def tiny(t, heads):
            shape = [1] * (t.dim() - 1) + [t.shape[-1]]
            if t.dim() > 2:
                shape[-3] = heads
            return torch.zeros(shape, dtype=t.dtype)

        qh = q.shape[-3] if q.dim() > 2 else 1
        kh = k.shape[-3] if k.dim() > 2 else 1
        tq, tk, tv = tiny(q, qh), tiny(k, kh), tiny(v, kh)
        tm = None if mask is None else torch.zeros([1] * mask.dim(), dtype=mask.dtype)
        try:
            with torch.utils._python_dispatch._disable_current_modes():
                _SDP_CACHE[key] = int(torch.ops.aten._fused_sdp_choice.default(
                    tq, tk, tv, tm, float(dropout), bool(causal), enable_gqa=bool(gqa)))
        except Exception:  # noqa: BLE001 - fall back to what meta picks
            return None
    return _SDP_CACHE[key]


# --------------------------------------------------------------------------- tracing one step

@dataclass
class ActivationTrace:
    """One traced forward + backward at one batch size (see the module docstring). Byte figures
    are dicts keyed by allocator rounding: "raw", "cpu", "cuda"."""

    batch_size: int | None
    saved_bytes: int
    peak_bytes: dict[str, int]
    grad_bytes: dict[str, int]
    retained_bytes: dict[str, int]
    forward_bytes: dict[str, int]
    ops: int
    seconds: float
    mode: str

    def activation_bytes(self, allocator: str = "raw") -> int:
        """The step's peak beyond the parameter gradients (what a breakdown adds to weights +
        grads + state)."""
        return max(0, self.peak_bytes[allocator] - self.grad_bytes[allocator])


def _default_loss(out, target):
    import torch
    import torch.nn.functional as F

    loss = getattr(out, "loss", None)
    if loss is None and isinstance(out, Mapping):
        loss = out.get("loss")
    if loss is not None:
        return loss
    if not isinstance(out, torch.Tensor):
        first = out[0] if isinstance(out, (tuple, list)) else getattr(out, "last_hidden_state", None)
        if first is None and hasattr(out, "to_tuple"):
            first = out.to_tuple()[0]
        out = first
    if target is not None and out.dim() == 2 and target.dim() == 1:
        return F.cross_entropy(out.float(), target)
    return out.float().mean()


def _enable_checkpointing(module) -> None:
    if hasattr(module, "gradient_checkpointing_enable"):
        try:
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            return
        except Exception as e:  # noqa: BLE001
            raise PlanError(f"this model does not support gradient checkpointing ({e}); "
                            "drop --grad-checkpointing") from None
    if hasattr(module, "set_grad_checkpointing"):
        try:
            module.set_grad_checkpointing(True)
            return
        except Exception as e:  # noqa: BLE001
            raise PlanError(f"this model does not support gradient checkpointing ({e}); "
                            "drop --grad-checkpointing") from None
    raise PlanError("this model has no gradient-checkpointing switch (timm set_grad_checkpointing "
                    "or transformers gradient_checkpointing_enable); drop --grad-checkpointing")


def _to_fake(module, fake_mode):
    """Replace meta parameters/buffers by fake CPU tensors (tied weights stay tied)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensor

    memo: dict[int, Any] = {}
    for mod in module.modules():
        for name, p in list(mod._parameters.items()):
            if p is None:
                continue
            if id(p) not in memo:
                memo[id(p)] = torch.nn.Parameter(
                    FakeTensor(fake_mode, p.data.to("meta"), torch.device("cpu")),
                    requires_grad=p.requires_grad)
            mod._parameters[name] = memo[id(p)]
        for name, b in list(mod._buffers.items()):
            if b is None:
                continue
            if id(b) not in memo:
                memo[id(b)] = FakeTensor(fake_mode, b.to("meta"), torch.device("cpu"))
            mod._buffers[name] = memo[id(b)]


def _storage_bytes(tensors, q: int) -> int:
    seen, total = set(), 0
    for t in tensors:
        st = t.untyped_storage()
        if st._cdata not in seen:
            seen.add(st._cdata)
            total += _round(st.nbytes(), q)
    return total


def trace_step(module, example_inputs: Any, *, loss_fn: Callable | None = None,
               grad_checkpointing: bool = False, amp_dtype: Any = None,
               target: Any = None) -> ActivationTrace:
    """Run one forward + backward of ``module`` (on the meta device, its parameters without
    storage) and count what the step allocates; see the module docstring.

    ``example_inputs``: an :class:`InputSpec`, a dict of keyword inputs or a tuple of positional
    inputs (meta tensors). ``loss_fn(output, target) -> scalar`` defaults to the model's own
    ``loss`` if it returns one, cross entropy for ``(B, classes)`` logits with a target, else the
    mean of the first output. ``amp_dtype`` (``torch.bfloat16``/``torch.float16``) runs forward
    under CPU autocast on fake CPU tensors (autocast does not act on meta tensors). The module is
    put in train mode; parameter gradients are removed again afterwards."""
    import torch

    t0 = time.perf_counter()
    batch = None
    if isinstance(example_inputs, InputSpec):
        batch = example_inputs.batch_size
        args, kwargs, tgt = example_inputs.make("meta")
        target = tgt if target is None else target
    elif isinstance(example_inputs, Mapping):
        args, kwargs = (), dict(example_inputs)
    else:
        args, kwargs = tuple(example_inputs), {}
    module.train()
    if grad_checkpointing:
        _enable_checkpointing(module)
    mode_name = "meta"
    fake_ctx: Any = contextlib.nullcontext()
    if amp_dtype is not None:
        from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

        fake = FakeTensorMode(allow_non_fake_inputs=False)
        _to_fake(module, fake)

        def conv(t):
            return FakeTensor(fake, t.to("meta"), torch.device("cpu")) \
                if isinstance(t, torch.Tensor) else t

        args = tuple(conv(a) for a in args)
        kwargs = {k: conv(v) for k, v in kwargs.items()}
        target = conv(target)
        fake_ctx = fake
        mode_name = "fake"
    params = list(module.parameters())
    tracker = StorageTracker()
    tracker.ignore(params)
    tracker.ignore(module.buffers())
    for t in list(args) + list(kwargs.values()) + [target]:
        if isinstance(t, torch.Tensor):
            tracker.add(t)
    loss_fn = loss_fn or _default_loss
    amp = torch.autocast("cpu", dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    try:
        with fake_ctx, tracker.mode():
            with amp:
                out = module(*args, **kwargs)
                loss = loss_fn(out, target)
            forward = dict(tracker.live)
            saved_bytes = forward["raw"]
            loss.backward()
            del loss

            grads = [p.grad for p in params if p.grad is not None]
            grad_bytes = {k: _storage_bytes(grads, q) for k, q in ROUNDING.items()}
            retained = {k: max(0, tracker.live[k] - grad_bytes[k]) for k in ROUNDING}
    except PlanError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure is "cannot trace this model"
        msg = str(e).splitlines()[0] if str(e) else ""
        raise PlanError(f"could not trace a training step of {type(module).__name__} without data "
                        f"({type(e).__name__}: {msg[:200]}); activations cannot be estimated for it"
                        ) from None
    finally:
        for p in params:
            p.grad = None
    return ActivationTrace(batch, saved_bytes, dict(tracker.peak), grad_bytes, retained, forward,
                           tracker.ops, time.perf_counter() - t0, mode_name)


# --------------------------------------------------------------------------- affine model

@dataclass(frozen=True)
class Affine:
    """``fixed + per_sample · batch`` bytes."""

    fixed: int
    per_sample: int

    def at(self, batch: int) -> int:
        return max(0, self.fixed + self.per_sample * batch)

    @classmethod
    def through(cls, b1: int, y1: int, b2: int, y2: int) -> "Affine":
        """The line through two traced points; the slope is rounded up (never under-estimate a
        larger batch) and never negative."""
        per = max(0, math.ceil((y2 - y1) / (b2 - b1)))
        return cls(y1 - per * b1, per)


@dataclass
class ActivationModel:
    """Activation bytes (peak beyond gradients) and retained bytes as affine functions of the
    batch size, per allocator rounding, from two traces."""

    batches: tuple[int, int]
    activation: dict[str, Affine]
    retained: dict[str, Affine]
    saved: Affine
    traces: list[ActivationTrace] = field(default_factory=list, repr=False)
    input_spec: InputSpec | None = None

    def bytes_at(self, batch: int, allocator: str = "raw") -> int:
        """Activation bytes of a step at ``batch`` (peak beyond the gradients)."""
        return self.activation[allocator].at(batch)

    def retained_at(self, batch: int, allocator: str = "raw") -> int:
        """Bytes still held when backward returns (outputs, loss), besides the gradients."""
        return self.retained[allocator].at(batch)

    def saved_at(self, batch: int) -> int:
        return self.saved.at(batch)

    @property
    def seconds(self) -> float:
        return sum(t.seconds for t in self.traces)


#: the larger traced batch is at least this (tracing cost does not depend on the batch size).
TRACE_HIGH_BATCH = 32


def trace_batches(batch_size: int) -> tuple[int, int]:
    """The two batch sizes traced for a requested batch ``b``: ``(b, max(2b, 32))``.

    The requested batch is traced exactly. The step's peak is a maximum over moments of the step,
    each affine in the batch, so it is convex in the batch: the line through the two traces is an
    upper bound between them and approaches the true slope beyond (a line from batches 1 and 2 of
    a small CNN under-estimated batch 5 by 9%; through 1 and 32 it over-estimates batch 5 and
    is 2% under at batch 64)."""
    return (batch_size, max(2 * batch_size, TRACE_HIGH_BATCH))


def activation_model(module_factory: Callable[[], Any], input_spec: InputSpec, *,
                     batches: tuple[int, int] | None = None, loss_fn: Callable | None = None,
                     grad_checkpointing: bool = False, amp_dtype: Any = None) -> ActivationModel:
    """Trace at two batch sizes (default :func:`trace_batches` of ``input_spec.batch_size``) and
    fit the affine model. ``module_factory()`` returns a meta module; it is called once per trace
    when ``amp_dtype`` is set (the module is converted to fake tensors), once otherwise."""
    b1, b2 = batches or trace_batches(input_spec.batch_size)
    if not 0 < b1 < b2:
        raise ValueError("need two increasing batch sizes")
    module = module_factory()
    traces = []
    for b in (b1, b2):
        if amp_dtype is not None and traces:
            module = module_factory()
        traces.append(trace_step(module, input_spec.with_batch(b), loss_fn=loss_fn,
                                 grad_checkpointing=grad_checkpointing, amp_dtype=amp_dtype))
    t1, t2 = traces
    act = {k: Affine.through(b1, t1.activation_bytes(k), b2, t2.activation_bytes(k)) for k in ROUNDING}
    ret = {k: Affine.through(b1, t1.retained_bytes[k], b2, t2.retained_bytes[k]) for k in ROUNDING}
    saved = Affine.through(b1, t1.saved_bytes, b2, t2.saved_bytes)
    return ActivationModel((b1, b2), act, ret, saved, traces, input_spec)
