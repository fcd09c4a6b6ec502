"""Stacked bars: one per optimizer, a segment per part of the training step
(:data:`smmf_plan.breakdown.PARTS`), against a device's usable memory, in the terminal (rich) and
as a standalone SVG.

Both renderers share one scale: the larger of the usable memory and the largest total, so the
usable-memory marker is always on the picture and a bar that runs past it visibly does not fit.
In the terminal every part has its own glyph (█ ▓ ▒ ░ ▚ ·) so the picture reads without colour; in
SVG parts have colour-blind-safe colours (Okabe–Ito) and most carry a hatch pattern. Glyphs,
colours and hatches are the parts' own (:class:`smmf_plan.breakdown.Part`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from html import escape as _html_escape
from pathlib import Path
from typing import Mapping, Sequence

from rich.table import Table
from rich.text import Text

from ..atomic import write_text_atomic
from ..breakdown import Breakdown, Part, shown
from ..errors import PlanError
from ..units import format_bytes


def escape(text: str) -> str:
    """``&``, ``<`` and ``>`` as XML entities (SVG text and titles)."""
    return _html_escape(text, quote=False)


MARKER = "┃"


@dataclass(frozen=True, init=False)
class BarRow:
    """One bar: a label (the optimizer id) and its :class:`~smmf_plan.breakdown.Breakdown` (a
    mapping of part keys is converted; missing parts are 0, unknown ones a ValueError)."""

    label: str
    breakdown: Breakdown

    def __init__(self, label: str, breakdown: Mapping[str, int] | None = None) -> None:
        object.__setattr__(self, "label", label)
        object.__setattr__(self, "breakdown", breakdown if isinstance(breakdown, Breakdown)
                           else Breakdown(breakdown or {}))

    @property
    def total(self) -> int:
        """The device's bytes (host parts of an offloading recipe are not on the bar)."""
        return self.breakdown.device_bytes

    def get(self, key: str) -> int:
        return self.breakdown[key]


def _scale(rows: Sequence[BarRow], usable_bytes: int | None) -> int:
    return max([r.total for r in rows] + [usable_bytes or 0, 1])


def _parts(rows: Sequence[BarRow]) -> tuple[Part, ...]:
    return shown((r.breakdown for r in rows), where="device")


def cells(row: BarRow, scale: int, width: int,
          parts: Sequence[Part] | None = None) -> list[tuple[Part, int]]:
    """Character cells per part: cumulative rounding, so the cells add up to the rounded total."""
    out, done, cum = [], 0, 0
    for part in parts if parts is not None else _parts([row]):
        cum += row.get(part.key)
        end = round(cum * width / scale)
        out.append((part, end - done))
        done = end
    return out


def _status(row: BarRow, usable_bytes: int | None) -> str:
    if usable_bytes is None:
        return ""
    gap = usable_bytes - row.total
    return "✓ fits" if gap >= 0 else f"✗ {format_bytes(-gap, 0)} over"


class Bars:
    """Rich renderable: one labelled stacked bar per row, the usable-memory marker ``┃`` at its
    place on every bar, and a legend naming each character. The bar width adapts to the console
    unless ``width`` is given."""

    def __init__(self, rows: Sequence[BarRow], usable_bytes: int | None, width: int | None = None,
                 title: str | None = None) -> None:
        if width is not None and width < 8:
            raise ValueError("bar width must be at least 8 characters")
        self.rows, self.usable_bytes, self.width, self.title = list(rows), usable_bytes, width, title

    def bar_text(self, row: BarRow, width: int):
        """The bar of ``row`` as rich Text, exactly ``width`` cells plus the marker."""
        scale = _scale(self.rows, self.usable_bytes)
        mark = None if self.usable_bytes is None else round(self.usable_bytes * width / scale)
        bar = Text()
        pos = 0
        for part, n in cells(row, scale, width, _parts(self.rows)):
            for _ in range(n):
                if pos == mark:
                    bar.append(MARKER, style="bold")
                bar.append(part.glyph, style=part.style)
                pos += 1
        if mark is not None and pos <= mark:
            bar.append(" " * (mark - pos))
            bar.append(MARKER, style="bold")
            pos = mark
        bar.append(" " * (width - pos))
        return bar

    def __rich_console__(self, console, options):
        label_w = max([len(r.label) for r in self.rows] + [4])
        totals = [format_bytes(r.total, 0) for r in self.rows]
        status = [_status(r, self.usable_bytes) for r in self.rows]
        side = max([len(t) for t in totals] + [1]) + max([len(x) for x in status] + [0])
        width = self.width or max(12, min(60, options.max_width - label_w - side - 8))
        table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1), title=self.title,
                      title_justify="left", title_style="bold")
        table.add_column("optimizer", no_wrap=True)
        table.add_column("bar", no_wrap=True)
        table.add_column("total", justify="right", no_wrap=True)
        table.add_column("verdict", no_wrap=True)
        for row, total, st in zip(self.rows, totals, status):
            table.add_row(row.label, self.bar_text(row, width), total,
                          Text(st, style="green" if st.startswith("✓") else "red"))
        yield table
        legend = Text()
        for part in _parts(self.rows):
            legend.append(part.glyph, style=part.style)
            legend.append(f" {part.label}  ")
        if self.usable_bytes is not None:
            legend.append(MARKER, style="bold")
            legend.append(f" usable {format_bytes(self.usable_bytes, 0)}")
        yield legend


