"""Checkpoints → parameter specs: safetensors headers (single or sharded) and torch state dicts.

Never reads tensor data: safetensors files are parsed header-only; torch files are loaded with
``torch.load(weights_only=True, mmap=True, map_location="cpu")`` (a plain CPU load for legacy
non-zip files, which cannot be memory-mapped), so nothing in a pickle can run code and no tensor
bytes are read for zip checkpoints.

Tensors that share storage (same storage, offset, shape and stride) are one parameter with aliases,
as the optimizer would see them. Buffers are dropped (they get no optimizer state): decided by the
architecture when a config is at hand, otherwise by :mod:`.buffers`.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, Hashable

from .. import dtypes
from ..errors import SourceError
from ..shapes import ParamSpec
from . import buffers, roles
from .safetensors_header import read_header, read_index

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


@dataclass(frozen=True)
class StoredTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    #: identity of the stored data; equal keys are one tensor saved under several names.
    key: Hashable | None = None


# --------------------------------------------------------------------------- reading
def read_safetensors(path: str) -> list[StoredTensor]:
    entries, _ = read_header(path)
    return [StoredTensor(e.name, e.dtype, e.shape) for e in entries]


def read_sharded(index_path: str) -> list[StoredTensor]:
    """Every tensor a ``*.index.json`` weight_map lists, from its shards' headers (or state dicts)."""
    wm = read_index(index_path)
    root = os.path.dirname(os.path.abspath(index_path))
    by_shard: dict[str, list[str]] = {}
    for name, shard in wm.items():
        by_shard.setdefault(shard, []).append(name)
    out: list[StoredTensor] = []
    for shard, names in by_shard.items():
        spath = os.path.join(root, shard)
        if not os.path.isfile(spath):
            raise SourceError(f"{index_path}: shard {shard!r} is missing from {root}; "
                              "download every shard the index lists")
        tensors = read_safetensors(spath) if shard.endswith(".safetensors") else read_torch(spath)
        have = {t.name: t for t in tensors}
        lost = [n for n in names if n not in have]
        if lost:
            raise SourceError(f"{index_path}: shard {shard!r} lacks {lost[0]!r}"
                              f"{f' and {len(lost) - 1} more' if len(lost) > 1 else ''} named in the "
                              "weight_map; re-download the shard or fix the index")
        out += [have[n] for n in names]
    return out


_WRAPPERS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "ema", "model_ema")


def _unwrap(obj: Any, path: str) -> dict:
    import torch

    for _ in range(4):
        if not isinstance(obj, dict):
            break
        if any(torch.is_tensor(v) for v in obj.values()):
            return obj
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if isinstance(obj, dict) and any(torch.is_tensor(v) for v in obj.values()):
        return obj
    raise SourceError(f"{path}: holds no state dict of tensors (looked inside "
                      f"{'/'.join(_WRAPPERS[:4])}); save model.state_dict() with torch.save")


def _refusal(path: str, e: Exception) -> SourceError:
    text = str(e)
    hint = next((ln.strip() for ln in text.splitlines() if "Unsupported global" in ln
                 or "unsupported global" in ln.lower()), "")
    if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in text or hint:
        why = hint.split("WeightsUnpickler error:")[-1].strip() if hint else "it needs more than tensors and containers"
        return SourceError(f"{path}: refused to unpickle: {why} — a weights-only load allows no "
                           "code; convert the checkpoint to safetensors or save model.state_dict()")
    return SourceError(f"{path}: not a torch checkpoint ({text.splitlines()[0] if text else type(e).__name__}); "
                       "point at a file written by torch.save")


