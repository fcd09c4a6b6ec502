"""Why a reproduced figure is outside 5 % of the plan: a category, and the values behind it.

Each :class:`Reason` is one kind of explanation. :func:`explain` tries them in order on a row and
returns the first that applies with the values it rests on; every rule reads only data — the
paper's printed figures, the plans, the optimizers' state layouts and the recipes' open details —
never a model's name, and every value is computed from those, never typed in. :func:`text` words
a reason for the report; the JSON keeps the category and the values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from enum import Enum
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..optimizers import parse
from ..shapes import ParamSpec
from . import recipes as R

if TYPE_CHECKING:  # pragma: no cover
    from .report import Row

MiB = 2**20
UNIT_BYTES = {"MiB": 2**20, "GiB": 2**30}


class Reason(str, Enum):
    """The kinds of explanation, each with the heading it is listed under in the report."""

    #: the plan prints the paper's value; the gap is below the paper's printed resolution.
    BELOW_RESOLUTION = "below-printed-resolution"
    #: the plan prints one unit of the paper's last digit away.
    ONE_PRINTED_UNIT = "one-printed-unit-off"
    #: an optimizer whose state holds another's (and more, by over a printed unit) is printed
    #: no larger than it in the same run.
    SUPERSET_PRINTED_NOT_LARGER = "superset-printed-not-larger"
    #: two optimizers one printed unit apart whose planned states differ by less than a unit:
    #: both printed values hold only if the states straddle the rounding boundary.
    STRADDLES_ROUNDING = "straddles-rounding-boundary"
    #: the same model and optimizer printed differently across tasks whose plans differ by less
    #: than a printed unit.
    DIFFERS_ACROSS_TASKS = "differs-across-tasks"
    #: a dimension the paper does not state (a vocabulary) would have to differ from the nominal.
    UNSTATED_DETAIL = "unstated-detail"
    #: end-to-end minus optimizer departs from what the run's other optimizers imply.
    E2E_DEPARTS_FROM_RUN = "e2e-departs-from-run"
    #: end-to-end exceeds optimizer + weights (+ grads) by a per-run constant the plan omits.
    E2E_UNMODELLED_CONSTANT = "e2e-unmodelled-constant"
    #: none of the above.
    UNEXPLAINED = "unexplained"

    @property
    def heading(self) -> str:
        return HEADINGS[self]


INCONSISTENCY = "Paper inconsistencies"
HEADINGS = {
    Reason.BELOW_RESOLUTION: "Below or at the paper's printed resolution",
    Reason.ONE_PRINTED_UNIT: "Below or at the paper's printed resolution",
    Reason.SUPERSET_PRINTED_NOT_LARGER: INCONSISTENCY,
    Reason.STRADDLES_ROUNDING: INCONSISTENCY,
    Reason.DIFFERS_ACROSS_TASKS: INCONSISTENCY,
    Reason.E2E_DEPARTS_FROM_RUN: INCONSISTENCY,
    Reason.UNSTATED_DETAIL: "A model detail the paper leaves open",
    Reason.E2E_UNMODELLED_CONSTANT: "End-to-end: a per-run constant that is not parameters, "
                                    "gradients or optimizer state",
    Reason.UNEXPLAINED: "Other",
}


@dataclass(frozen=True)
class Explanation:
    reason: Reason
    values: dict[str, Any]


#: ``figure(specs, row) -> CUDA bytes``: the row's figure (optimizer state or end-to-end, by its
#: table's accounting) planned for other specs of its recipe (see :func:`report.figure_bytes`).
Figure = Callable[[Sequence[Any], "Row"], int]


@dataclass
class Context:
    """What the rules share while one report is explained: how to plan a figure, and the scans
    of open details already made."""

    figure: Figure
    scans: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers
def resolution(printed: str) -> Decimal:
    """One unit of the last printed digit, in the printed unit."""
    return Decimal(1).scaleb(Decimal(printed).as_tuple().exponent)


def prints_as(value_in_unit: float, printed: str) -> Decimal:
    """``value_in_unit`` rounded half-up to the decimals of ``printed``."""
    return Decimal(repr(value_in_unit)).quantize(resolution(printed), rounding=ROUND_HALF_UP)


def _in_unit(row: "Row", mib: float) -> float:
    return mib * MiB / UNIT_BYTES[row.paper_unit]


def _unit_mib(row: "Row") -> float:
    return float(resolution(row.paper_value)) * UNIT_BYTES[row.paper_unit] / MiB


def _same(rows: Sequence["Row"], row: "Row", *keys: str) -> list["Row"]:
    return [r for r in rows if r is not row and all(getattr(r, k) == getattr(row, k) for k in keys)]


def _run(rows: Sequence["Row"], row: "Row", kind: str) -> list["Row"]:
    """Rows of one training run (same table, model, dataset) of one kind, this one included."""
    return [r for r in rows if (r.table, r.model, r.dataset, r.kind) ==
            (row.table, row.model, row.dataset, kind)]


@lru_cache(maxsize=None)
def state_contains(outer: str, inner: str) -> bool:
    """Whether optimizer ``outer`` keeps every state tensor ``inner`` keeps (same name, shape,
    dtype), for parameters of rank 0-4: then its state is never smaller."""
    a, b = parse(outer), parse(inner)
    for shape in ((), (7,), (12, 5), (8, 3, 3, 3)):
        spec = ParamSpec("p", shape)
        have = {(t.name, t.shape, t.dtype) for t in a.state(spec)}
        if not {(t.name, t.shape, t.dtype) for t in b.state(spec)} <= have:
            return False
    return True


# --------------------------------------------------------------------------- optimizer rules
def _below_resolution(row, rows, ctx):
    if not row.agrees_at_precision:
        return None
    res = resolution(row.paper_value)
    return {"printed": row.paper_value, "unit": row.paper_unit, "resolution": float(res),
            "resolution_pct": round(100 * float(res) / float(row.paper_value), 2),
            "gap_pct": round(100 * abs(row.ratio - 1), 2)}


def _one_printed_unit(row, rows, ctx):
    planned = _in_unit(row, row.planned_cuda_mib)
    shown = prints_as(planned, row.paper_value)
    res = resolution(row.paper_value)
    if abs(shown - Decimal(row.paper_value)) != res:
        return None
    peers = [r for r in _same(rows, row, "table", "optimizer", "kind")]
    values = {"printed": row.paper_value, "unit": row.paper_unit, "resolution": float(res),
              "planned": round(planned, 4), "plan_prints": str(shown),
              "table_others_max_gap_pct": round(100 * max(abs(r.ratio - 1) for r in peers), 2)
              if peers else None}
    if row.planned_bool_sign_cuda_mib is not None:
        values["bool_sign_mib"] = row.planned_bool_sign_cuda_mib
        values["unrounded_mib"] = row.planned_mib
    return values


def _superset_printed_not_larger(row, rows, ctx):
    for other in _run(rows, row, "optimizer"):
        if other is row or other.paper_unit != row.paper_unit:
            continue
        if not state_contains(row.layout, other.layout):
            continue
        difference = row.planned_cuda_mib - other.planned_cuda_mib
        if Decimal(row.paper_value) <= Decimal(other.paper_value) and difference > _unit_mib(row):
            elsewhere = [{"table": r.table, "dataset": r.dataset, "printed": r.paper_value,
                          "ratio": r.ratio}
                         for r in rows if r.table != row.table and r.model == row.model
                         and r.optimizer == row.optimizer and r.kind == row.kind and r.within_5pct]
            return {"contains": other.optimizer, "printed": row.paper_value,
                    "contained_printed": other.paper_value, "unit": row.paper_unit,
                    "planned_difference_mib": round(difference, 4),
                    "resolution_mib": _unit_mib(row), "elsewhere": elsewhere}
    return None


def _straddles_rounding(row, rows, ctx):
    res = resolution(row.paper_value)
    for other in _run(rows, row, "optimizer"):
        if other is row or other.paper_unit != row.paper_unit or resolution(other.paper_value) != res:
            continue
        if not state_contains(row.layout, other.layout):
            continue
        difference = row.planned_cuda_mib - other.planned_cuda_mib
        if Decimal(row.paper_value) - Decimal(other.paper_value) == res and difference < _unit_mib(row):
            boundary = Decimal(other.paper_value) + res / 2
            return {"other": other.optimizer, "printed": row.paper_value,
                    "other_printed": other.paper_value, "unit": row.paper_unit,
                    "boundary": float(boundary), "planned_difference_mib": round(difference, 4),
                    "planned": round(_in_unit(row, row.planned_cuda_mib), 4),
                    "other_planned": round(_in_unit(other, other.planned_cuda_mib), 4)}
    return None


def _differs_across_tasks(row, rows, ctx):
    tasks = [r for r in rows if (r.table, r.model, r.optimizer, r.kind) ==
             (row.table, row.model, row.optimizer, row.kind)]
    printed = sorted({Decimal(r.paper_value) for r in tasks})
    if len(tasks) < 2 or len(printed) < 2:
        return None
    planned = [r.planned_cuda_mib for r in tasks]
    if max(planned) - min(planned) >= _unit_mib(row):
        return None
    params = [sum(s.numel for s in R.build(r.recipe) if s.trainable) for r in tasks]
    others = [r for r in tasks if r.paper_value != row.paper_value]
    return {"printed_values": [str(v) for v in printed], "unit": row.paper_unit,
            "tasks": len(tasks), "planned_spread_mib": round(max(planned) - min(planned), 4),
            "trainable_params_spread": max(params) - min(params),
            "others_max_gap_pct": round(100 * max(abs(r.ratio - 1) for r in others), 2)}


def _unstated_detail(row, rows, ctx):
    detail = R.RECIPES[row.recipe].open_detail
    if detail is None or row.agrees_at_precision:
        return None
    scan = _scan(row.table, detail.name, rows, ctx)
    needed = scan["prints"][_key(row)]
    if not needed:
        return None
    return {"detail": detail.name, "nominal": detail.nominal, "needed_from": min(needed),
            "needed_to": max(needed), "searched": [min(detail.candidates), max(detail.candidates)],
            "best": scan["best"], "best_prints": scan["best_prints"],
            "nominal_prints": scan["nominal_prints"], "figures": scan["figures"]}


def _key(row) -> tuple:
    return (row.table, row.model, row.dataset, row.optimizer, row.kind)


def _scan(table: str, name: str, rows: Sequence["Row"], ctx: Context) -> dict:
    """For every candidate value of the open detail ``name``: which of ``table``'s figures of
    the recipes sharing it the plan prints (made once per table and detail)."""
    if (table, name) in ctx.scans:
        return ctx.scans[(table, name)]
    group = [r for r in rows if r.table == table and R.RECIPES[r.recipe].open_detail is not None
             and R.RECIPES[r.recipe].open_detail.name == name]
    detail = R.RECIPES[group[0].recipe].open_detail
    prints: dict[tuple, list[int]] = {_key(r): [] for r in group}
    count: dict[int, int] = {}
    for value in detail.candidates:
        n = 0
        for r in group:
            specs = R.RECIPES[r.recipe].open_detail.build(value)
            if prints_as(ctx.figure(specs, r) / UNIT_BYTES[r.paper_unit], r.paper_value) == Decimal(r.paper_value):
                prints[_key(r)].append(value)
                n += 1
        count[value] = n
    best = max(detail.candidates, key=lambda v: (count[v], -v))
    ctx.scans[(table, name)] = {"prints": prints, "best": best, "best_prints": count[best],
                                "nominal_prints": count.get(detail.nominal, 0),
                                "figures": len(group)}
    return ctx.scans[(table, name)]


# --------------------------------------------------------------------------- end-to-end rules
def _e2e_offsets(row, rows):
    """Per optimizer of the run: MiB the paper holds beyond the plan's weights (+ grads) and the
    paper's own optimizer figure."""
    opt = {r.optimizer: r for r in _run(rows, row, "optimizer")}
    run = _run(rows, row, "end_to_end")

    def offset(r):
        o = opt[r.optimizer]
        return (r.paper_mib - o.paper_mib) - (r.planned_cuda_mib - o.planned_cuda_mib)

    return opt, run, {r.optimizer: round(offset(r), 4) for r in run}


