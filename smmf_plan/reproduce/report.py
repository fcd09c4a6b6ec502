"""Put every optimizer-memory and end-to-end figure of the SMMF paper next to the planned value.

Definitions (also written into the report):

* **paper figure**: a value printed in Tables 1-4 or 6-13, as transcribed in
  ``smmf_plan/data/paper-memory-figures.csv`` (``MiB = 2²⁰ B``, ``GiB = 2³⁰ B``).
* **planned (logical)**: :func:`smmf_plan.plan.plan_state` ``state_bytes``: the bytes of every
  state tensor, SMMF's sign bit-packed (1 bit per element, as the paper says it counts it).
* **planned (CUDA)**: ``allocated_bytes["cuda"]``: device tensors only, each rounded up to the
  512-B block of PyTorch's caching allocator, i.e. what ``torch.cuda.memory_allocated`` sees.
  The paper measured on GPUs, so this is the value compared: ``ratio = planned_cuda / paper`` and
  ``agrees_at_precision`` is true when the CUDA value, rounded half-up to the number of decimals
  the paper printed (in the paper's unit), equals the printed value.
* **end-to-end**: weights + gradients + optimizer state (no activations, no inputs), per the
  recipe's ``training`` accounting (:mod:`.recipes`). For fp32 training each weight and gradient
  tensor is a 512-B rounded allocation in the CUDA figure.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from importlib import resources
from pathlib import Path

from ..allocators import CUDA
from ..optimizers import by_paper_name, parse
from ..plan import plan_state
from . import recipes as R

MiB = 2**20
UNIT_BYTES = {"MiB": 2**20, "GiB": 2**30}
#: the reference code's 8-bit sign, reported beside SMMF's rows.
SMMF_BOOL_ID = "smmf:sign=bool"
JSON_NAME = "paper-reproduction.json"
MD_NAME = "paper-reproduction.md"


@dataclass
class Row:
    table: str
    model: str
    dataset: str
    optimizer: str
    paper_mib: float
    planned_mib: float
    planned_cuda_mib: float
    ratio: float
    agrees_at_precision: bool
    kind: str  # "optimizer" or "end_to_end"
    paper_value: str
    paper_unit: str
    recipe: str
    layout: str
    within_5pct: bool
    within_10pct: bool
    agrees_logical_at_precision: bool
    planned_bool_sign_cuda_mib: float | None = None
    reason: str | None = None
    source_line: int = 0
    definition: str = ""


@dataclass
class Summary:
    total: int
    within_5pct: int
    within_10pct: int
    agrees_at_precision: int
    by_kind: dict[str, dict[str, int]]
    rows: list[Row] = field(repr=False)
    markdown_path: Path | None = None
    json_path: Path | None = None

    def counts(self) -> dict:
        return {"total": self.total, "within_5pct": self.within_5pct,
                "within_10pct": self.within_10pct, "agrees_at_precision": self.agrees_at_precision,
                "by_kind": self.by_kind}


# --------------------------------------------------------------------------- paper figures
def paper_figures() -> list[dict]:
    """The paper's figures as shipped with the package (one dict per CSV row)."""
    text = resources.files("smmf_plan").joinpath("data/paper-memory-figures.csv").read_text("utf-8")
    return list(csv.DictReader(text.splitlines()))


def agrees_at(planned: float, printed: str) -> bool:
    """``planned`` rounded half-up to the decimals of ``printed`` equals ``printed``."""
    p = Decimal(printed)
    q = Decimal(1).scaleb(p.as_tuple().exponent)
    return Decimal(repr(planned)).quantize(q, rounding=ROUND_HALF_UP) == p


# --------------------------------------------------------------------------- planning
def _state(key: str, layout_id: str):
    return plan_state(R.build(key), parse(layout_id))


#: tables whose end-to-end figure holds the gradients (weights + grads + state); the appendix
#: fine-tuning tables 8-13 fit weights + state only (gradients already freed when measured).
GRADS_HELD_TABLES = frozenset({"Table 1", "Table 2", "Table 3", "Table 4", "Table 6", "Table 7"})


