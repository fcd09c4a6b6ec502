"""One traced forward + backward at one batch size (see :mod:`smmf_plan.trace`)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..allocators import QUANTUM as ROUNDING
from ..allocators.sequence import StepLog
from ..errors import PlanError, TraceError
from ..quiet import quiet_libraries
from .inputs import InputSpec, default_loss
from .storage import StorageTracker, storage_bytes


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
    #: every block the step allocated and freed, in order (for allocator models to replay).
    log: StepLog | None = None

    def activation_bytes(self, allocator: str = "raw") -> int:
        """The step's peak beyond the parameter gradients (what a breakdown adds to weights +
        grads + state)."""
        return max(0, self.peak_bytes[allocator] - self.grad_bytes[allocator])



def _enable_checkpointing(module) -> None:
    """Switch recomputation on as a training script would: transformers'
    ``activation_checkpointing_enable`` (``gradient_checkpointing_enable`` before transformers 5),
    non-reentrant ``torch.utils.checkpoint``, the KV cache off (it is off in training with
    checkpointing anyway); timm's ``set_grad_checkpointing``."""
    enable = getattr(module, "activation_checkpointing_enable", None)
    kwargs = {"activation_checkpointing_kwargs": {"use_reentrant": False}}
    if enable is None and hasattr(module, "gradient_checkpointing_enable"):
        enable, kwargs = module.gradient_checkpointing_enable, {
            "gradient_checkpointing_kwargs": {"use_reentrant": False}}
    if enable is not None:
        config = getattr(module, "config", None)
        if getattr(config, "use_cache", None):
            config.use_cache = False
        try:
            enable(**kwargs)
            return
        except Exception as e:  # noqa: BLE001
            raise PlanError(f"this model does not support gradient checkpointing "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
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



def trace_step(module, example_inputs: Any, *, loss_fn: Callable | None = None,
               grad_checkpointing: bool = False, amp_dtype: Any = None,
               target: Any = None, accumulate: bool = False,
               offload_grads_from: int | None = None) -> ActivationTrace:
    """Run one forward + backward of ``module`` (on the meta device, its parameters without
    storage) and count what the step allocates; see the module docstring.

    ``example_inputs``: an :class:`InputSpec`, a dict of keyword inputs or a tuple of positional
    inputs (meta tensors). ``loss_fn(output, target) -> scalar`` defaults to the model's own
    ``loss`` if it returns one, cross entropy for ``(B, classes)`` logits with a target, else the
    mean of the first output. ``amp_dtype`` (``torch.bfloat16``/``torch.float16``) runs forward
    under CPU autocast on fake CPU tensors (autocast does not act on meta tensors). The module is
    put in train mode; parameter gradients are removed again afterwards.

    ``accumulate``: trace a later micro-step of gradient accumulation — every trainable
    parameter's gradient exists before forward (backward adds into it, each new gradient a
    transient). ``offload_grads_from``: free each gradient of a parameter of at least that many
    elements as soon as it is accumulated (offloaded to the host, torchao's
    ``offload_gradients``)."""
    import torch


    t0 = time.perf_counter()
    batch = None
    known: dict[str, Any] = {}
    if isinstance(example_inputs, InputSpec):
        batch = example_inputs.batch_size
        args, kwargs, tgt = example_inputs.make("meta")
        target = tgt if target is None else target
        known = example_inputs.values()
    elif isinstance(example_inputs, Mapping):
        args, kwargs = (), dict(example_inputs)
    else:
        args, kwargs = tuple(example_inputs), {}
    module.train()
    if grad_checkpointing:
        with quiet_libraries():
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
    # repeated operators answered from their outputs' metadata seen before (trace/opcache.py)
    tracker = StorageTracker(log=True, reuse=True)
    tracker.ignore(params)
    tracker.ignore(module.buffers())
    for t in list(args) + list(kwargs.values()) + [target]:
        if isinstance(t, torch.Tensor):
            tracker.add(t)
    for key, value in known.items():  # the batch's token ids and labels: a clean batch
        tracker.know(kwargs[key], value)
    loss_fn = loss_fn or default_loss
    amp = torch.autocast("cpu", dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    trainable = [p for p in params if p.requires_grad]
    hooks = []
    if offload_grads_from is not None:
        def drop(p):
            p.grad = None

        hooks = [p.register_post_accumulate_grad_hook(drop) for p in trainable
                 if p.numel() >= offload_grads_from]
    try:
        with fake_ctx, tracker.mode(), quiet_libraries():
            if accumulate:
                for p in trainable:
                    p.grad = torch.zeros_like(p)
            with amp:
                out = module(*args, **kwargs)
                loss = loss_fn(out, target)
            forward = dict(tracker.live)
            forward_end = len(tracker.log)
            saved_bytes = forward["raw"]
            loss.backward()
            del loss

            grads = [p.grad for p in params if p.grad is not None]
            grad_bytes = {k: storage_bytes(grads, q) for k, q in ROUNDING.items()}
            retained = {k: max(0, tracker.live[k] - grad_bytes[k]) for k in ROUNDING}
            grad_ids = {tracker.block_id(g) for g in grads} - {None}
            log = StepLog(tuple(tracker.log), tuple(sorted(grad_ids)),
                          tuple(sorted(tracker.live_blocks() - grad_ids)), forward_end)
    except PlanError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure is "cannot trace this model"
        msg = str(e).splitlines()[0] if str(e) else ""
        hint = ""
        if "autocast::prioritize" in msg:  # an op of autocast's promote list met fp16 and bf16
            hint = ("; torch's autocast refused to mix the two half-precision dtypes in the "
                    "model's own code: store the weights in the --amp dtype (--dtype) or pick the "
                    "--amp dtype they are stored in")
        raise TraceError(f"could not trace a training step of {type(module).__name__} without data "
                        f"({type(e).__name__}: {msg[:200]}); activations cannot be estimated for it"
                        + hint) from None
    finally:
        for h in hooks:
            h.remove()
        for p in params:
            p.grad = None
    return ActivationTrace(batch, saved_bytes, dict(tracker.peak), grad_bytes, retained, forward,
                           tracker.ops, time.perf_counter() - t0, mode_name, log)

