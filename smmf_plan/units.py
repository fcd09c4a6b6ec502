"""Byte sizes: parse what users write ("512MiB", "4GB", "1.5 GiB", "300000") and print them
(:func:`format_bytes`, the one formatter every table, message and report uses).

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
_SIZE = re.compile(r"^\s*([+-]?)\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")

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
    unit = m.group(3).lower() if m else None
    if not m or unit not in _UNITS:
        raise PlanError(f"{what} {text!r} is not a size: write e.g. 512MiB, 4GB or 1.5GiB")
    n = int(round(float(m.group(2)) * _UNITS[unit]))
    if m.group(1) == "-" and n:
        raise PlanError(f"{what} {text!r} is negative: a size must be positive, e.g. 512MiB")
    return n


def config_size(value: object, what: str) -> int:
    """A positive size written in a configuration file (device tables, check budgets): bytes as an
    integer (or a float without a fraction) or a string :func:`parse_size` reads. Errors name
    ``what`` (``"pyproject.toml: check 1: max-state"``) and the value."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
        raise PlanError(f"{what} = {value!r} must be a positive size")
    bad = PlanError(f"{what} = {value!r} is not a size: write bytes (an integer) or e.g. \"512MiB\" "
                    "or \"1.5 GiB\"")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise bad
    try:
        n = parse_size(value, what)
    except PlanError:
        raise bad from None
    if n <= 0:
        raise PlanError(f"{what} = {value!r} must be a positive size")
    return n


def looks_like_size(text: str) -> bool:
    m = _SIZE.match(text)
    return bool(m) and m.group(3).lower() in _UNITS and m.group(3) != ""


_BINARY = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))
UNITS = {"B": 1, **dict(_BINARY)}


def format_bytes(nbytes: int | float | None, digits: int = 1, *, unit: str | None = None,
                 signed: bool = False, compact: bool = False, suffix: bool = True,
                 sig_below_unit: int | None = None) -> str:
    """Byte sizes for people, binary units throughout; every renderer formats sizes here.

    * default: the largest unit the size reaches, ``digits`` decimals (two for GiB/TiB under
      100): ``"97.5 MiB"``, ``"1.21 GiB"``, ``"612 B"``;
    * ``unit="MiB"`` (any of :data:`UNITS`): always that unit, thousands separated, ``digits``
      decimals (``"1,536.0 MiB"``); ``suffix=False`` leaves the unit to a column heading;
      ``sig_below_unit=3`` shows a size under one unit with that many significant digits
      (``"0.0123"``) instead of rounding it to zero;
    * ``compact=True``: dense tables, one letter and no space, one decimal under 10 (``"383M"``,
      ``"9.5G"``, ``"512B"``; negative with a true minus, ``"−18M"``);
    * ``signed=True``: a ``+`` before sizes ≥ 0 (changes: ``"+512 B"``, ``"-1.5 MiB"``).

    ``None`` is ``"–"``."""
    if nbytes is None:
        return "–"
    n = float(nbytes)
    if compact:
        sign = "−" if n < 0 else ("+" if signed else "")
        n = abs(n)
        for name, size in _BINARY:
            if n >= size:
                v = n / size
                return f"{sign}{v:.1f}{name[0]}" if v < 10 else f"{sign}{v:.0f}{name[0]}"
        return f"{sign}{int(n)}B"
    sign = "-" if n < 0 else ("+" if signed else "")
    n = abs(n)
    if unit is not None:
        v = n / UNITS[unit]
        if sig_below_unit is not None and 0 < v < 1:
            text = f"{v:.{sig_below_unit}g}"
        else:
            text = f"{v:,.{digits}f}"
        return f"{sign}{text}" + (f" {unit}" if suffix else "")
    for name, size in _BINARY:
        if n >= size:
            value = n / size
            d = 2 if name in ("GiB", "TiB") and value < 100 else digits
            return f"{sign}{value:.{d}f} {name}"
    return f"{sign}{int(n)} B"