def e2e_definition(table: str, training: str) -> str:
    if training == "megatron-mixed":
        return "fp16 weights + fp16 grads + fp32 main weights + fp32 main grads + state"
    return "weights + grads + state" if table in GRADS_HELD_TABLES else "weights + state"


def _end_to_end(key: str, layout_id: str, table: str) -> tuple[int, int]:
    """(logical, CUDA) bytes of the recipe's end-to-end definition for ``table``."""
    specs = R.build(key)
    plan = _state(key, layout_id)
    if R.RECIPES[key].training == "megatron-mixed":
        n = sum(s.numel for s in specs if s.trainable)
        fixed = 12 * n  # fp16 weights + fp16 grads + fp32 main weights + fp32 main grads
        return fixed + plan.state_bytes, fixed + plan.allocated_bytes["cuda"]
    held = [s for s in specs if s.trainable] if table in GRADS_HELD_TABLES else []
    logical = sum(s.nbytes for s in specs) + sum(s.nbytes for s in held)
    cuda = sum(CUDA.round(s.nbytes) for s in (*specs, *held))
    return logical + plan.state_bytes, cuda + plan.allocated_bytes["cuda"]


def build_rows() -> list[Row]:
    rows: list[Row] = []
    for fig in paper_figures():
        key = R.recipe_key(fig["model"], fig["dataset"])
        # the registry's paper name → id (Adafactor's default is beta1=0.9, as the paper ran it)
        lid = by_paper_name(fig["optimizer"]).id
        plan = _state(key, lid)
        e2e_logical, e2e_cuda = _end_to_end(key, lid, fig["table"])
        for kind, printed, unit, logical, cuda in (
            ("optimizer", fig["optimizer_memory_value"], fig["optimizer_memory_unit"],
             plan.state_bytes, plan.allocated_bytes["cuda"]),
            ("end_to_end", fig["end_to_end_value"], fig["end_to_end_unit"], e2e_logical, e2e_cuda),
        ):
            ub = UNIT_BYTES[unit]
            paper_mib = float(Decimal(printed) * ub / MiB)
            ratio = cuda / MiB / paper_mib
            bool_sign = None
            if lid == "smmf" and kind == "optimizer":
                bool_sign = round(_state(key, SMMF_BOOL_ID).allocated_bytes["cuda"] / MiB, 4)
            rows.append(Row(
                table=fig["table"], model=fig["model"], dataset=fig["dataset"],
                optimizer=fig["optimizer"], paper_mib=round(paper_mib, 4),
                planned_mib=round(logical / MiB, 4), planned_cuda_mib=round(cuda / MiB, 4),
                ratio=round(ratio, 4), agrees_at_precision=agrees_at(cuda / ub, printed),
                kind=kind, paper_value=printed, paper_unit=unit, recipe=key, layout=lid,
                within_5pct=abs(ratio - 1) <= 0.05, within_10pct=abs(ratio - 1) <= 0.10,
                agrees_logical_at_precision=agrees_at(logical / ub, printed),
                planned_bool_sign_cuda_mib=bool_sign, source_line=int(fig["source_line"]),
                definition=("optimizer state" if kind == "optimizer" else
                            e2e_definition(fig["table"], R.RECIPES[key].training)),
            ))
    for row in rows:
        row.reason = explain(row, rows)
    return rows


# --------------------------------------------------------------------------- explanations
def _unit(printed: str) -> Decimal:
    """One unit of the last printed digit."""
    return Decimal(1).scaleb(Decimal(printed).as_tuple().exponent)


def _fmt(v: float) -> str:
    return f"{v:.1f}" if abs(v) >= 1 else f"{v:.2f}"


def _run(row: Row, rows: list[Row], kind: str) -> list[Row]:
    """Rows of the same table, model and dataset (one training run per optimizer)."""
    return [r for r in rows if r.table == row.table and r.model == row.model
            and r.dataset == row.dataset and r.kind == kind]


