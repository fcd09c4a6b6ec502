"""transformers configs → the architecture class they name, built on the meta device.

Assumptions: the class named first in ``architectures`` is the one that will be trained (so a
causal-LM config plans its LM head, a ``*ForMaskedLM`` config its MLM head); when that field is
missing or names a class this transformers does not have, ``AutoModel`` is used. Parameters are
planned in the dtype ``from_config`` builds (float32); the config's ``torch_dtype``/``dtype`` is
recorded as ``meta["checkpoint_dtype"]``. Configs needing remote code are refused.
"""

from __future__ import annotations

import copy
from typing import Any

from ..errors import SourceError
from ..trace.inputs import BASE, CAUSAL_LM, MASKED_LM, SEQ2SEQ_LM


def is_timm_config(cfg: dict) -> bool:
    """timm hub repos ship a config.json with ``architecture`` (singular) and no ``model_type``."""
    return "model_type" not in cfg and isinstance(cfg.get("architecture"), str)


def task_of(arch: str | None, cfg: dict) -> str | None:
    if not arch:
        return None
    if arch.endswith(("ForCausalLM", "LMHeadModel")) and not cfg.get("is_encoder_decoder"):
        return CAUSAL_LM
    if arch.endswith(("ForMaskedLM", "ForPreTraining")):
        return MASKED_LM
    if arch.endswith(("ForConditionalGeneration", "ForSeq2SeqLM")) or (
        arch.endswith("LMHeadModel") and cfg.get("is_encoder_decoder")
    ):
        return SEQ2SEQ_LM if cfg.get("is_encoder_decoder") else None
    if arch.endswith("Model"):
        return BASE
    return None


def make_config(cfg: dict, *, num_classes: int | None = None, where: str = "config.json"):
    """A transformers ``PretrainedConfig`` from a config.json dict (``num_classes`` → num_labels)."""
    import transformers
    from transformers import CONFIG_MAPPING

    model_type = cfg.get("model_type")
    if not model_type:
        raise SourceError(f"{where} has no model_type: it is not a transformers config; "
                          "point at the model's config.json written by save_pretrained")
    if model_type not in CONFIG_MAPPING:
        raise SourceError(f"{where}: model_type {model_type!r} is unknown to transformers "
                          f"{transformers.__version__} (custom code is not run): upgrade transformers "
                          "or use a supported architecture")
    d = copy.deepcopy(cfg)
    d.pop("auto_map", None)
    try:
        config = CONFIG_MAPPING[model_type].from_dict(d)
    except Exception as e:  # noqa: BLE001 - any config error is the user's file
        raise SourceError(f"{where}: transformers rejects this {model_type} config "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); fix the config") from None
    if num_classes is not None:
        config.num_labels = num_classes
    return config


def architecture_class(cfg: dict):
    """``(class or None, name)``: the transformers class ``architectures[0]`` names, or ``None`` to
    fall back to ``AutoModel``."""
    import transformers

    archs = cfg.get("architectures") or []
    name = archs[0] if archs and isinstance(archs[0], str) else None
    cls = getattr(transformers, name, None) if name else None
    if cls is not None and not (isinstance(cls, type) and hasattr(cls, "config_class")):
        cls = None
    return cls, name


def build(cfg: dict, *, num_classes: int | None = None, device: str = "meta",
          where: str = "config.json"):
    """``(module, info)`` for a config dict; ``info`` holds the JSON-able meta fields."""
    import torch
    from transformers import AutoModel

    config = make_config(cfg, num_classes=num_classes, where=where)
    cls, named = architecture_class(cfg)
    try:
        with torch.device(device):
            model = cls(config) if cls is not None else AutoModel.from_config(config)
    except Exception as e:  # noqa: BLE001
        raise SourceError(f"{where}: could not build {named or 'AutoModel'} from this config "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                          "check the config values") from None
    arch = type(model).__name__
    info: dict[str, Any] = {
        "library": "transformers",
        "architecture": arch,
        "task": task_of(arch, cfg),
        "num_classes": getattr(config, "num_labels", None) if "ForSequenceClassification" in arch
        or "ForTokenClassification" in arch or num_classes is not None else None,
        "config": cfg if num_classes is None else {**cfg, "num_labels": num_classes},
        "timm_name": None,
        "model_type": cfg.get("model_type"),
    }
    if named and cls is None:
        info["architecture_fallback"] = f"{named} not in transformers; used AutoModel"
    ckdt = cfg.get("torch_dtype") or cfg.get("dtype")
    if isinstance(ckdt, str):
        info["checkpoint_dtype"] = ckdt
    return model, info
