"""Rich tables for distributed plans: every group of ranks with identical figures, per optimizer,
the largest and smallest marked (its JSON is each step entry's ``ranks``)."""

from __future__ import annotations

from typing import Mapping

from rich import box
from rich.table import Table
from rich.text import Text

from ..breakdown import StepMemory, shown
from ..units import format_bytes

#: marks of the largest and smallest rank (words as well, so they read in monochrome).
LARGEST, SMALLEST = "▲ largest", "▼ smallest"


def sharding_header(sharding) -> Text:
    """``Distributed: fsdp2 over 8 ranks · per-rank figures below; the largest rank decides``"""
    t = Text("Distributed: ", style="bold")
    t.append(sharding.describe())
    t.append(" · every figure below is one rank's; the largest rank decides the fit", style="dim")
    return t


def rank_table(steps: Mapping[str, StepMemory], sharding, batch_size: int) -> Table:
    """One row per group of ranks with identical figures, per optimizer (in ``steps``' order):
    the ranks, how many, the logical state, the parts in which ranks differ and the total; the
    largest and the smallest rank marked. A 1,024-rank plan has as many rows per optimizer as it has distinct
    rank shapes."""
    rows = [r.breakdown for s in steps.values() for r in s.ranks]
    # the parts in which some ranks differ (the step table above has the largest rank's others)
    parts = [p for p in shown(rows)
             if any(len({r.breakdown[p.key] for r in s.ranks}) > 1 for s in steps.values())]
    table = Table(title=f"Per rank at batch {batch_size} ({sharding.scheme}, "
                        f"{sharding.world:,} ranks): ranks with identical figures grouped",
                  title_justify="left", header_style="bold", box=box.SIMPLE_HEAD, padding=(0, 0),
                  caption="state bytes: one rank's logical optimizer state, exactly; the parts "
                          "shown are those in which ranks differ · K/M/G: KiB/MiB/GiB",
                  caption_justify="left")
    for head, just in (("optimizer", "left"), ("ranks", "left"), ("n", "right"),
                       ("state bytes", "right")):
        table.add_column(head, justify=just, no_wrap=True)
    for p in parts:
        table.add_column(p.heading, justify="right", no_wrap=True)
    table.add_column("total", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True, min_width=11)
    for oid, step in steps.items():
        ranks = list(step.ranks)
        if not ranks:
            continue
        totals = [r.total_bytes for r in ranks]
        hi, lo = totals.index(max(totals)), totals.index(min(totals))
        for i, r in enumerate(ranks):
            mark = ""
            if len(ranks) > 1:
                mark = LARGEST if i == hi else SMALLEST if i == lo else ""
            label = r.label().removeprefix("ranks ").removeprefix("rank ")
            table.add_row(Text(oid if i == 0 else ""), label, f"{r.count:,}",
                          f"{r.state_bytes:,}",
                          *(format_bytes(r.breakdown[p.key], compact=True) for p in parts),
                          Text(format_bytes(r.total_bytes, compact=True), style="bold"),
                          Text(mark, style="bold" if i == hi else "dim"))
    return table


# --------------------------------------------------------------------------- size --dist
def world_cell(answer) -> Text:
    """``4 × (✓ 3.2G free)`` or ``✗ > 16,384``."""
    if answer.world is None:
        return Text("✗ none", style="red")
    t = Text(f"{answer.world:,} ×", style="green")
    t.append(f" ({format_bytes(answer.headroom_bytes, compact=True)} free)", style="dim")
    return t


def world_table(search, devices, order, batch_size: int) -> Table:
    """Devices (rows) × optimizers: the smallest number of that device that fits."""
    table = Table(title=f"Smallest number of each device that fits ({search.scheme}, batch "
                        f"{batch_size} per rank)", title_justify="left", header_style="bold",
                  box=box.SIMPLE_HEAD, padding=(0, 1),
                  caption="N × : ranks (one per device) at which the largest rank fits, with "
                          "what it leaves free · ✗ none: no world size up to the search cap fits",
                  caption_justify="left")
    table.add_column("device", no_wrap=True)
    table.add_column("usable", justify="right", no_wrap=True)
    for oid in order:
        table.add_column(oid, justify="right", no_wrap=True)
    for d in devices:
        row = search.answers[d.id]
        table.add_row(d.id, format_bytes(d.usable_bytes, compact=True), *(world_cell(row[o]) for o in order))
    return table


def answers_table(search, devices, order) -> Table:
    """The largest rank's breakdown behind each answer: one row per device × optimizer."""
    answers = [search.answers[d.id][o] for d in devices for o in order]
    parts = shown(a.step.breakdown for a in answers)
    table = Table(title="The largest rank behind each answer", title_justify="left",
                  header_style="bold", box=box.SIMPLE_HEAD, padding=(0, 0),
                  caption="ranks: the world size of the answer (at the search cap where none "
                          "fits) · K/M/G: KiB/MiB/GiB", caption_justify="left")
    for head, just in (("device", "left"), ("optimizer", "left"), ("ranks", "right")):
        table.add_column(head, justify=just, no_wrap=True)
    for p in parts:
        table.add_column(p.heading, justify="right", no_wrap=True)
    table.add_column("total", justify="right", no_wrap=True)
    previous = None
    for a in answers:
        table.add_row(a.device.id if a.device.id != previous else "", a.optimizer,
                      f"{a.planned_world:,}" + ("" if a.fits else " ✗"),
                      *(format_bytes(a.step.breakdown[p.key], compact=True) for p in parts),
                      Text(format_bytes(a.step.total_bytes, compact=True), style="bold"))
        previous = a.device.id
    return table
