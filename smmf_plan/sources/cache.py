"""The shape cache: a resolved :class:`ModelSpec` stored as JSON so a repeated plan starts without
importing torch, timm or transformers.

Location: ``$SMMF_PLAN_CACHE_DIR``, else ``$XDG_CACHE_HOME/smmf-plan``, else ``~/.cache/smmf-plan``
(entries under ``specs/``). The key hashes the source string, the load options, the installed
versions of smmf-plan/torch/timm/transformers (read with importlib.metadata, which imports none of
them) and, for local paths, the path, size and mtime_ns of the files that could feed the spec (the
path itself and the weight/config files beside or inside it). Writes are atomic (temporary file +
``os.replace``); an unreadable or corrupt entry is ignored and rebuilt. Any OS error while caching is
swallowed: the cache is an accelerator, never a requirement.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from importlib import metadata
from typing import Any

from ..atomic import write_json_atomic
from ..model import SPEC_FORMAT, ModelSpec
from . import registry

CACHE_VERSION = 2  # 2: configs without architectures build their task head
_PACKAGES = ("smmf-plan", "torch", "timm", "transformers", "safetensors", "huggingface_hub")
_RELEVANT = (".json", ".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def cache_dir() -> str:
    env = os.environ.get("SMMF_PLAN_CACHE_DIR")
    if env:
        return os.path.expanduser(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = os.path.expanduser(xdg) if xdg else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "smmf-plan")


def versions() -> dict[str, str | None]:
    """The installed versions of :data:`_PACKAGES` (read once per process: each read parses the
    package's metadata, and a plan keys one cache entry per candidate recipe)."""
    return dict(_versions())


@functools.cache
def _versions() -> tuple[tuple[str, str | None], ...]:
    out: list[tuple[str, str | None]] = []
    for pkg in _PACKAGES:
        try:
            out.append((pkg, metadata.version(pkg)))
        except metadata.PackageNotFoundError:
            out.append((pkg, None))
    return tuple(out)


def _stat(path: str) -> list[Any]:
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def fingerprint(source: str) -> list[Any] | None:
    """Stats of the local files a path source may read (``None`` when ``source`` is no path)."""
    path = os.path.expanduser(source)
    if not os.path.exists(path):
        return None
    try:
        folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        stats = [_stat(path)]
        names = sorted(os.listdir(folder))[:5000]
        for n in names:
            p = os.path.join(folder, n)
            if n.endswith(_RELEVANT) and os.path.isfile(p):
                stats.append(_stat(p))
        return stats
    except OSError:
        return None


def _bundled_digest(source: str) -> str | None:
    name = registry.resolve_bundled(source)
    if name is None:
        return None
    return hashlib.sha256((registry._configs_dir() / f"{name}.json").read_bytes()).hexdigest()


def make_key(source: str, options: dict[str, Any]) -> str:
    material = {
        "bundled": _bundled_digest(source),
        "cache": CACHE_VERSION, "spec_format": SPEC_FORMAT, "source": source,
        "options": options, "versions": versions(), "files": fingerprint(source),
        "env": {k: os.environ.get(k) for k in ("HF_ENDPOINT",)},
    }
    blob = json.dumps(material, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _entry(key: str) -> str:
    return os.path.join(cache_dir(), "specs", f"{key}.json")


def get(key: str) -> ModelSpec | None:
    try:
        with open(_entry(key), "rb") as f:
            doc = json.load(f)
        if doc.get("key") != key:
            return None
        return ModelSpec.from_dict(doc["spec"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def store_json(path: str, doc: Any) -> None:
    """Store a cache entry (compact JSON, written atomically). A cache is an accelerator, never a
    requirement: a failed write is ignored, here and only here."""
    try:
        write_json_atomic(path, doc, indent=None, make_dirs=True)
    except (OSError, TypeError, ValueError):
        pass


def put(key: str, spec: ModelSpec) -> None:
    store_json(_entry(key), {"key": key, "spec": spec.to_dict()})
