"""Step breakdowns as a Markdown table (the probe and check reports): one row per optimizer, one
column per part of :data:`smmf_plan.breakdown.PARTS`, then the total, and a legend saying what
each part counts."""

from __future__ import annotations

from typing import Callable, Mapping

from ..breakdown import shown
from ..units import format_bytes


def mib(n: int | None) -> str:
    """A cell of a column headed MiB: one decimal, more significant digits below 1 MiB."""
    return format_bytes(n, unit="MiB", suffix=False, sig_below_unit=3)


def breakdown_table(rows: Mapping[str, Mapping[str, int]], first: str = "optimizer",
                    fmt: Callable[[int], str] = mib) -> list[str]:
    """Markdown lines: ``| first | part … | total |`` then one line per row, sizes written by
    ``fmt``. ``rows`` maps a label (Markdown-safe) to a breakdown (``{part key: bytes}``, e.g. a
    JSON ``breakdown``); the total is the sum of its parts. A part not known (``None``, or in a
    Breakdown's ``unknown``) is ``?`` and makes the total a lower bound (``≥``)."""
    parts = shown(rows.values())
    lines = ["| " + " | ".join([first, *(p.heading for p in parts), "total"]) + " |",
             "|---|" + "---:|" * (len(parts) + 1)]
    for label, bd in rows.items():
        unknown = set(getattr(bd, "unknown", ())) | {k for k, v in bd.items() if v is None}
        cells = ["?" if p.key in unknown else fmt(bd.get(p.key, 0)) for p in parts]
        total = fmt(sum(v for v in bd.values() if v))
        lines.append(f"| {label} | " + " | ".join([*cells, f"≥ {total}" if unknown else total]) + " |")
    return lines


def legend(rows: Mapping[str, Mapping[str, int]]) -> list[str]:
    """One Markdown bullet per part shown: its heading and what it counts."""
    return [f"- **{p.heading}**: {p.description}." for p in shown(rows.values())]
