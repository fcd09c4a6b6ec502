"""Byte sizes: parse what users write ("512MiB", "4GB", "1.5 GiB", "300000") and print MiB.

SI prefixes are decimal (1 GB = 10⁹ B), IEC prefixes binary (1 GiB = 2³⁰ B), as the standards say.
"""

from __future__ import annotations

import re

from .errors import PlanError

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")

MiB = 2**20
GiB = 2**30


def parse_size(text: str | int, what: str = "size") -> int:
    """Bytes in ``text``; raises :class:`PlanError` naming ``what`` when unparsable or negative."""
    if isinstance(text, bool):
        raise PlanError(f"{what} {text!r} is not a size: write e.g. 512MiB, 4GB or 1.5GiB")
    if isinstance(text, int):
        if text < 0:
            raise PlanError(f"{what} must not be negative, got {text}")
        return text
    m = _SIZE.match(str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise PlanError(f"{what} {text!r} is not a size: write e.g. 512MiB, 4GB or 1.5GiB")
    return int(round(float(m.group(1)) * _UNITS[unit]))


def looks_like_size(text: str) -> bool:
    m = _SIZE.match(text)
    return bool(m) and m.group(2).lower() in _UNITS and m.group(2) != ""


def mib(nbytes: int | float) -> float:
    return nbytes / MiB


def format_bytes(nbytes: int | float | None, digits: int = 1) -> str:
    """Human form with binary units: ``"97.5 MiB"``, ``"1.21 GiB"``, ``"612 B"``."""
    if nbytes is None:
        return "–"
    n = float(nbytes)
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            value = n / size
            d = 2 if unit in ("GiB", "TiB") and value < 100 else digits
            return f"{sign}{value:.{d}f} {unit}"
    return f"{sign}{int(n)} B"
