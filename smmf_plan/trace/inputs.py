"""What one training batch is, per task, and the loss a traced (or probed) step computes on it.

The batch is described without data (:class:`InputSpec`) from the model's own config, so the same
description builds meta tensors for the trace and real random tensors for the probe. A new kind of
model (vision transformers, contrastive image-text, speech) adds its task name here, the inputs
:meth:`InputSpec.make` builds for it and, if it needs one, its loss in :func:`default_loss`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import PlanError

# --------------------------------------------------------------------------- the task vocabulary
# One name per task, used everywhere: the sources (``ModelSpec.meta["task"]``), InputSpec, the
# probe and every JSON document.

#: ``x (B, C, H, W)`` + integer class ids; cross-entropy loss.
IMAGE_CLASSIFICATION = "image-classification"
#: ``input_ids`` + ``labels`` = the inputs, both ``(B, seq_len)``; the model's own loss.
CAUSAL_LM = "causal-lm"
#: as causal-lm (every position is a label).
MASKED_LM = "masked-lm"
#: ``input_ids`` + ``labels`` of the input length; the model derives ``decoder_input_ids``.
SEQ2SEQ_LM = "seq2seq-lm"
#: ``input_ids`` + ``labels (B,)``; the model's own loss.
SEQUENCE_CLASSIFICATION = "sequence-classification"
#: ``input_ids`` only (a bare encoder/decoder); the loss is the mean of the first output.
BASE = "base"
TASKS = (IMAGE_CLASSIFICATION, CAUSAL_LM, MASKED_LM, SEQ2SEQ_LM, SEQUENCE_CLASSIFICATION, BASE)
#: text tasks whose labels are the input tokens.
TOKEN_LABELS = (CAUSAL_LM, MASKED_LM, SEQ2SEQ_LM)


def check_task(text: str | None) -> str | None:
    """``text`` as a task name (``--task``; ``None`` stays ``None``); :class:`PlanError` naming
    the closest tasks otherwise."""
    import difflib

    if text is None:
        return None
    key = str(text).strip().lower()
    if key in TASKS:
        return key
    close = difflib.get_close_matches(key, TASKS, n=2, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise PlanError(f"--task {text!r} is not a task: {hint}use one of {', '.join(TASKS)}")

#: documented default sequence length for text models (or the model's maximum positions if less).
DEFAULT_SEQ_LEN = 128
#: default (C, H, W) when a timm model states no input size.
DEFAULT_IMAGE_SIZE = (3, 224, 224)


@dataclass(frozen=True)
class InputSpec:
    """What one training batch looks like; :meth:`make` builds it on any device. ``task`` is one
    of :data:`TASKS` (each constant documents its batch and loss)."""

    task: str
    batch_size: int
    input_size: tuple[int, ...] | None = None
    seq_len: int | None = None
    vocab_size: int | None = None
    num_classes: int | None = None
    #: floating dtype of image inputs (canonical name, e.g. "bfloat16"); None: float32.
    float_dtype: str | None = None

    @property
    def is_image(self) -> bool:
        return self.task == IMAGE_CLASSIFICATION

    def describe(self) -> str:
        if self.is_image:
            return f"batch {self.batch_size} · {'×'.join(map(str, self.input_size or ()))}"
        return f"batch {self.batch_size} · seq_len {self.seq_len}"

    def to_dict(self) -> dict[str, Any]:
        """``{"task", "batch_size", "input_size" | "seq_len"}``, as JSON documents report it."""
        d: dict[str, Any] = {"task": self.task, "batch_size": self.batch_size}
        if self.is_image:
            d["input_size"] = [int(x) for x in self.input_size]
        else:
            d["seq_len"] = int(self.seq_len)
        return d

    def with_batch(self, batch_size: int) -> "InputSpec":
        return InputSpec(self.task, batch_size, self.input_size, self.seq_len, self.vocab_size,
                         self.num_classes, self.float_dtype)

    def make(self, device: str = "meta", dtype: Any = None) -> tuple[tuple, dict, Any]:
        """``(args, kwargs, target)``: random values on a real device, none on meta. ``dtype``
        is the floating dtype of image inputs (default float32)."""
        import torch

        b = self.batch_size
        real = device != "meta"
        gen = torch.Generator().manual_seed(0)
        if self.is_image:
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
        if self.task in TOKEN_LABELS:
            kw["labels"] = kw["input_ids"].clone()
        elif self.task == SEQUENCE_CLASSIFICATION:
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


def _num_labels(cfg: dict) -> int | None:
    """A classifier's label count: ``num_labels`` in a config.json, ``id2label`` in a config
    object's ``to_dict()`` (which does not write ``num_labels``)."""
    n = cfg.get("num_labels")
    if isinstance(n, int) and n > 0:
        return n
    labels = cfg.get("id2label")
    return len(labels) if isinstance(labels, dict) and labels else None


