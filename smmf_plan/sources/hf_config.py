"""transformers configs → the architecture class they name, built on the meta device.

Which class is built: with ``task`` (``--task``), the head transformers' auto-mapping tables give
that task for the config's ``model_type``; otherwise the class named first in ``architectures``
(so a causal-LM config plans its LM head, a ``*ForMaskedLM`` config its MLM head). When that field
is missing or names a class this transformers does not have, the head the ``model_type`` is
trained with (:func:`default_head`) is built and a one-line warning with the closest class names
is recorded in ``info["warnings"]`` (a bare model would silently drop e.g. Llama-3.1-8B's 525 M-
parameter LM head). Parameters are built in the dtype the class's constructor builds (float32,
whatever the config says); the config's ``torch_dtype``/``dtype`` is recorded as
``meta["checkpoint_dtype"]``, the dtype the :class:`~smmf_plan.recipe.Recipe` then stores every
weight in by default (what ``from_pretrained`` loads). Configs needing remote code are refused.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any

from ..errors import SourceError
from ..quiet import quiet_libraries
from ..tasks import (
    BASE,
    CAUSAL_LM,
    CONTRASTIVE,
    IMAGE_CLASSIFICATION,
    MASKED_LM,
    QUESTION_ANSWERING,
    SEQ2SEQ_LM,
    SEQUENCE_CLASSIFICATION,
    SPEECH_SEQ2SEQ,
    TASKS,
    TOKEN_CLASSIFICATION,
)

#: task → transformers' auto-mapping table of the head for that task (model_type → class name).
TASK_MAPPINGS = {
    CAUSAL_LM: "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    MASKED_LM: "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    SEQ2SEQ_LM: "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    SEQUENCE_CLASSIFICATION: "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    TOKEN_CLASSIFICATION: "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
    QUESTION_ANSWERING: "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES",
    IMAGE_CLASSIFICATION: "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    SPEECH_SEQ2SEQ: "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
    CONTRASTIVE: "MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES",  # CLIP, SigLIP …
    BASE: "MODEL_MAPPING_NAMES",
}
assert set(TASK_MAPPINGS) == set(TASKS)


def is_timm_config(cfg: dict) -> bool:
    """timm hub repos ship a config.json with ``architecture`` (singular) and no ``model_type``."""
    return "model_type" not in cfg and isinstance(cfg.get("architecture"), str)


def task_of(arch: str | None, cfg: dict) -> str | None:
    """The task (:data:`smmf_plan.tasks.TASKS`) the class named ``arch`` trains for."""
    if not arch:
        return None
    for suffix, task in (("ForSequenceClassification", SEQUENCE_CLASSIFICATION),
                         ("ForTokenClassification", TOKEN_CLASSIFICATION),
                         ("ForQuestionAnswering", QUESTION_ANSWERING),
                         ("ForImageClassification", IMAGE_CLASSIFICATION)):
        if arch.endswith(suffix):
            return task
    if arch.endswith("ForConditionalGeneration") and "num_mel_bins" in cfg and cfg.get("is_encoder_decoder"):
        return SPEECH_SEQ2SEQ
    if arch.endswith(("ForCausalLM", "LMHeadModel")) and not cfg.get("is_encoder_decoder"):
        return CAUSAL_LM
    if arch.endswith(("ForMaskedLM", "ForPreTraining")):
        return MASKED_LM
    if arch.endswith(("ForConditionalGeneration", "ForSeq2SeqLM")) or (
        arch.endswith("LMHeadModel") and cfg.get("is_encoder_decoder")
    ):
        return SEQ2SEQ_LM if cfg.get("is_encoder_decoder") else None
    if arch.endswith("Model"):
        both = isinstance(cfg.get("text_config"), dict) and isinstance(cfg.get("vision_config"), dict)
        return CONTRASTIVE if both else BASE
    return None


def _drop_dtype(d: dict) -> None:
    """Forget the checkpoint's dtype (recorded as ``checkpoint_dtype``): transformers would build
    some modules in it (those made through ``from_config``) and others in float32."""
    for key in ("torch_dtype", "dtype"):
        d.pop(key, None)
    for v in d.values():
        if isinstance(v, dict):
            _drop_dtype(v)


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
    _drop_dtype(d)
    try:
        config = CONFIG_MAPPING[model_type].from_dict(d)
    except Exception as e:  # noqa: BLE001 - any config error is the user's file
        raise SourceError(f"{where}: transformers rejects this {model_type} config "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); fix the config") from None
    if num_classes is not None:
        config.num_labels = num_classes
    return config


def _mapping(table: str) -> dict:
    from transformers.models.auto import modeling_auto

    return getattr(modeling_auto, table, {})


def _first(value) -> str | None:
    """A mapping value is a class name or a tuple of them (the first is the default)."""
    if isinstance(value, (tuple, list)):
        value = value[0] if value else None
    return value if isinstance(value, str) else None


def head_for(model_type: str | None, task: str) -> str | None:
    """The class name transformers maps ``model_type`` to for ``task`` (None: no such head)."""
    return _first(_mapping(TASK_MAPPINGS[task]).get(model_type or ""))


def default_head(cfg: dict) -> tuple[str, str]:
    """``(class name, task)`` of the head ``cfg``'s model_type is trained with, from transformers'
    tables: its pretraining head (``MODEL_FOR_PRETRAINING_MAPPING``: BERT → BertForPreTraining,
    T5/BART → *ForConditionalGeneration, GPT-2 → GPT2LMHeadModel), else the seq2seq-LM head of an
    encoder-decoder, else the causal-LM head (decoder-only types: Llama, Mistral, Qwen …), else the
    masked-LM head, else the image-classification head, else the bare model."""
    mt = cfg.get("model_type")
    pre = _first(_mapping("MODEL_FOR_PRETRAINING_MAPPING_NAMES").get(mt or ""))
    if pre is not None:
        return pre, task_of(pre, cfg) or BASE
    order = ((SEQ2SEQ_LM, SPEECH_SEQ2SEQ, CAUSAL_LM) if cfg.get("is_encoder_decoder")
             else (CAUSAL_LM, SEQ2SEQ_LM)) + (MASKED_LM, IMAGE_CLASSIFICATION, CONTRASTIVE, BASE)
    for task in order:
        name = head_for(mt, task)
        if name is not None:
            return name, task
    raise SourceError(f"model_type {mt!r} has no model class in transformers; "
                      "use a supported architecture")


def class_names(model_type: str | None) -> list[str]:
    """Every transformers class the auto-mapping tables list for ``model_type``."""
    from transformers.models.auto import modeling_auto

    names: list[str] = []
    for table in dir(modeling_auto):
        if not table.endswith("_MAPPING_NAMES") or table == "CONFIG_MAPPING_NAMES":
            continue
        value = getattr(modeling_auto, table).get(model_type or "")
        for v in value if isinstance(value, (tuple, list)) else [value]:
            if isinstance(v, str) and v not in names:
                names.append(v)
    return names


def _transformers_class(name: str | None):
    import transformers

    if not name:
        return None
    try:
        cls = getattr(transformers, name, None)
    except Exception:  # noqa: BLE001 - a lazy import of an optional backend failed
        return None
    return cls if isinstance(cls, type) and hasattr(cls, "config_class") else None


def select_class(cfg: dict, task: str | None = None, *, where: str = "config.json"):
    """``(class, warning or None)``: what :func:`build` constructs for ``cfg`` (see the module
    docstring); the warning is one line saying what was built instead of ``architectures``."""
    mt = cfg.get("model_type")
    if task is not None:
        name = head_for(mt, task)
        if name is None:
            have = [t for t in TASKS if head_for(mt, t) is not None]
            raise SourceError(f"--task {task}: transformers has no {task} head for model_type "
                              f"{mt!r}; use one of: {', '.join(have) or 'none'}")
        cls = _transformers_class(name)
        if cls is None:
            raise SourceError(f"--task {task}: {name} is not in this transformers; upgrade "
                              "transformers or choose another --task")
        return cls, None
    archs = cfg.get("architectures") or []
    named = archs[0] if archs and isinstance(archs[0], str) else None
    cls = _transformers_class(named)
    if cls is not None:
        return cls, None
    name, head_task = default_head(cfg)
    cls = _transformers_class(name)
    if cls is None:
        raise SourceError(f"{where}: {name} is not in this transformers; upgrade transformers")
    if named:
        close = difflib.get_close_matches(named, class_names(mt), n=3, cutoff=0.6)
        why = (f"architectures names {named!r}, which this transformers does not have"
               + (f" (did you mean {', '.join(close)}?)" if close else ""))
    else:
        why = "it has no 'architectures' field"
    warning = (f"{where}: {why}; planned {name}, the {head_task} head model_type {mt!r} is "
               "trained with (choose another with --task " + "|".join(TASKS) + ")")
    return cls, warning


def build(cfg: dict, *, num_classes: int | None = None, device: str = "meta",
          where: str = "config.json", task: str | None = None, architecture: str | None = None):
    """``(module, info)`` for a config dict; ``info`` holds the JSON-able meta fields.

    ``architecture`` forces a class by name (rebuilding what an earlier plan built); otherwise
    :func:`select_class` decides from ``task`` and the config. What transformers logs while
    importing and building is kept off stderr (:mod:`smmf_plan.quiet`)."""
    with quiet_libraries():
        return _build(cfg, num_classes=num_classes, device=device, where=where, task=task,
                      architecture=architecture)


def _build(cfg: dict, *, num_classes: int | None, device: str, where: str, task: str | None,
           architecture: str | None):
    import torch

    config = make_config(cfg, num_classes=num_classes, where=where)
    warning = None
    if architecture is not None:
        cls = _transformers_class(architecture)
        if cls is None:
            raise SourceError(f"{where}: {architecture} is not in this transformers; "
                              "upgrade transformers")
    else:
        cls, warning = select_class(cfg, task, where=where)
    try:
        with torch.device(device):
            # the constructor, not from_config: from_config would switch to the config's dtype
            # for some classes only; every class is planned in the same (float32) dtype
            model = cls(config)
    except Exception as e:  # noqa: BLE001
        raise SourceError(f"{where}: could not build {cls.__name__} from this config "
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
    if warning is not None:
        info["warnings"] = [warning]
    ckdt = cfg.get("torch_dtype") or cfg.get("dtype")
    if isinstance(ckdt, str):
        info["checkpoint_dtype"] = ckdt
    return model, info
