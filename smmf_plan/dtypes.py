"""Dtype names and element sizes, without importing torch.

One table for every module that counts bytes. Names follow ``torch.<name>`` (``"float32"``,
``"bfloat16"`` ...); safetensors' short codes (``"F32"``, ``"BF16"`` ...) map onto them.
"""

from __future__ import annotations

#: bytes per element for each dtype name smmf-plan understands. ``bool`` is one byte, as torch
#: stores it; sub-byte packing is a property of a state layout, not of a dtype.
ITEMSIZE: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8_e4m3fn": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2": 1,
    "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
    "complex128": 16,
    "complex64": 8,
    "complex32": 4,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint64": 8,
    "uint32": 4,
    "uint16": 2,
    "uint8": 1,
    "bool": 1,
}

FLOATING = frozenset(
    {"float64", "float32", "float16", "bfloat16"} | {k for k in ITEMSIZE if k.startswith("float8")}
)
HALF = frozenset({"float16", "bfloat16"})

#: safetensors header dtype codes → names above.
SAFETENSORS_DTYPES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu",
    "C64": "complex64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
}

#: user-facing aliases accepted by ``--dtype``.
ALIASES: dict[str, str] = {
    "fp32": "float32",
    "float": "float32",
    "f32": "float32",
    "fp16": "float16",
    "half": "float16",
    "f16": "float16",
    "bf16": "bfloat16",
    "fp64": "float64",
    "double": "float64",
    "f64": "float64",
}


def canonical(name: str) -> str:
    """Return the canonical dtype name for ``name`` (``"torch.float32"``, ``"fp32"`` and
    ``"float32"`` all give ``"float32"``); raise ``ValueError`` naming the choices otherwise."""
    key = str(name).strip().lower().removeprefix("torch.")
    key = ALIASES.get(key, key)
    if key not in ITEMSIZE:
        raise ValueError(
            f"unknown dtype {name!r}: use one of fp32, bf16, fp16, fp64 (or a torch dtype name)"
        )
    return key


def itemsize(name: str) -> int:
    return ITEMSIZE[canonical(name)]


def upcast(name: str) -> str:
    """The dtype factored optimizers (Adafactor, CAME) keep for a parameter of dtype ``name``:
    fp16/bf16 are up-cast to fp32, everything else is kept."""
    return "float32" if name in HALF else name
