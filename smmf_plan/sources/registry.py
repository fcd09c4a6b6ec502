"""Bundled transformers configs (real ``config.json`` values shipped as package data) and the
names that reach them, plus "did you mean" suggestions. Imports no torch."""

from __future__ import annotations

import difflib
import json
from functools import lru_cache
from importlib import resources

#: hub-style ids (and other common spellings) → bundled config name. Matching is case-insensitive.
ALIASES: dict[str, str] = {
    "google-bert/bert-base-uncased": "bert-base-uncased",
    "bert-base": "bert-base-uncased",
    "openai-community/gpt2": "gpt2",
    "gpt-2": "gpt2",
    "google-t5/t5-small": "t5-small",
    "t5_small": "t5-small",
    "facebookai/roberta-base": "roberta-base",
    "albert/albert-base-v2": "albert-base-v2",
    "facebook/bart-base": "bart-base",
    "distilbert/distilbert-base-uncased": "distilbert-base-uncased",
    "meta-llama/llama-2-7b-hf": "llama-2-7b",
    "meta-llama/llama-2-7b": "llama-2-7b",
    "llama-2-7b-hf": "llama-2-7b",
    "llama2-7b": "llama-2-7b",
    "llama-7b": "llama-2-7b",
}

#: where each bundled config came from (the hub repository whose config.json it reproduces).
HUB_IDS: dict[str, str] = {
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "gpt2": "openai-community/gpt2",
    "t5-small": "google-t5/t5-small",
    "roberta-base": "FacebookAI/roberta-base",
    "albert-base-v2": "albert/albert-base-v2",
    "bart-base": "facebook/bart-base",
    "distilbert-base-uncased": "distilbert/distilbert-base-uncased",
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
}


def _configs_dir():
    return resources.files("smmf_plan") / "data" / "configs"


@lru_cache(maxsize=1)
def bundled_models() -> list[str]:
    """Names of the bundled configs, sorted."""
    return sorted(p.name[: -len(".json")] for p in _configs_dir().iterdir() if p.name.endswith(".json"))


def resolve_bundled(name: str) -> str | None:
    """The bundled config name ``name`` refers to (directly or via an alias), or ``None``."""
    key = name.strip().lower()
    names = bundled_models()
    if key in names:
        return key
    if key in ALIASES:
        return ALIASES[key]
    return None


def bundled_config(name: str) -> dict:
    """The JSON dict of bundled config ``name`` (a name from :func:`bundled_models`)."""
    return json.loads((_configs_dir() / f"{name}.json").read_text(encoding="utf-8"))


def _timm_names() -> list[str]:
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is a dependency
        return []
    return list(timm.list_models())


def suggestions(name: str, n: int = 5) -> list[str]:
    """Close matches for an unknown model name among bundled configs, their aliases and timm's
    architectures (difflib ratio; case-insensitive)."""
    key = name.strip().lower()
    pool = list(dict.fromkeys(bundled_models() + list(ALIASES) + list(HUB_IDS.values()) + _timm_names()))
    lowered: dict[str, str] = {}
    for p in pool:
        lowered.setdefault(p.lower(), p)
    out = difflib.get_close_matches(key, list(lowered), n=n, cutoff=0.6)
    # also a prefix/substring hit ("resnet" → resnet18 ...) when difflib finds little
    if len(out) < n and len(key) >= 3:
        for low in lowered:
            if low.startswith(key) and low not in out:
                out.append(low)
                if len(out) >= n:
                    break
    return [lowered[o] for o in out]