def _e2e_common(row, rows):
    opt, run, offsets = _e2e_offsets(row, rows)
    mine = offsets[row.optimizer]
    others = sorted(v for k, v in offsets.items() if k != row.optimizer)
    median = others[len(others) // 2] if others else 0.0
    o = opt[row.optimizer]
    tolerance = max(10.0, 0.03 * row.paper_mib,
                    _unit_mib(row) / 2 + _unit_mib(o) / 2)
    return {"definition": row.definition.removesuffix(" + state"),
            "planned_mib": round(row.planned_cuda_mib - o.planned_cuda_mib, 4),
            "e2e_minus_optimizer_mib": round(row.paper_mib - o.paper_mib, 4),
            "offset_mib": mine, "run_offsets_mib": offsets, "run_median_mib": median,
            "tolerance_mib": round(tolerance, 4)}, others


def _e2e_departs(row, rows, ctx):
    values, others = _e2e_common(row, rows)
    departure = values["offset_mib"] - values["run_median_mib"]
    if len(others) >= 2 and abs(departure) > values["tolerance_mib"]:
        return {**values, "departure_mib": round(departure, 4)}
    return None


def _e2e_constant(row, rows, ctx):
    values, others = _e2e_common(row, rows)
    departure = values["offset_mib"] - values["run_median_mib"]
    differ = round(abs(departure), 4) if len(others) == 1 and abs(departure) > values["tolerance_mib"] else None
    return {**values, "runs_differ_mib": differ}


RULES = {
    "optimizer": ((Reason.SUPERSET_PRINTED_NOT_LARGER, _superset_printed_not_larger),
                  (Reason.DIFFERS_ACROSS_TASKS, _differs_across_tasks),
                  (Reason.STRADDLES_ROUNDING, _straddles_rounding),
                  (Reason.UNSTATED_DETAIL, _unstated_detail),
                  (Reason.BELOW_RESOLUTION, _below_resolution),
                  (Reason.ONE_PRINTED_UNIT, _one_printed_unit)),
    "end_to_end": ((Reason.E2E_DEPARTS_FROM_RUN, _e2e_departs),
                   (Reason.E2E_UNMODELLED_CONSTANT, _e2e_constant)),
}


def explain(row: "Row", rows: Sequence["Row"], ctx: Context) -> Explanation | None:
    """Why ``row`` is not within 5 % of the plan (None when it is)."""
    if row.within_5pct:
        return None
    for reason, rule in RULES[row.kind]:
        values = rule(row, rows, ctx)
        if values is not None:
            return Explanation(reason, values)
    return Explanation(Reason.UNEXPLAINED, {})


# --------------------------------------------------------------------------- wording
def _f(v: float) -> str:
    return f"{v:.1f}" if abs(v) >= 1 else f"{v:.2f}"


def _k(v: int) -> str:
    return f"{v / 1000:.1f}k"


def text(row: "Row", e: Explanation) -> str:
    """One paragraph for the report, from the category and its values only."""
    v, R_ = e.values, Reason
    if e.reason is R_.BELOW_RESOLUTION:
        return (f"agrees at the printed precision: {v['printed']} {v['unit']} has a resolution of "
                f"{v['resolution']:g} {v['unit']} ({v['resolution_pct']:.0f}% of the figure), so the "
                f"{v['gap_pct']:.1f}% gap is below what the paper can express.")
    if e.reason is R_.ONE_PRINTED_UNIT:
        s = (f"one unit of the last printed digit off: the paper prints {v['printed']} {v['unit']} "
             f"(resolution {v['resolution']:g}), the plan gives {v['planned']:.3f}, which prints "
             f"{v['plan_prints']}.")
        if v.get("table_others_max_gap_pct") is not None:
            s += (f" The same accounting is within {v['table_others_max_gap_pct']:.1f}% on every "
                  f"other {row.optimizer} figure of {row.table}")
            s += (f"; the bool sign would be {v['bool_sign_mib']} MiB and the unrounded 1-bit sign "
                  f"{v['unrounded_mib']} MiB." if "bool_sign_mib" in v else ".")
        return s
    if e.reason is R_.SUPERSET_PRINTED_NOT_LARGER:
        where = "; ".join(f"{x['table']} ({x['dataset']}) prints {x['printed']} {v['unit']}, "
                          f"ratio {x['ratio']:.3f}" for x in v["elsewhere"])
        return (f"paper inconsistency: {row.optimizer} keeps every state tensor {v['contains']} keeps "
                f"and more ({_f(v['planned_difference_mib'])} MiB more here, over the printed "
                f"resolution of {v['resolution_mib']:g} MiB), yet {row.table} prints it "
                f"{v['printed']} {v['unit']} against {v['contains']}'s {v['contained_printed']}."
                + (f" Elsewhere the same model and optimizer match the plan: {where}." if where else ""))
    if e.reason is R_.STRADDLES_ROUNDING:
        return (f"paper inconsistency (or a rounding knife-edge): {row.optimizer} is printed "
                f"{v['printed']} {v['unit']} but {v['other']} {v['other_printed']} for the same run. "
                f"{row.optimizer}'s state is {v['other']}'s plus more: "
                f"{_f(v['planned_difference_mib'])} MiB here, so both figures can only be right if they "
                f"straddle {v['boundary']:g} {v['unit']} within that margin; planned {v['other']} is "
                f"{v['other_planned']:.3f} {v['unit']}, {row.optimizer} {v['planned']:.3f}.")
    if e.reason is R_.DIFFERS_ACROSS_TASKS:
        same = ("they train the same parameters" if not v["trainable_params_spread"] else
                f"their trainable parameters differ by at most {v['trainable_params_spread']:,} "
                f"and their plans by {v['planned_spread_mib']:.3f} MiB")
        return (f"paper inconsistency: the same model and optimizer is printed as "
                f"{', '.join(v['printed_values'])} {v['unit']} across {v['tasks']} tasks, although "
                f"{same}; the plan is within {v['others_max_gap_pct']:.1f}% of the other tasks' "
                "figures.")
    if e.reason is R_.UNSTATED_DETAIL:
        need = (_k(v["needed_from"]) if v["needed_from"] == v["needed_to"]
                else f"≥ {_k(v['needed_from'])}" if v["needed_to"] == v["searched"][1]
                else f"{_k(v['needed_from'])}-{_k(v['needed_to'])}")
        return (f"unstated {v['detail']}: planned at its nominal {v['nominal']:,}; this figure "
                f"prints as planned only with {need} (searched {_k(v['searched'][0])}-"
                f"{_k(v['searched'][1])}). No single value prints all {v['figures']} {row.table} "
                f"figures of the models sharing it: the best, {_k(v['best'])}, prints "
                f"{v['best_prints']}, the nominal {v['nominal_prints']}; the build keeps the nominal.")
    if e.reason is R_.E2E_DEPARTS_FROM_RUN:
        listing = ", ".join(f"{k} {x:+.0f}" for k, x in v["run_offsets_mib"].items())
        return (f"paper inconsistency: e2e − optimizer is {v['e2e_minus_optimizer_mib']:.0f} MiB here, "
                f"but the run's other optimizers imply {v['definition']} ({v['planned_mib']:.0f} MiB "
                f"planned) {v['run_median_mib']:+.0f} MiB. Paper-minus-plan offset of (e2e − "
                f"optimizer) per optimizer, MiB: {listing}; this one departs from the others by "
                f"{v['departure_mib']:+.0f} MiB, more than the printed resolution and the run-to-run "
                f"spread allow.")
    if e.reason is R_.E2E_UNMODELLED_CONSTANT:
        listing = ", ".join(f"{k} {x:+.0f}" for k, x in v["run_offsets_mib"].items())
        spread = (f" (the two runs differ by {v['runs_differ_mib']:.0f} MiB in it)"
                  if v["runs_differ_mib"] is not None else "")
        return (f"a constant the plan does not model: the paper's e2e exceeds its own optimizer "
                f"figure + {v['definition']} ({v['planned_mib']:.0f} MiB planned) by "
                f"{v['offset_mib']:+.0f} MiB, as in the run's other optimizers (MiB: {listing}){spread}. "
                f"The optimizer-dependent part is reproduced; the rest is memory that is neither a "
                f"parameter, a gradient nor optimizer state (batch tensors, activations or buffers "
                f"alive when the paper measured).")
    return "not explained by the optimizer-state layout."