def _explain_optimizer(row: Row, rows: list[Row]) -> str:
    same = [r for r in rows if r.table == row.table and r.model == row.model
            and r.optimizer == row.optimizer and r.kind == "optimizer"]
    printed = sorted({Decimal(r.paper_value) for r in same})
    if row.model == "LLaMA-7b" and row.optimizer == "CAME" and row.table == "Table 4":
        return ("paper inconsistency: Table 4 prints CAME 86 MiB for LLaMA-7b/LoRA, Table 7 prints 96 MiB "
                "for the same model and optimizer. CAME keeps Adafactor's state plus a second factored "
                "statistic, so it must exceed Adafactor's 86 MiB; the plan (96.0 MiB) matches Table 7.")
    if row.dataset in R.GLUE_LABELS and len(printed) > 1:
        others = [r for r in same if r.paper_value != row.paper_value]
        return (f"paper inconsistency: the same model and optimizer is printed as "
                f"{', '.join(str(v) for v in printed)} MiB across the five GLUE tasks, although the task "
                f"heads differ by at most 1,536 parameters (< 0.01 MiB); the plan "
                f"({_fmt(row.planned_cuda_mib)} MiB) is within "
                f"{max(abs(r.ratio - 1) for r in others):.1%} of the other tasks' figures.")
    if row.table == "Table 3" and row.optimizer == "CAME":
        af = next(r for r in _run(row, rows, "optimizer") if r.optimizer == "Adafactor")
        return (f"paper inconsistency (or a rounding knife-edge): CAME is printed 0.9 GiB but Adafactor and "
                f"SM3 0.8 GiB for the same T5. CAME's state is Adafactor's plus one more pair of factored "
                f"vectors: {_fmt(row.planned_cuda_mib - af.planned_cuda_mib)} MiB more here, so both "
                f"figures can only be right if they straddle 0.85 GiB within that margin; planned "
                f"Adafactor is {af.planned_cuda_mib / 1024:.3f} GiB.")
    if row.model == "Transformer-big":
        return ("unstated vocabulary: the WMT32k vocabulary file is nominally 32,768 subwords (used here), "
                "but Table 2 fits a slightly larger one. Adafactor/SM3/CAME keep ≈ half of Adam's state, "
                "so their 1.1 GiB (≥ 1.05) needs ≥ 282M parameters, i.e. a vocabulary ≥ 34.2k; SMMF's .04 "
                "(≥ 0.035 GiB ≈ N/8 + vectors) needs ≈ 35k; but Transformer-base's Adam e2e 1.4 GiB "
                "(16 B per parameter) caps the shared vocabulary at 34.6k. No single vocabulary prints all "
                "20 Table 2 figures (34.5k prints 18 of 20), so the two models' figures are mutually "
                "inconsistent by < 1 %; the build keeps the dataset's nominal 32k (11 of 20).")
    unit = _unit(row.paper_value)
    if row.agrees_at_precision:
        return (f"agrees at the printed precision: {row.paper_value} {row.paper_unit} has a resolution of "
                f"{unit} {row.paper_unit} ({float(unit) / float(row.paper_value):.0%} of the figure), so "
                f"the {abs(row.ratio - 1):.1%} gap is below what the paper can express.")
    if row.optimizer == "SMMF":
        return (f"one unit of the last printed digit off: the paper prints {row.paper_value} "
                f"{row.paper_unit} (resolution {unit}), the plan gives "
                f"{row.planned_cuda_mib / (UNIT_BYTES[row.paper_unit] / MiB):.3f}. The same accounting "
                f"(1-bit sign + 512-B blocks) is within 2.5 % on every other CNN figure; the bool sign "
                f"would be {row.planned_bool_sign_cuda_mib} MiB and the unrounded 1-bit sign "
                f"{row.planned_mib} MiB, both further away.")
    return "not explained by the optimizer-state layout."