def parse_input_size(text: str | int | Sequence[int], what: str = "--input-size") -> tuple[int, ...]:
    """An image input size as the command line and check configurations write it, as a (C, H, W)
    tuple of whole numbers ≥ 1: ``"3,224,224"``, ``"3x224x224"``, ``(3, 224, 224)``, or one
    number for a square RGB image (``224``, ``"224"`` → 3×224×224). ``what`` names the option
    in the error."""
    dims: tuple[Any, ...] = ()
    if isinstance(text, int) and not isinstance(text, bool):
        dims = (text,)
    elif isinstance(text, str):
        parts = [p.strip() for p in re.split(r"[x×,]", text)]
        if all(re.fullmatch(r"[0-9]+", p) for p in parts):
            dims = tuple(int(p) for p in parts)
    elif isinstance(text, (list, tuple)):
        dims = tuple(text)
    if len(dims) == 1:
        dims = (3, dims[0], dims[0])
    if len(dims) != 3 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise PlanError(f"{what} {text!r} is not C,H,W of whole numbers ≥ 1: give e.g. 3,224,224 "
                        "(or 224 for a square RGB image)")
    return dims


def input_spec_for(model: Any, batch_size: int, input_size: Sequence[int] | str | None = None,
                   seq_len: int | None = None) -> InputSpec:
    """The batch a training step of ``model`` (a :class:`~smmf_plan.model.ModelSpec` or an
    ``nn.Module``) consumes.

    Image models (timm): ``(B, C, H, W)`` with ``(C, H, W)`` from ``input_size`` or the model's
    ``pretrained_cfg["input_size"]`` (3×224×224 if it states none). Text models (transformers):
    ``seq_len`` tokens, default :data:`DEFAULT_SEQ_LEN` (128) or the config's maximum positions
    if smaller; the task (one of :data:`TASKS`) comes from the architecture."""
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
            # function-level: the sources import this module's task names (a cycle otherwise)
            from ..sources.hf_config import task_of

            task = task_of(arch, _config_of(model))
    if library == "transformers" and task == IMAGE_CLASSIFICATION:  # a transformers vision classifier
        cfg = _config_of(model)
        side = cfg.get("image_size") if isinstance(cfg.get("image_size"), int) else 224
        default_size = (int(cfg.get("num_channels") or 3), side, side)
        num_classes = _num_labels(cfg) or num_classes
        library = "timm"  # the same (B, C, H, W) + class-id batch
    if library == "timm" or (library is None and input_size is not None):
        size = parse_input_size(input_size) if input_size is not None else \
            tuple(default_size) if default_size else DEFAULT_IMAGE_SIZE
        return InputSpec(IMAGE_CLASSIFICATION, batch_size, input_size=tuple(int(s) for s in size),
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
    if task not in TOKEN_LABELS:
        task = SEQUENCE_CLASSIFICATION if "ForSequenceClassification" in arch else BASE
    return InputSpec(task, batch_size, seq_len=seq_len, vocab_size=_vocab(cfg),
                     num_classes=_num_labels(cfg) if task == SEQUENCE_CLASSIFICATION else None)


def default_loss(out, target):
    """The model's own ``loss`` if it returns one; cross entropy for ``(B, classes)`` logits with a
    target; else the mean of the first output."""
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
