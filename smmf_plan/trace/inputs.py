"""What one training batch is, per task, and the loss a traced (or probed) step computes on it.

The batch is described without data (:class:`InputSpec`) from the model's own config, so the same
description builds meta tensors for the trace and real random tensors for the probe. A new kind of
model (vision transformers, contrastive image-text, speech) adds its task name here, the inputs
:meth:`InputSpec.make` builds for it and, if it needs one, its loss in :func:`default_loss`.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from ..errors import PlanError, TraceError
from ..sources.hf_config import task_of
from ..tasks import (
    BASE,
    CONTRASTIVE,
    IMAGE_CLASSIFICATION,
    QUESTION_ANSWERING,
    SEQUENCE_CLASSIFICATION,
    SPEECH_SEQ2SEQ,
    TOKEN_CLASSIFICATION,
    TOKEN_LABELS,
)

#: documented default sequence length for text models (or the model's maximum positions if less).
DEFAULT_SEQ_LEN = 128
#: default (C, H, W) when a timm model states no input size.
DEFAULT_IMAGE_SIZE = (3, 224, 224)


@dataclass(frozen=True)
class InputSpec:
    """What one training batch looks like; :meth:`make` builds it on any device. ``task`` is one
    of :data:`smmf_plan.tasks.TASKS` (each constant documents its batch and loss)."""

    task: str
    batch_size: int
    #: (C, H, W) of images; (mel bins, frames) of speech features.
    input_size: tuple[int, ...] | None = None
    seq_len: int | None = None
    vocab_size: int | None = None
    num_classes: int | None = None
    #: floating dtype of image inputs (canonical name, e.g. "bfloat16"); None: float32.
    float_dtype: str | None = None
    #: the keyword of a transformers model's main input (:data:`MAIN_INPUTS`); None: a timm model,
    #: called positionally.
    main_input: str | None = None
    #: extra keyword arguments of the call (``interpolate_pos_encoding`` for a ViT at another size).
    extra: tuple[tuple[str, Any], ...] = ()
    #: a token id that is no special token of the model (no pad, bos, eos …): the value of every
    #: token of the traced batch (:meth:`values`), a batch without padding.
    plain_token: int = 0

    @property
    def is_image(self) -> bool:
        """Whether the main input is an image (the batch has no tokens unless contrastive)."""
        return self.task == IMAGE_CLASSIFICATION or self.main_input == "pixel_values"

    @property
    def has_tokens(self) -> bool:
        return self.seq_len is not None

    def describe(self) -> str:
        parts = []
        if self.main_input == "input_features":
            parts.append(f"{'×'.join(map(str, self.input_size or ()))} features")
        elif self.is_image or self.task == CONTRASTIVE:
            parts.append("×".join(map(str, self.input_size or ())))
        if self.seq_len is not None:
            parts.append(f"seq_len {self.seq_len}")
        return f"batch {self.batch_size} · " + " + ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """``{"task", "batch_size", "input_size" and/or "seq_len"}``, as JSON documents report it."""
        d: dict[str, Any] = {"task": self.task, "batch_size": self.batch_size}
        if self.input_size is not None:
            d["input_size"] = [int(x) for x in self.input_size]
        if self.seq_len is not None:
            d["seq_len"] = int(self.seq_len)
        return d

    def values(self) -> dict[str, Any]:
        """The CPU values of the integer inputs of :meth:`make` on meta: a clean batch of one
        plain token (no padding, no special tokens), labels and positions 0."""
        _, kw, _ = self.make("cpu", plain=True)
        return {k: v for k, v in kw.items()
                if hasattr(v, "is_floating_point") and not v.is_floating_point()}

    def with_batch(self, batch_size: int) -> "InputSpec":
        return replace(self, batch_size=batch_size)

    def make(self, device: str = "meta", dtype: Any = None, *, plain: bool = False
             ) -> tuple[tuple, dict, Any]:
        """``(args, kwargs, target)``: random values on a real device, none on meta. ``dtype``
        is the floating dtype of image and feature inputs (default float32). ``plain``: on the
        CPU, every token :attr:`plain_token`, every label and position 0, floats uninitialized
        (:meth:`values`)."""
        import torch

        b = self.batch_size
        real = device != "meta"
        gen = torch.Generator().manual_seed(0)
        dt = dtype or (getattr(torch, self.float_dtype) if self.float_dtype else torch.float32)

        def floats(shape):
            if plain:
                return torch.empty(*shape, dtype=dt)
            if real:
                return torch.randn(*shape, generator=gen).to(dt)
            return torch.empty(*shape, dtype=dt, device="meta")

        def ints(shape, high, token: bool = False):
            if plain:
                return torch.full(shape, self.plain_token if token else 0, dtype=torch.long)
            if real:
                return torch.randint(0, max(1, high or 2), shape, generator=gen)
            return torch.zeros(shape, dtype=torch.long, device="meta")

        if self.main_input is None:  # a timm image model: x, and a target for cross entropy
            return (floats((b, *self.input_size)),), {}, ints((b,), self.num_classes or 1)
        kw: dict[str, Any] = dict(self.extra)
        s = self.seq_len
        if self.main_input == "pixel_values" or self.task == CONTRASTIVE:
            kw["pixel_values"] = floats((b, *self.input_size))
        elif self.main_input == "input_features":
            kw["input_features"] = floats((b, *self.input_size))
        if self.main_input == "input_ids" or self.task == CONTRASTIVE:
            kw["input_ids"] = ints((b, s), self.vocab_size, token=True)
        if self.task in TOKEN_LABELS:
            kw["labels"] = kw["input_ids"].clone()
        elif self.task == SPEECH_SEQ2SEQ:
            kw["labels"] = ints((b, s), self.vocab_size, token=True)
        elif self.task in (SEQUENCE_CLASSIFICATION, IMAGE_CLASSIFICATION):
            kw["labels"] = ints((b,), self.num_classes)
        elif self.task == TOKEN_CLASSIFICATION:
            kw["labels"] = ints((b, s), self.num_classes)
        elif self.task == QUESTION_ANSWERING:
            kw["start_positions"] = ints((b,), s)
            kw["end_positions"] = ints((b,), s)
        elif self.task == CONTRASTIVE:
            kw["return_loss"] = True
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


def _max_positions(cfg: dict, keys: Sequence[str] | None = None) -> int | None:
    sub = [cfg] + [cfg[k] for k in ("text_config", "decoder", "encoder") if isinstance(cfg.get(k), dict)]
    if isinstance(cfg.get("text_config"), dict):
        sub = [cfg["text_config"], cfg]  # contrastive: the text tower's positions
    for c in sub:
        for key in keys or ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx"):
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


#: config keys naming special tokens (a plain token is none of them).
SPECIAL_TOKEN_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id",
                      "unk_token_id", "sep_token_id", "cls_token_id", "mask_token_id")


def _plain_token(cfg: dict) -> int:
    """The smallest token id that no special-token key of ``cfg`` (or its text config) names."""
    special: set[int] = set()
    for c in (cfg, cfg.get("text_config") or {}, cfg.get("decoder") or {}):
        if not isinstance(c, dict):
            continue
        for key in SPECIAL_TOKEN_KEYS:
            v = c.get(key)
            for x in (v if isinstance(v, list) else [v]):
                if isinstance(x, int) and not isinstance(x, bool):
                    special.add(x)
    token = 0
    while token in special:
        token += 1
    vocab = _vocab(cfg)
    return token if vocab is None or token < vocab else 0


def _main_input_of(cfg: dict) -> str:
    """The main input a transformers config's model takes, from the config alone (a ModelSpec has
    no module to ask ``main_input_name``)."""
    if "num_mel_bins" in cfg:
        return "input_features"
    if isinstance(cfg.get("text_config"), dict) and isinstance(cfg.get("vision_config"), dict):
        return "input_ids"  # contrastive: both, the text is the main input
    if "image_size" in cfg and "vocab_size" not in cfg:
        return "pixel_values"
    return "input_ids"


def _image_size_of(cfg: dict) -> tuple[int, int, int]:
    """(C, H, W) a transformers vision config describes (its ``vision_config`` for CLIP)."""
    c = cfg["vision_config"] if isinstance(cfg.get("vision_config"), dict) else cfg
    side = c.get("image_size", 224)
    h, w = (side, side) if isinstance(side, int) else tuple(side)[:2]
    return int(c.get("num_channels") or 3), int(h), int(w)


def _seq_len(cfg: dict, seq_len: int | None, limit_keys: Sequence[str] | None = None) -> int:
    limit = _max_positions(cfg, limit_keys)
    if seq_len is None:
        return min(DEFAULT_SEQ_LEN, limit) if limit else DEFAULT_SEQ_LEN
    if limit and seq_len > limit:
        raise PlanError(f"--seq-len {seq_len} exceeds the model's {limit} positions: give ≤ {limit}")
    return seq_len


def input_spec_for(model: Any, batch_size: int, input_size: Sequence[int] | str | None = None,
                   seq_len: int | None = None) -> InputSpec:
    """The batch a training step of ``model`` (a :class:`~smmf_plan.model.ModelSpec` or an
    ``nn.Module``) consumes.

    Image models (timm): ``(B, C, H, W)`` with ``(C, H, W)`` from ``input_size`` or the model's
    ``pretrained_cfg["input_size"]`` (3×224×224 if it states none). transformers models: the
    task (one of :data:`smmf_plan.tasks.TASKS`) from the architecture, the inputs from the main input and the
    config: images of the config's ``image_size``/``num_channels`` (or ``input_size``), speech
    features of its mel bins × the frames its encoder requires, ``seq_len`` tokens (default
    :data:`DEFAULT_SEQ_LEN`, 128, or the config's maximum positions if smaller)."""
    _check_positive(batch_size, "--batch-size")
    if seq_len is not None:
        _check_positive(seq_len, "--seq-len")
    meta = getattr(model, "meta", None)
    if meta is not None:  # a ModelSpec
        library, task, arch = meta.get("library"), meta.get("task"), meta.get("architecture") or ""
        default_size = meta.get("input_size")
        num_classes = meta.get("num_classes")
        cfg = _config_of(model)
        main = _main_input_of(cfg) if library == "transformers" else None
    else:
        cfg_obj = getattr(model, "pretrained_cfg", None)
        library = "timm" if cfg_obj is not None and not hasattr(model, "config") else "transformers"
        arch = type(model).__name__
        default_size = (cfg_obj or {}).get("input_size")
        pe_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
        if default_size and isinstance(pe_size, (tuple, list)) and len(pe_size) == 2:
            default_size = (default_size[0], *pe_size)  # built with img_size=...: that wins
        num_classes = getattr(model, "num_classes", None)
        task, cfg, main = None, {}, None
        if library == "transformers":
            cfg = _config_of(model)
            main = getattr(model, "main_input_name", None) or _main_input_of(cfg)
            if isinstance(cfg.get("text_config"), dict) and isinstance(cfg.get("vision_config"), dict):
                main = "input_ids"
    if library == "timm" or (library is None and input_size is not None):
        size = parse_input_size(input_size) if input_size is not None else \
            tuple(default_size) if default_size else DEFAULT_IMAGE_SIZE
        return InputSpec(IMAGE_CLASSIFICATION, batch_size, input_size=tuple(int(s) for s in size),
                         num_classes=num_classes)
    if library != "transformers":
        raise TraceError("no architecture to run for activations: the model comes from weights "
                        "without a config; put its config.json beside the weights")
    task = task_of(arch, cfg) or BASE
    if main == "pixel_values":
        if seq_len is not None:
            raise PlanError("--seq-len is for text models; use --input-size C,H,W for an image model")
        size = _image_size_of(cfg)
        extra: tuple[tuple[str, Any], ...] = ()
        if input_size is not None:
            given = tuple(parse_input_size(input_size))
            if given != size and "interpolate_pos_encoding" in _forward_params(model):
                extra = (("interpolate_pos_encoding", True),)
            size = given
        task = task if task in (IMAGE_CLASSIFICATION, BASE) else BASE
        return InputSpec(task, batch_size, input_size=size, main_input="pixel_values", extra=extra,
                         num_classes=_num_labels(cfg) if task == IMAGE_CLASSIFICATION else None)
    if main == "input_features":
        if input_size is not None:
            raise PlanError("--input-size is for image models; a speech model's input features are "
                            "fixed by its config (use --seq-len for the label tokens)")
        frames = 2 * int(cfg.get("max_source_positions") or 1500)
        features = (int(cfg.get("num_mel_bins") or 80), frames)
        s = _seq_len(cfg, seq_len, ("max_target_positions",))
        return InputSpec(SPEECH_SEQ2SEQ if task == SPEECH_SEQ2SEQ else BASE, batch_size,
                         input_size=features, seq_len=s, vocab_size=_vocab(cfg),
                         main_input="input_features", plain_token=_plain_token(cfg))
    if main != "input_ids":
        raise TraceError(f"{arch} takes {main!r} as its input, for which no synthetic batch is built "
                        "(images, speech features and token ids are): activations cannot be "
                        "estimated for it")
    size = None
    if task == CONTRASTIVE:
        size = tuple(parse_input_size(input_size)) if input_size is not None else _image_size_of(cfg)
    elif input_size is not None:
        raise PlanError("--input-size is for image models; use --seq-len for text models")
    s = _seq_len(cfg, seq_len)
    num = _num_labels(cfg) if task in (SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION) else None
    return InputSpec(task, batch_size, input_size=size, seq_len=s, vocab_size=_vocab(cfg),
                     num_classes=num, main_input="input_ids", plain_token=_plain_token(cfg))


def _forward_params(model: Any) -> frozenset[str]:
    forward = getattr(model, "forward", None)
    try:
        return frozenset(inspect.signature(forward).parameters) if forward else frozenset()
    except (TypeError, ValueError):
        return frozenset()


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