def _explain_e2e(row: Row, rows: list[Row]) -> str:
    """Compare the paper's (e2e - optimizer) with the plan's (weights [+ grads]) across the run."""
    ub = UNIT_BYTES[row.paper_unit] / MiB
    opt = {r.optimizer: r for r in _run(row, rows, "optimizer")}

    def offset(r: Row) -> float:  # MiB the paper holds beyond our weights (+grads) + its own opt figure
        o = opt[r.optimizer]
        return (r.paper_mib - o.paper_mib) - (r.planned_cuda_mib - o.planned_cuda_mib)

    run = _run(row, rows, "end_to_end")
    mine = offset(row)
    others = sorted(offset(r) for r in run if r is not row)
    median = others[len(others) // 2] if others else 0.0
    base = row.planned_cuda_mib - opt[row.optimizer].planned_cuda_mib
    listing = ", ".join(f"{r.optimizer} {offset(r):+.0f}" for r in run)
    tolerance = max(10.0, 0.03 * row.paper_mib,
                    float(_unit(row.paper_value)) * ub / 2 + float(_unit(opt[row.optimizer].paper_value))
                    * UNIT_BYTES[opt[row.optimizer].paper_unit] / MiB / 2)
    what = row.definition.removesuffix(" + state")
    if len(others) >= 2 and abs(mine - median) > tolerance:
        return (f"paper inconsistency: e2e − optimizer is {row.paper_mib - opt[row.optimizer].paper_mib:.0f} "
                f"MiB here, but the run's other optimizers imply {what} ({base:.0f} MiB planned) "
                f"{median:+.0f} MiB. Paper-minus-plan offset of (e2e − optimizer) per optimizer, MiB: "
                f"{listing}; this one departs from the others by {mine - median:+.0f} MiB, more than "
                f"the printed resolution and the run-to-run spread allow.")
    spread = (f" (the two runs differ by {abs(mine - median):.0f} MiB in it)"
              if len(others) == 1 and abs(mine - median) > tolerance else "")
    return (f"a constant the plan does not model: the paper's e2e exceeds its own optimizer figure + "
            f"{what} ({base:.0f} MiB planned) by {mine:+.0f} MiB, as in the run's other optimizers "
            f"(MiB: {listing}){spread}. The optimizer-dependent part is reproduced; the rest is memory "
            f"that is neither a parameter, a gradient nor optimizer state (batch tensors, activations "
            f"or buffers alive when the paper measured).")


def explain(row: Row, rows: list[Row]) -> str | None:
    """Why a figure is not within 5 % of the plan (None when it is)."""
    if row.within_5pct:
        return None
    if row.kind == "optimizer":
        return _explain_optimizer(row, rows)
    return _explain_e2e(row, rows)


# --------------------------------------------------------------------------- output
def summarize(rows: list[Row]) -> Summary:
    by_kind: dict[str, dict[str, int]] = {}
    for kind in ("optimizer", "end_to_end"):
        rs = [r for r in rows if r.kind == kind]
        by_kind[kind] = {
            "total": len(rs), "within_5pct": sum(r.within_5pct for r in rs),
            "within_10pct": sum(r.within_10pct for r in rs),
            "agrees_at_precision": sum(r.agrees_at_precision for r in rs),
        }
    return Summary(
        total=len(rows), within_5pct=sum(r.within_5pct for r in rows),
        within_10pct=sum(r.within_10pct for r in rows),
        agrees_at_precision=sum(r.agrees_at_precision for r in rows), by_kind=by_kind, rows=rows,
    )


def json_document(summary: Summary) -> dict:
    """``paper-reproduction.json``."""
    from ..report import SCHEMA_VERSION

    doc = {
        "schema_version": SCHEMA_VERSION,
        "source": "Park & Lee, SMMF (AAAI 2025), Tables 1-4 and 6-13",
        "compared": "planned_cuda_mib (1-bit packed sign, 512-B CUDA allocation rounding)",
        "summary": summary.counts(),
        "recipes": {k: {"architecture": r.architecture, "why": r.why, "inferred": r.inferred,
                        "training": r.training}
                    for k, r in sorted(R.RECIPES.items())},
        "rows": [asdict(r) for r in summary.rows],
    }
    return doc


def reproduce(output_dir: str | os.PathLike = "reports") -> Summary:
    """Plan every paper figure, write ``paper-reproduction.md`` and ``.json`` into ``output_dir``
    (atomically, deterministic content) and return the summary."""
    from ..atomic import write_json_atomic, write_text_atomic
    from .markdown import render

    rows = build_rows()
    summary = summarize(rows)
    out = Path(output_dir)
    summary.json_path = out / JSON_NAME
    summary.markdown_path = out / MD_NAME
    write_json_atomic(summary.json_path, json_document(summary), indent=1, make_dirs=True)
    write_text_atomic(summary.markdown_path, render(summary), make_dirs=True)
    return summary
