"""Rich tables for optimizer-state plans and per-parameter shapes."""

from __future__ import annotations

from typing import Sequence

from rich.table import Table
from rich.text import Text

from ..model import ModelSpec
from ..optimizers import OptimizerVariant, parse
from ..plan import StatePlan
from ..shapes import square_matricize
from ..units import format_bytes
from .state_json import _param_bytes


def model_header(model: ModelSpec) -> Text:
    """``name (source) · Class · N M params in T tensors [· M trainable] · dtype`` (the class
    built and the dtype planned, ``--dtype`` already applied to the parameters)."""
    t = Text()
    t.append(model.name, style="bold")
    t.append(f" ({model.source})")
    if model.architecture:
        t.append(f" · {model.architecture}")
    t.append(f" · {model.num_params / 1e6:,.1f} M params in {model.num_tensors} tensors")
    if model.trainable_params != model.num_params:
        t.append(f" · {model.trainable_params / 1e6:,.2f} M trainable")
    dts = model.dtypes
    if len(dts) > 1:
        total = sum(dts.values()) or 1
        t.append(" · mixed: " + ", ".join(f"{d} {_share(n / total)}" for d, n in dts.items()))
    elif dts:
        t.append(" · " + next(iter(dts)))
    return t


def _share(x: float) -> str:
    return f"{x:.0%}" if 0.01 <= x <= 0.99 or x in (0.0, 1.0) else ("<1%" if x < 0.01 else ">99%")


def state_table(plans: dict[str, StatePlan], adam_bytes: int, title: str = "Optimizer state") -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("optimizer")
    table.add_column("state", justify="right")
    table.add_column("CUDA alloc.", justify="right")
    table.add_column("CPU alloc.", justify="right")
    table.add_column("× Adam", justify="right")
    table.add_column("saving", justify="right")
    runnable = [p for p in plans.values() if not p.unsupported]
    best = min(runnable, key=lambda p: p.state_bytes).id if runnable else None
    for oid, p in plans.items():
        if p.unsupported:
            table.add_row(Text(oid, style="dim"), "cannot run", "", "", "", "", style="dim")
            continue
        ratio = p.state_bytes / adam_bytes if adam_bytes else float("nan")
        saving = 1 - ratio
        # the smallest is marked with a word as well as a colour, so it reads in monochrome
        name = Text(oid + (" (least)" if oid == best and len(plans) > 1 else ""),
                    style="bold green" if oid == best else "")
        table.add_row(
            name, format_bytes(p.state_bytes, 2), format_bytes(p.allocated_bytes["cuda"], 2),
            format_bytes(p.allocated_bytes["cpu"], 2), f"{ratio:.3f}",
            Text(f"{saving:+.1%}", style="green" if saving > 0 else ("red" if saving < 0 else "")),
        )
    notes = state_notes(plans)
    if notes:
        table.caption = "\n".join(notes)
        table.caption_justify = "left"
    return table


def state_notes(plans: dict[str, StatePlan]) -> list[str]:
    """One line per optimizer that cannot run on the model (why) or treats parameter groups
    differently (how many in each), and the rule that chose the groups, once."""
    notes, rules = [], []
    for oid, p in plans.items():
        if p.unsupported:
            notes.append(f"{oid}: cannot run: {p.unsupported}")
        elif p.groups:
            notes.append(f"{oid}: " + ", ".join(f"{n} parameters in group {g}"
                                               for g, n in p.groups.items()))
            rule = parse(oid).info.target_rule
            if rule and rule not in rules:
                rules.append(rule)
    return notes + rules


def shapes_table(model: ModelSpec, layouts: Sequence[OptimizerVariant]) -> Table:
    table = Table(title="Parameters", title_justify="left", header_style="bold")
    for col, just in (("name", "left"), ("shape", "right"), ("dtype", "left"), ("numel", "right"),
                      ("SMMF n̂×m̂", "right")):
        table.add_column(col, justify=just)
    for layout in layouts:
        table.add_column(layout.id, justify="right")
    for spec in model.params:
        n, m = square_matricize(spec.shape)
        cells = [_cell(v, spec) for v in layouts]
        table.add_row(
            spec.name, "×".join(map(str, spec.shape)) or "()", spec.dtype, f"{spec.numel:,}",
            f"{n}×{m}", *cells, style=None if spec.trainable else "dim",
        )
    return table


def recipe_line(estimate) -> Text:
    """``recipe: AMP bfloat16 (float32 master weights) · batch 4 × 8 micro-steps = 32`` for a step
    estimate (:class:`~smmf_plan.memory.MemoryEstimate`)."""
    info = estimate.recipe_info
    t = Text("recipe: ", style="bold")
    t.append(next((a[len("recipe: "):] for a in estimate.assumptions if a.startswith("recipe: ")), ""))
    ranks = info.get("data_parallel_ranks", 1)
    if info.get("grad_accum", 1) > 1 or ranks > 1:
        factors = [f"{info['grad_accum']} micro-steps"] if info.get("grad_accum", 1) > 1 else []
        factors += [f"{ranks:,} ranks"] if ranks > 1 else []
        t.append(f" · micro-batch {info['micro_batch_size']} × {' × '.join(factors)} = effective "
                 f"batch {info['effective_batch_size']:,}")
    return t


def assumptions_text(assumptions: Sequence[str]) -> Text:
    """The assumptions an estimate was made with, one bullet each (always shown: a plan is only
    as good as what it assumes)."""
    t = Text("Assumptions:\n", style="bold")
    for a in assumptions:
        t.append(f"  • {a}\n", style="dim")
    t.rstrip()
    return t


def _cell(layout: OptimizerVariant, spec) -> str:
    if not spec.trainable:
        return "frozen"
    n = _param_bytes(layout, spec)
    return "cannot run" if n is None else format_bytes(n, 1)
