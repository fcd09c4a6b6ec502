"""Optimizer ids → layouts. ``NAME[:key=value,...]``, e.g. ``adafactor:beta1=none`` or
``smmf:sign=bool``; ``all`` expands to every registered variant worth comparing."""

from __future__ import annotations

import difflib

from .adafactor import AdafactorLayout
from .adam import AdamLayout, AdamWLayout
from .base import OptimizerLayout
from .came import CAMELayout
from .sm3 import SM3Layout
from .smmf import SMMFLayout

FAMILIES: dict[str, type[OptimizerLayout]] = {
    cls.name: cls
    for cls in (AdamLayout, AdamWLayout, AdafactorLayout, CAMELayout, SM3Layout, SMMFLayout)
}

#: the five optimizers the mission compares, shown when no ``--optimizer`` is given.
DEFAULT_IDS = ("adam", "adafactor", "came", "sm3", "smmf")
#: what ``--optimizer all`` selects.
ALL_IDS = ("adam", "adamw", "adafactor", "adafactor:beta1=none", "came", "sm3", "smmf",
           "smmf:sign=bool")


class UnknownOptimizer(ValueError):
    pass


def parse_layout(text: str) -> OptimizerLayout:
    """Resolve one optimizer id (with optional variant options) to its layout."""
    raw = text.strip()
    name, _, rest = raw.partition(":")
    name = name.strip().lower()
    cls = FAMILIES.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, list(FAMILIES), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownOptimizer(
            f"unknown optimizer {raw!r}{hint} (known: {', '.join(FAMILIES)}, or 'all')"
        )
    opts = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().lower().replace("-", "_")
        if not eq or key not in cls.options:
            known = ", ".join(f"{k}=…" for k in cls.options) or "none"
            raise UnknownOptimizer(
                f"bad option {item!r} for optimizer {name!r}: expected key=value with key in: {known}"
            )
        try:
            opts[key] = cls.options[key][1](value)
        except ValueError as e:
            raise UnknownOptimizer(f"bad value for {name}:{key}: {e}") from None
    return cls(raw, **opts)


def parse_layouts(text: str | None) -> list[OptimizerLayout]:
    """Comma-separated ids are ambiguous with variant options (``smmf:sign=bool,beta=none``),
    so split on commas that start a new family name."""
    if text is None or not text.strip():
        ids = list(DEFAULT_IDS)
    else:
        ids = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            head = part.split(":", 1)[0].split("=", 1)[0].strip().lower()
            if ids and "=" in part and ":" not in part and head not in FAMILIES and head != "all":
                ids[-1] += "," + part  # continuation of the previous id's options
            else:
                ids.append(part)
        ids = [i for x in ids for i in (ALL_IDS if x.lower() == "all" else (x,))]
    seen, out = set(), []
    for i in ids:
        layout = parse_layout(i)
        if layout.id not in seen:
            seen.add(layout.id)
            out.append(layout)
    return out
