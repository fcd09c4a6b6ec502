"""Resolve a source string to a :class:`ModelSpec` (see :func:`load_model`)."""

from __future__ import annotations

import os
from typing import Any, Sequence

from ..errors import PlanError, SourceError
from ..model import ModelSpec
from ..tasks import IMAGE_CLASSIFICATION, check_task
from . import cache, hf_config, hub, registry, timm_source
from .checkpoint import (
    WEIGHT_SUFFIXES,
    StoredTensor,
    find_weights,
    read_weights,
    specs_by_architecture,
    specs_by_heuristics,
)
from .hf_config import is_timm_config
from .lora import apply_lora
from .module import specs_from_module
from .safetensors_header import read_json
from .select import select_targets, select_trainable

_META_KEYS = ("library", "architecture", "task", "input_size", "num_classes", "config", "timm_name")


def _meta(info: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {k: None for k in _META_KEYS}
    meta.update(info or {})
    meta.update(extra)
    return meta


def _read_json(path: str) -> dict:
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise SourceError(f"{path}: expected a JSON object; point at a model's config.json")
    return doc


def _build(cfg: dict, *, num_classes: int | None, device: str, where: str,
           task: str | None = None, architecture: str | None = None):
    """``(module, info)`` from a config dict: timm-style or transformers-style."""
    if is_timm_config(cfg):
        _timm_task(task)

        nc = num_classes if num_classes is not None else cfg.get("num_classes")
        model, info = timm_source.build(cfg["architecture"], num_classes=nc, device=device)
        info["config"] = cfg
        return model, info
    return hf_config.build(cfg, num_classes=num_classes, device=device, where=where, task=task,
                           architecture=architecture)


def _timm_task(task: str | None) -> None:
    if task not in (None, IMAGE_CLASSIFICATION):
        raise PlanError(f"--task {task}: timm models are image classifiers; drop --task "
                        f"or give --task {IMAGE_CLASSIFICATION}")


def _from_module(name: str, source: str, model, info: dict) -> ModelSpec:
    n_buf = sum(1 for _ in model.buffers())
    return ModelSpec(name, source, specs_from_module(model), _meta(info, buffers=n_buf))


def _from_checkpoint(name: str, kind: str, tensors: list[StoredTensor], cfg: dict | None,
                     num_classes: int | None, where: str, weights: str,
                     task: str | None = None) -> ModelSpec:
    if not tensors:
        raise SourceError(f"{weights}: holds no tensors; point at the model's weights")
    if cfg is not None:
        model, info = _build(cfg, num_classes=num_classes, device="meta", where=where, task=task)
        got = specs_by_architecture(tensors, model, where, new_head=num_classes is not None)
        if got is not None:
            params, extra = got
            return ModelSpec(name, kind, params, _meta(info, weights=weights, **extra))
        params, extra = specs_by_heuristics(tensors)
        return ModelSpec(name, kind, params, _meta(
            {"library": info.get("library")}, weights=weights,
            config_ignored=f"{where} does not describe these weights", **extra))
    if num_classes is not None or task is not None:
        flag = "--num-classes" if num_classes is not None else "--task"
        raise PlanError(f"{flag} needs an architecture but {weights} has no config.json "
                        f"beside it: add the model's config.json or drop {flag}")
    params, extra = specs_by_heuristics(tensors)
    return ModelSpec(name, kind, params, _meta(weights=weights, **extra))


def _kind_of(weights: str) -> str:
    return "safetensors" if ".safetensors" in os.path.basename(weights) else "state_dict"


def _from_path(path: str, num_classes: int | None, task: str | None = None) -> ModelSpec:
    path = os.path.abspath(path)
    if os.path.isdir(path):
        name = os.path.basename(path.rstrip(os.sep)) or path
        cfg_path = os.path.join(path, "config.json")
        cfg_path = cfg_path if os.path.isfile(cfg_path) else None
        weights = find_weights(path)
        if cfg_path is None and weights is None:
            raise SourceError(f"{path}: directory has neither config.json nor weights "
                              f"({', '.join(WEIGHT_SUFFIXES)}, *.index.json); point at a model "
                              "directory saved with save_pretrained or at a weights file")
    else:
        base = os.path.basename(path)
        # the file, with its folder for context (".../llama/model.safetensors" →
        # "llama/model.safetensors"): a file is not the folder it lies in
        folder = os.path.basename(os.path.dirname(path))
        name = f"{folder}/{base}" if folder else base
        cfg_path = weights = None
        if base.endswith(".index.json") or base.endswith(WEIGHT_SUFFIXES):
            weights = path
            beside = os.path.join(os.path.dirname(path), "config.json")
            cfg_path = beside if os.path.isfile(beside) else None
        elif base.endswith(".json"):
            doc = _read_json(path)
            if "weight_map" in doc:
                weights = path
            else:
                cfg_path = path
        else:
            raise SourceError(f"{path}: unknown file type; use a .safetensors, *.index.json, "
                              ".pt/.pth/.bin or config.json file, or a model directory")
    cfg = _read_json(cfg_path) if cfg_path else None
    if weights is not None:
        return _from_checkpoint(name, _kind_of(weights), read_weights(weights), cfg, num_classes,
                                cfg_path or "config.json", weights, task)
    model, info = _build(cfg, num_classes=num_classes, device="meta", where=cfg_path, task=task)
    return _from_module(name, "config", model, info)


def _from_hub(repo_id: str, num_classes: int | None, task: str | None = None) -> ModelSpec:
    kind, got = hub.fetch(repo_id)
    repo_id = repo_id.removeprefix("hf-hub:")
    if kind == "config":
        cfg = _read_json(got)
        model, info = _build(cfg, num_classes=num_classes, device="meta",
                             where=f"{repo_id}/config.json", task=task)
        spec = _from_module(repo_id, "hub", model, info)
        spec.meta["hub_id"] = repo_id
        return spec
    tensors = [StoredTensor(e.name, e.dtype, e.shape) for entries in got.values() for e in entries]
    spec = _from_checkpoint(repo_id, "hub", tensors, None, num_classes, "", f"hf://{repo_id}", task)
    spec.meta["hub_id"] = repo_id
    return spec


def _looks_like_path(source: str) -> bool:
    s = source.strip()
    return (s.startswith(("/", "./", "../", "~", ".\\")) or s.endswith(WEIGHT_SUFFIXES + (".json",))
            or s.count("/") > 1 or os.sep in s and os.sep != "/")


def _unknown(source: str) -> SourceError:
    sugg = registry.suggestions(source)
    hint = f"did you mean {', '.join(sugg)}?" if sugg else \
        "use a timm name, a bundled name (smmf-plan models), a model directory or file, or owner/name on the hub"
    return SourceError(f"unknown model {source!r}: {hint}")


def resolve(source: str, num_classes: int | None = None, task: str | None = None) -> ModelSpec:
    """The base spec of ``source`` (every parameter trainable), without the cache; ``task``
    chooses the head built from a transformers config (:data:`smmf_plan.tasks.TASKS`)."""
    if not isinstance(source, str) or not source.strip():
        raise SourceError("empty model name: give a timm name, bundled name, path or hub id")
    path = os.path.expanduser(source)
    if os.path.exists(path):
        return _from_path(path, num_classes, task)
    bundled = registry.resolve_bundled(source)
    if bundled is not None:
        model, info = hf_config.build(registry.bundled_config(bundled), num_classes=num_classes,
                                      where=f"bundled config {bundled}", task=task)
        spec = _from_module(bundled, "transformers", model, info)
        spec.meta["hub_id"] = registry.HUB_IDS.get(bundled)
        return spec
    if _looks_like_path(source):
        raise SourceError(f"{source}: no such file or directory; check the path")
    if source.startswith("hf-hub:") or source.lower().startswith("timm/"):
        return _from_hub(source, num_classes, task)
    if timm_source.is_timm_name(source):
        _timm_task(task)
        model, info = timm_source.build(source, num_classes=num_classes)
        return _from_module(source, "timm", model, info)
    if hub.looks_like_hub_id(source):
        return _from_hub(source, num_classes, task)
    raise _unknown(source)


def load_model(source: str, *, num_classes: int | None = None, trainable: Sequence[str] = (),
               freeze: Sequence[str] = (), lora_rank: int | None = None,
               lora_targets: Sequence[str] = (), targets: Sequence[str] = (),
               use_cache: bool = True, task: str | None = None) -> ModelSpec:
    """Resolve ``source`` to parameter specs without allocating weights; see the package docstring.
    ``task`` (:data:`smmf_plan.tasks.TASKS`) chooses the head built from a transformers
    config."""
    task = check_task(task)
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise PlanError(f"--num-classes must be a positive integer, got {num_classes!r}")
    trainable, freeze, lora_targets = tuple(trainable), tuple(freeze), tuple(lora_targets)
    targets = tuple(targets)
    if lora_rank is not None and not lora_targets:
        raise PlanError("--lora-rank needs --lora-targets: add e.g. --lora-targets q_proj,v_proj")
    if lora_rank is None and lora_targets:
        raise PlanError("--lora-targets needs --lora-rank: add e.g. --lora-rank 8")
    options = {"num_classes": num_classes, "trainable": list(trainable), "freeze": list(freeze),
               "lora_rank": lora_rank, "lora_targets": list(lora_targets), "targets": list(targets),
               "task": task}
    key = cache.make_key(source, options) if use_cache else None
    if key is not None:
        hit = cache.get(key)
        if hit is not None:
            hit.meta["cache"] = "hit"
            return hit
    spec = resolve(source, num_classes, task)
    params = spec.params
    if lora_rank is not None:
        params = apply_lora(params, lora_rank, lora_targets)
        spec.meta["lora"] = {"rank": lora_rank, "targets": list(lora_targets)}
    if trainable or freeze:
        params = select_trainable(params, trainable, freeze, keep_trainable=lora_rank is not None)
    if targets:
        params = select_targets(params, targets)
    spec.params = params
    spec.meta["target_globs"] = list(targets)
    spec.meta["trainable_globs"] = list(trainable)
    spec.meta["freeze_globs"] = list(freeze)
    if key is not None:
        cache.put(key, spec)
        spec.meta["cache"] = "miss"
    return spec


NO_ARCHITECTURE = ("a checkpoint without config.json has no architecture to build; put the "
                   "model's config.json beside the weights")


def has_architecture(model: ModelSpec) -> bool:
    """Whether :func:`build_module` can build ``model`` (decided without importing torch)."""
    meta = model.meta or {}
    return bool(meta.get("library") == "timm" and meta.get("timm_name")) or \
        isinstance(meta.get("config"), dict)


def build_module(model: ModelSpec, device: str = "meta"):
    """The ``nn.Module`` behind a spec (random init on ``"cpu"``, no storage on ``"meta"``).
    LoRA adapters and trainable selections are not applied to the module."""
    meta = model.meta or {}
    if meta.get("library") == "timm" and meta.get("timm_name"):
        module, _ = timm_source.build(meta["timm_name"], num_classes=meta.get("num_classes"),
                                      device=device)
        return module
    if isinstance(meta.get("config"), dict):
        arch = meta.get("architecture") if meta.get("library") == "transformers" else None
        module, _ = _build(meta["config"], num_classes=None, device=device,
                           where=f"config of {model.name}", architecture=arch)
        return module
    raise SourceError(f"{model.name}: {NO_ARCHITECTURE}")