def read_torch(path: str) -> list[StoredTensor]:
    """Tensors of a ``.pt/.pth/.bin`` state dict, loaded weights-only onto meta or a memory map."""
    import torch

    # A CPU memory map reads no tensor bytes yet keeps storage identity (data_ptr) for spotting
    # shared tensors; map_location="meta" would give every tensor its own storage and hide ties.
    # Legacy (non-zip) files cannot be memory-mapped and are loaded to CPU.
    attempts = ({"mmap": True, "map_location": "cpu"}, {"map_location": "cpu"})
    obj = None
    for i, kw in enumerate(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj = torch.load(path, weights_only=True, **kw)
            break
        except Exception as e:  # noqa: BLE001 - a hostile or broken file can raise anything
            if "mmap" in str(e) and i + 1 < len(attempts):
                continue  # legacy format: retry without the memory map
            raise _refusal(path, e) from None
    sd = _unwrap(obj, path)
    out = []
    for name, t in sd.items():
        if not torch.is_tensor(t):
            continue
        ptr = t.untyped_storage().data_ptr()
        key = (ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype) if ptr else None
        out.append(StoredTensor(str(name), str(t.dtype).removeprefix("torch."), tuple(t.shape), key))
    return out


def read_weights(path: str) -> list[StoredTensor]:
    """Dispatch on the file name: ``*.index.json``, ``.safetensors`` or a torch file."""
    if path.endswith(".index.json"):
        return read_sharded(path)
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    return read_torch(path)


def find_weights(directory: str) -> str | None:
    """The weights file of a model directory, preferring safetensors and sharded indices."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as e:
        raise SourceError(f"{directory}: cannot list ({e.strerror or e}); check the path") from None
    files = [n for n in names if os.path.isfile(os.path.join(directory, n))]
    for pick in (
        lambda n: n == "model.safetensors.index.json",
        lambda n: n.endswith(".safetensors.index.json"),
        lambda n: n == "model.safetensors",
        lambda n: n.endswith(".safetensors"),
        lambda n: n.endswith(".bin.index.json"),
        lambda n: n in ("pytorch_model.bin", "model.pt", "model.pth"),
        lambda n: n.endswith((".bin", ".pt", ".pth")) and "optimizer" not in n and "training_args" not in n,
    ):
        hits = [n for n in files if pick(n)]
        if hits:
            return os.path.join(directory, hits[0])
    return None


# --------------------------------------------------------------------------- classification
def _dedupe(tensors: list[StoredTensor]) -> list[tuple[StoredTensor, list[str]]]:
    first: dict[Hashable, int] = {}
    out: list[tuple[StoredTensor, list[str]]] = []
    for t in tensors:
        if t.key is not None and t.key in first:
            out[first[t.key]][1].append(t.name)
            continue
        if t.key is not None:
            first[t.key] = len(out)
        out.append((t, []))
    return out


def specs_by_heuristics(tensors: list[StoredTensor]) -> tuple[list[ParamSpec], dict[str, Any]]:
    params: list[ParamSpec] = []
    n_buf = 0
    for t, aliases in _dedupe(tensors):
        if buffers.is_buffer(t.name, t.dtype, t.shape):
            n_buf += 1
            continue
        params.append(roles.by_name(
            ParamSpec(t.name, t.shape, dtypes.canonical(t.dtype), True, tuple(aliases))))
    return params, {"buffers": n_buf, "params_decided_by": "names and dtypes"}


def _name_maps(ckpt_names: list[str], model_names: set[str], base_prefix: str):
    """The renaming of checkpoint names that matches the most model names (identity, adding or
    dropping the base-model prefix, dropping a DDP ``module.`` prefix)."""
    candidates = [lambda n: n]
    for pre in {base_prefix, "module", "model", "_orig_mod"} - {""}:
        candidates.append(lambda n, p=pre: n[len(p) + 1:] if n.startswith(p + ".") else n)
    if base_prefix:
        candidates.append(lambda n, p=base_prefix: f"{p}.{n}")
        candidates.append(lambda n, p=base_prefix: n if n.startswith(p + ".") else f"{p}.{n}")
    best, best_hits = candidates[0], -1
    for f in candidates:
        hits = sum(1 for n in ckpt_names if f(n) in model_names)
        if hits > best_hits:
            best, best_hits = f, hits
    return best


def specs_by_architecture(tensors: list[StoredTensor], module, where: str, *,
                          new_head: bool = False) -> tuple[list[ParamSpec], dict[str, Any]] | None:
    """Parameters as the architecture has them, dtypes as the checkpoint stores them. ``None`` when
    the checkpoint does not fit the architecture well enough to trust the match (under half the
    model's parameters found). A shape that differs from the checkpoint's is an error unless
    ``new_head`` (``--num-classes`` resized the classifier, which is then re-initialized)."""
    canon: dict[int, str] = {}
    role_of = roles.module_roles(module)
    roles_by_name: dict[str, tuple[bool, bool]] = {}
    names_of: dict[str, list[str]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    alias_to_canon: dict[str, str] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        c = canon.setdefault(id(p), name)
        names_of.setdefault(c, []).append(name) if c != name else names_of.setdefault(c, [])
        shapes[c] = tuple(p.shape)
        roles_by_name[c] = role_of[id(p)]
        alias_to_canon[name] = c
    buffer_names = {n for n, _ in module.named_buffers(remove_duplicate=False)}
    rename = _name_maps([t.name for t in tensors], set(alias_to_canon) | buffer_names,
                        getattr(module, "base_model_prefix", "") or "")
    found: dict[str, StoredTensor] = {}
    n_buf = unused = 0
    for t in tensors:
        m = rename(t.name)
        if m in alias_to_canon:
            found.setdefault(alias_to_canon[m], t)
        elif m in buffer_names or buffers.is_buffer(t.name, t.dtype, t.shape):
            n_buf += 1
        else:
            unused += 1
    if len(found) * 2 < len(canon):
        return None
    floats = Counter(dtypes.canonical(t.dtype) for t in tensors
                     if dtypes.canonical(t.dtype) in dtypes.FLOATING)
    default_dt = floats.most_common(1)[0][0] if floats else "float32"
    params, missing, mismatched = [], [], []
    for c in canon.values():
        t = found.get(c)
        if t is not None and tuple(t.shape) != shapes[c]:
            if not new_head:
                raise SourceError(f"{where}: config.json does not match the weights: {c} is "
                                  f"{list(t.shape)} in the checkpoint but {list(shapes[c])} in the "
                                  "architecture; use the config.json saved with these weights")
            mismatched.append(c)
        if t is None:
            missing.append(c)
        dt = dtypes.canonical(t.dtype) if t is not None else default_dt
        linear, head = roles_by_name[c]
        params.append(ParamSpec(c, shapes[c], dt, True, tuple(names_of.get(c, ())), linear, head))
    info: dict[str, Any] = {"buffers": n_buf, "params_decided_by": "architecture"}
    if missing:
        info["missing_from_checkpoint"] = missing[:20]
        info["num_missing_from_checkpoint"] = len(missing)
    if unused:
        info["unused_checkpoint_tensors"] = unused
    if mismatched:
        info["reshaped_by_num_classes"] = mismatched[:20]
    return params, info
