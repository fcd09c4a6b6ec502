"""Rich tables for devices, training steps and fit verdicts (their JSON: :mod:`.step_json`).

Every verdict is written in words or symbols (✓ fits / ✗ over) as well as colour, so tables read in
monochrome. The step table has one column per part of :data:`smmf_plan.breakdown.PARTS`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..breakdown import StepMemory, shown
from ..devices import Device
from ..fit import Fit, recommendation
from ..fit import judge as judge_one
from ..units import format_bytes
from . import SCHEMA_VERSION
from .bars import BarRow, render_bars

_PT_STYLE = {"yes": "green", "limited": "", "marginal": "yellow", "no": "red", "unknown": "dim"}


# --------------------------------------------------------------------------- devices

def devices_table(devices: Sequence[Device], wide: bool = True) -> Table:
    """The catalog; ``wide=False`` (terminals under ~120 columns) drops the name, the allocator
    and the PyTorch reason so that each device stays on one line."""
    table = Table(title="Devices", title_justify="left", header_style="bold", box=box.SIMPLE_HEAD,
                  caption="usable: what one training process can allocate once the OS/runtime is "
                          "up; smmf-plan devices --json gives each figure's basis and sources",
                  caption_justify="left")
    for col, just in (("id", "left"), ("memory", "right"), ("usable", "right"), ("kind", "left")):
        table.add_column(col, justify=just, no_wrap=True)
    if wide:
        table.add_column("alloc.", no_wrap=True)
    table.add_column("PyTorch" if not wide else "PyTorch training", no_wrap=not wide)
    if wide:
        table.add_column("name")
    for d in devices:
        pt = Text(d.pytorch_training, style=_PT_STYLE.get(d.pytorch_training, ""))
        if wide and d.pytorch_reason:
            pt.append(f": {d.pytorch_reason}", style="dim")
        cells = [d.id, format_bytes(d.total_bytes, 0), format_bytes(d.usable_bytes, 0), d.memory_kind]
        table.add_row(*cells, *([d.allocator, pt, d.name] if wide else [pt]))
    return table


def devices_document(devices: Sequence[Device]) -> dict:
    return {"schema_version": SCHEMA_VERSION, "devices": [d.to_dict() for d in devices]}


def device_header(device: Device) -> Text:
    """``rpi-zero · Raspberry Pi Zero … · 512 MiB host RAM · 383 MiB usable (basis) · PyTorch: no``"""
    t = Text()
    t.append(device.id, style="bold")
    if device.name != device.id:
        t.append(f" · {device.name}")
    t.append(f" · {format_bytes(device.total_bytes, 0)} {device.memory_kind}")
    t.append(f" · {format_bytes(device.usable_bytes, 0)} usable")
    if device.usable_basis:
        t.append(f" ({device.usable_basis})", style="dim")
    if device.has_host:
        t.append(f" · host {format_bytes(device.host_memory, 0)}")
        if device.host_memory_basis:
            t.append(f" ({device.host_memory_basis})", style="dim")
    if device.pytorch_training != "unknown":
        t.append(" · PyTorch training: ")
        t.append(device.pytorch_training, style=_PT_STYLE.get(device.pytorch_training, ""))
    return t


# --------------------------------------------------------------------------- verdict cells

def fit_cell(f: Fit, show_batch: bool = True) -> Text:
    """``✓ 65M ≤16`` (fits, 65 MiB free, largest batch 16), ``✗ −18M`` (18 MiB short), ``✗ host``
    (the device would do, the host memory not), ``?`` (not known: a lower bound that fits) or
    ``✗ ≥18M`` (short even by the lower bound)."""
    if f.fits is None:
        return Text("?", style="yellow")
    if f.headroom_bytes is None:  # an incomplete estimate over even by its lower bound
        return Text(f"✗ {format_bytes(f.usable_bytes - f.total_bytes, compact=True)}+", style="red")
    batch = f" ≤{f.max_batch_size:,}" if show_batch and not f.capped and f.max_batch_size else ""
    if f.fits:
        return Text(f"✓ {format_bytes(f.headroom_bytes, compact=True)}{batch}", style="green")
    if f.headroom_bytes >= 0 and f.host_fits is False:
        return Text("✗ host", style="red")
    return Text(f"✗ {format_bytes(f.headroom_bytes, compact=True)}{batch}", style="red")


def verdict_table(steps: Mapping[str, StepMemory], fits: Mapping[str, Fit] | None = None,
                  title: str = "Training step memory", first: str = "optimizer") -> Table:
    """One row per optimizer (labelled by the keys of ``steps``, heading ``first``): every part,
    the total and (with a device) fits / headroom / largest batch. Rows keep the order of
    ``steps``. Sizes are compact (M = MiB, G = GiB)."""
    complete = all(s.complete for s in steps.values())
    table = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD,
                  padding=(0, 0))
    parts = shown((s.breakdown for s in steps.values()), where="device")
    offload = bool(shown((s.breakdown for s in steps.values()), where="host"))
    table.add_column(Text(first), no_wrap=True)
    for head in (*(p.heading for p in parts), "total"):
        table.add_column(head, justify="right", no_wrap=True)
    if fits is not None:
        table.add_column("fits (free)", justify="right")
        table.add_column("max batch", justify="right")  # the heading wraps, not the numbers
    for oid, step in steps.items():
        total = format_bytes(step.device_bytes, compact=True) + ("" if step.complete else "+")
        row = [Text(oid), *(_cell(step, p.key) for p in parts), Text(total, style="bold")]
        if fits is not None:
            f = fits[oid]
            row += [fit_cell(f, show_batch=False), f.max_batch_text()]
        table.add_row(*row)
    caption = "K/M/G: KiB/MiB/GiB"
    if offload:
        caption = "total: the device's bytes (the offload's host bytes: below) · " + caption
    if fits is not None:
        caption = "✓ fits with that much free · ✗ short by that much · " + caption
    if not complete:
        caption = ("Activations not known (no architecture for these weights): totals are lower "
                   "bounds (+), ? = not known. " + caption)
    table.caption = caption
    table.caption_justify = "left"
    return table


def _cell(step: StepMemory, key: str) -> str:
    if key in step.breakdown.unknown:
        return "?"
    return format_bytes(step.breakdown[key], compact=True)


def host_table(steps: Mapping[str, StepMemory], fits: Mapping[str, Fit] | None = None,
               device: Device | None = None) -> Table | None:
    """What an offloading recipe keeps on the host, per optimizer: one column per host part, the
    host total and (with a device) whether it fits its host memory. None without host parts."""
    parts = shown((s.breakdown for s in steps.values()), where="host")
    if not parts:
        return None
    where = (f" ({format_bytes(device.host_memory, 0)} host memory of {device.id})"
             if device is not None and device.host_memory else "")
    table = Table(title=f"On the host{where}", title_justify="left", header_style="bold",
                  box=box.SIMPLE_HEAD, padding=(0, 0))
    table.add_column("optimizer", no_wrap=True)
    for head in (*(p.heading for p in parts), "host"):
        table.add_column(head, justify="right", no_wrap=True)
    if fits is not None:
        table.add_column("fits (free)", justify="right", no_wrap=True)
    for oid, step in steps.items():
        row = [oid, *(_cell(step, p.key) for p in parts),
               Text(format_bytes(step.host_bytes, compact=True), style="bold")]
        if fits is not None:
            f = fits[oid]
            free = None if f.host_usable_bytes is None else f.host_usable_bytes - f.host_bytes
            row.append(Text("?" if free is None else
                            f"{'✓' if f.host_fits else '✗'} {format_bytes(free, compact=True)}",
                            style="green" if f.host_fits else "red"))
        table.add_row(*row)
    table.caption = " · ".join(f"{p.heading}: {p.description.removeprefix('offload: ')}" for p in parts)
    table.caption_justify = "left"
    return table


def size_table(devices: Sequence[Device], optimizers: Sequence[str],
               fits: Mapping[str, Mapping[str, Fit]], batch_size: int) -> Table:
    """Devices (rows, in the given order) × optimizers (columns): memory left or missing and the
    largest batch that fits."""
    any_batch = any(not f.capped and f.max_batch_size for row in fits.values() for f in row.values())
    unknown = any(f.fits is None or f.headroom_bytes is None for row in fits.values() for f in row.values())
    caption = "✓ fits, with that much memory free · ✗ does not fit, short by that much"
    if any_batch:
        caption += " · ≤N: largest batch that fits"
    table = Table(title=f"Devices × optimizers at batch {batch_size}", title_justify="left",
                  header_style="bold", box=box.SIMPLE_HEAD, padding=(0, 0),
                  caption=caption + " (K/M/G/T: KiB/MiB/GiB/TiB)", caption_justify="left")
    table.add_column("device", overflow="ellipsis")
    table.add_column("usable", justify="right", no_wrap=True, min_width=6)
    cells = {o: [fit_cell(fits[d.id][o]) for d in devices] for o in optimizers}
    for oid in optimizers:
        widest = max([len(c.plain) for c in cells[oid]] + [len(oid)])
        table.add_column(oid, justify="right", no_wrap=True, min_width=widest)
    for i, d in enumerate(devices):
        name = Text(d.id)
        if not d.runs_pytorch:
            name.append(" ⊘", style="dim")
        table.add_row(name, format_bytes(d.usable_bytes, compact=True), *(cells[o][i] for o in optimizers))
    if any(not d.runs_pytorch for d in devices):
        table.caption += "; ⊘: PyTorch does not run on that device"
    if unknown:
        table.caption += ("; ?: not known (activations not estimated), ✗ N+: short even without "
                          "activations")
    return table


# --------------------------------------------------------------------------- one device, whole report

def judge(steps: Mapping[str, StepMemory], device: Device, batch_size: int) -> dict[str, Fit]:
    """Each optimizer's :class:`Fit` on ``device`` (steps must use ``device.allocator``)."""
    return {oid: judge_one(s, device, batch_size) for oid, s in steps.items()}