def render_bars(rows: Sequence[BarRow], usable_bytes: int | None, *, width: int | None = None,
                title: str | None = None) -> Bars:
    """The stacked bars as a rich renderable (see :class:`Bars`)."""
    return Bars(rows, usable_bytes, width, title)


# --------------------------------------------------------------------------- SVG

_PATTERNS = {
    "diagonal": '<path d="M-1,1 l2,-2 M0,6 l6,-6 M5,7 l2,-2" stroke="#ffffff" stroke-width="1.2"/>',
    "dots": '<circle cx="3" cy="3" r="1.1" fill="#ffffff"/>',
    "cross": '<path d="M0,0 L6,6 M6,0 L0,6" stroke="#ffffff" stroke-width="0.9"/>',
    "horizontal": '<path d="M0,3 H6" stroke="#ffffff" stroke-width="1.2"/>',
}


def _fill(part: Part) -> str:
    return f"url(#p-{part.key})" if part.hatch else part.colour


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def svg_text(rows: Sequence[BarRow], usable_bytes: int | None, title: str, *,
             bar_width: int = 480) -> str:
    """The SVG document as text (UTF-8, standalone, no external references)."""
    label_w, row_h, bar_h, top = 120, 28, 18, 48
    scale = _scale(rows, usable_bytes)
    # room right of the bars for the longest "total · verdict" label (~7.5 px per character)
    texts = [format_bytes(r.total, 0) + (f" · {_status(r, usable_bytes)}" if _status(r, usable_bytes) else "")
             for r in rows]
    right_w = max([150] + [round(12 + 7.5 * len(t) - bar_width * (1 - r.total / scale))
                          for r, t in zip(rows, texts)])
    width = label_w + bar_width + right_w
    legend_y = top + row_h * len(rows) + 28
    height = legend_y + 30
    x0 = label_w
    parts = _parts(rows)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" '
        'font-size="12">',
        f"<title>{escape(title)}</title>",
        "<defs>",
    ]
    for part in parts:
        if part.hatch:
            out.append(f'<pattern id="p-{part.key}" width="6" height="6" patternUnits="userSpaceOnUse">'
                       f'<rect width="6" height="6" fill="{part.colour}"/>{_PATTERNS[part.hatch]}</pattern>')
    out.append("</defs>")
    out.append(f'<rect width="{width}" height="{height}" fill="#ffffff"/>')
    out.append(f'<text x="10" y="22" font-size="14" font-weight="bold">{escape(title)}</text>')
    for i, row in enumerate(rows):
        y = top + i * row_h
        out.append(f'<text x="{x0 - 8}" y="{_num(y + bar_h - 4)}" text-anchor="end">'
                   f"{escape(row.label)}</text>")
        cum = 0
        for part in parts:
            b = row.get(part.key)
            if b <= 0:
                continue
            x = x0 + cum * bar_width / scale
            w = b * bar_width / scale
            out.append(f'<rect class="seg {part.key}" data-bytes="{b}" x="{_num(x)}" y="{y}" '
                       f'width="{_num(w)}" height="{bar_h}" fill="{_fill(part)}" stroke="#333333" '
                       f'stroke-width="0.4"><title>{escape(row.label)} {part.label}: '
                       f"{format_bytes(b, 1)}</title></rect>")
            cum += b
        status = _status(row, usable_bytes)
        text = format_bytes(row.total, 0) + (f" · {status}" if status else "")
        out.append(f'<text x="{_num(x0 + row.total * bar_width / scale + 6)}" '
                   f'y="{_num(y + bar_h - 4)}">{escape(text)}</text>')
    if usable_bytes is not None:
        ux = x0 + usable_bytes * bar_width / scale
        out.append(f'<line class="usable" x1="{_num(ux)}" y1="{top - 10}" x2="{_num(ux)}" '
                   f'y2="{top + row_h * len(rows)}" stroke="#D55E00" stroke-width="2" '
                   'stroke-dasharray="5,3"/>')
        out.append(f'<text x="{_num(ux)}" y="{top - 14}" text-anchor="middle" fill="#D55E00">'
                   f"usable {escape(format_bytes(usable_bytes, 0))}</text>")
    x = 10
    for part in parts:
        out.append(f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" fill="{_fill(part)}" '
                   'stroke="#333333" stroke-width="0.4"/>')
        out.append(f'<text x="{x + 16}" y="{legend_y}">{escape(part.label)}</text>')
        x += 16 + 8 * len(part.label) + 18
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_svg(path: str | os.PathLike, rows: Sequence[BarRow], usable_bytes: int | None,
              title: str) -> Path:
    """Write the bars as SVG to ``path`` atomically (a temporary file in the same folder, then
    renamed), so a reader never sees half a file."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise PlanError(f"--svg {str(path)!r} is a folder: give a file name such as bars.svg")
    if not folder.is_dir():
        raise PlanError(f"--svg {str(path)!r}: folder {str(folder)!r} does not exist")
    try:
        write_text_atomic(target, svg_text(rows, usable_bytes, title))
    except OSError as e:
        raise PlanError(f"--svg {str(path)!r} cannot be written: {e.strerror}") from None
    return target

