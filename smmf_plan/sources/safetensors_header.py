"""Read a ``.safetensors`` file's header (never its tensor data) and validate it.

Format: an 8-byte little-endian unsigned header length ``N``, ``N`` bytes of JSON, then the data
area. The JSON maps tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets
relative to the data area) plus an optional ``"__metadata__"`` string map.

Everything a header claims is checked before it is trusted: the length fits in the file (and under
:data:`MAX_HEADER_BYTES`), the JSON is an object, each dtype is known, each shape is a list of
non-negative integers whose element count × item size equals ``end - begin``, offsets lie in the data
area and regions do not overlap. No allocation is proportional to a size the file claims: at most
the header itself (bounded by the file size and the cap) is read. Pure Python, no torch.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

from .. import dtypes
from ..errors import SourceError

#: a sane cap on the JSON header (real headers of 70B-parameter shards are ~100 KB).
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as a safetensors header describes it."""

    name: str
    dtype: str  # canonical smmf-plan dtype name ("float32", "bfloat16", ...)
    shape: tuple[int, ...]
    begin: int
    end: int


def _bad(path: str, why: str) -> SourceError:
    return SourceError(
        f"{path}: not a valid safetensors file ({why}); re-export it with safetensors.torch.save_file"
    )


def read_header(path: str | os.PathLike) -> tuple[list[TensorEntry], dict[str, str]]:
    """Return ``(entries, metadata)`` of a safetensors file, reading only its header."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _bad(path, f"{size} bytes is shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise _bad(path, f"header length {n} is beyond the file size {size}")
            if n > MAX_HEADER_BYTES:
                raise _bad(path, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte cap")
            raw = f.read(n)
    except OSError as e:
        raise SourceError(f"{path}: cannot read ({e.strerror or e}); check the path and permissions") from None
    return parse_header(raw, data_size=size - 8 - n, where=path)


def parse_header(raw: bytes, *, data_size: int | None, where: str = "header"
                 ) -> tuple[list[TensorEntry], dict[str, str]]:
    """Validate a raw JSON header. ``data_size`` is the length of the data area (``None`` when it is
    unknown, e.g. metadata from the hub: offsets are then checked for consistency only)."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(where, f"header is not JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise _bad(where, "header is not a JSON object")
    return validate_entries(doc, data_size=data_size, where=where)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def validate_entries(doc: dict, *, data_size: int | None, where: str
                     ) -> tuple[list[TensorEntry], dict[str, str]]:
    meta = doc.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise _bad(where, "__metadata__ is not an object")
    entries: list[TensorEntry] = []
    for name, info in doc.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise _bad(where, f"entry {name!r} is not an object")
        code = info.get("dtype")
        if code not in dtypes.SAFETENSORS_DTYPES:
            raise _bad(where, f"tensor {name!r} has unknown dtype {code!r}")
        dt = dtypes.SAFETENSORS_DTYPES[code]
        shape = info.get("shape")
        if not isinstance(shape, list) or not all(_is_int(s) for s in shape):
            raise _bad(where, f"tensor {name!r} has a shape that is not a list of integers: {shape!r}")
        if any(s < 0 for s in shape):
            raise _bad(where, f"tensor {name!r} has a negative dimension in shape {shape}")
        offsets = info.get("data_offsets")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)):
            raise _bad(where, f"tensor {name!r} has malformed data_offsets {offsets!r}")
        begin, end = offsets
        if begin < 0 or end < begin:
            raise _bad(where, f"tensor {name!r} has data_offsets {offsets} out of order")
        if data_size is not None and end > data_size:
            raise _bad(where, f"tensor {name!r} data_offsets {offsets} lie outside the "
                              f"{data_size}-byte data area")
        numel = 1
        for s in shape:  # Python ints never overflow; the product check below bounds them
            numel *= s
        nbytes = numel * dtypes.ITEMSIZE[dt]
        if nbytes != end - begin:
            raise _bad(where, f"tensor {name!r} shape {shape} × {code} needs {nbytes} bytes but "
                              f"data_offsets {offsets} span {end - begin}")
        entries.append(TensorEntry(name, dt, tuple(shape), begin, end))
    regions = sorted((e.begin, e.end, e.name) for e in entries if e.end > e.begin)
    for (b0, e0, n0), (b1, e1, n1) in zip(regions, regions[1:]):
        if b1 < e0:
            raise _bad(where, f"tensors {n0!r} and {n1!r} have overlapping data regions")
    entries.sort(key=lambda e: (e.begin, e.name))
    return entries, {str(k): str(v) for k, v in meta.items()}


def read_json(path: str, *, what: str = "file", fix: str = "fix or re-save it") -> object:
    """A JSON document from ``path``; unreadable or malformed → one-line :class:`SourceError`."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except OSError as e:
        raise SourceError(f"{path}: cannot read ({e.strerror or e}); check the path") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"{path}: {what} is not valid JSON ({str(e).splitlines()[0]}); {fix}") from None


def read_index(path: str | os.PathLike) -> dict[str, str]:
    """``weight_map`` (tensor name → shard file name) of a ``*.index.json``."""
    path = os.fspath(path)
    doc = read_json(path, what="index", fix="re-save the checkpoint's index file")
    wm = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
        raise SourceError(f"{path}: index has no weight_map of name → shard file; "
                          "point at a *.safetensors.index.json written by save_pretrained")
    for shard in set(wm.values()):
        if os.path.isabs(shard) or ".." in shard.replace("\\", "/").split("/"):
            raise SourceError(f"{path}: weight_map names shard {shard!r} outside the checkpoint "
                              "directory; fix the index")
    return wm