def would_fit_table(would_fit: Mapping, device: Device) -> Table:
    """One row per optimizer that does not fit: the smallest change that would (planned for real,
    see :mod:`smmf_plan.alternatives`), its total, what it leaves free and its largest batch."""
    table = Table(title=f"What would fit on {device.id} (the smallest change that fits)",
                  title_justify="left", header_style="bold", box=box.SIMPLE_HEAD, padding=(0, 1))
    for col, just in (("optimizer", "left"), ("change", "left"), ("total", "right"),
                      ("free", "right"), ("max batch", "right")):
        table.add_column(col, justify=just)
    for oid, w in would_fit.items():
        if w.found is None:
            table.add_row(oid, Text("none of them fits", style="red"), "", "", "")
            continue
        f = w.found
        where = f" on {w.device}" if w.device != device.id and f.change != "device" else ""
        table.add_row(oid, Text(f.args + where, style="green"), format_bytes(f.total_bytes, 0),
                      format_bytes(w.headroom_bytes, 0),
                      f"{f.max_batch_size:,}" if f.max_batch_size else "")
    return table


def device_report(steps: Mapping[str, StepMemory], device: Device, batch_size: int,
                  fits: Mapping[str, Fit] | None = None, note: str = "",
                  would_fit: Mapping | None = None):
    """Device line, step table with verdicts, stacked bars, what would fit (``would_fit``) and the
    one-line recommendation, as one rich renderable (what ``smmf-plan MODEL --device X`` shows
    below the model line); ``note`` is appended to the step table's title."""

    fits = dict(fits) if fits is not None else judge(steps, device, batch_size)
    order = sorted(steps, key=lambda o: (steps[o].device_bytes, o))
    ordered = {o: steps[o] for o in order}
    complete = all(s.complete for s in steps.values())
    host = host_table(ordered, fits, device)
    parts = [
        device_header(device),
        verdict_table(ordered, fits, title=f"Training step at batch {batch_size} on {device.id}{note}"),
        *([host] if host is not None else []),
        render_bars([BarRow(o, steps[o].breakdown) for o in order], device.usable_bytes),
    ]
    if would_fit:
        parts.append(would_fit_table({o: would_fit[o] for o in order if o in would_fit}, device))
    parts.append(Text("→ " + recommendation(device, fits, batch_known=complete,
                                            would_fit=would_fit), style="bold"))
    return Group(*parts)
