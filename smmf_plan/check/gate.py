"""``smmf-plan check`` verdicts: every measured metric judged against its budget and the baseline,
and :func:`run`, the whole gate (configuration → evaluation → baseline → report)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..errors import PlanError
from ..units import format_bytes
from .baseline import Baseline, load_baseline, missing_parents, write_baseline
from .config import METRICS, Check, CheckConfig, Tolerance
from .evaluate import Evaluated, evaluate

PASS, FAIL, IMPROVED, NEW, UPDATED = "PASS", "FAIL", "IMPROVED", "NEW", "UPDATED"
STATUSES = (PASS, FAIL, IMPROVED, NEW, UPDATED)


def _pct(delta: int, ref: int) -> str:
    if ref <= 0:
        return "new" if delta else "±0%"
    p = 100.0 * delta / ref
    a = abs(p)
    if a >= 10 or a == 0:
        return f"{p:+.0f}%"
    if a >= 0.1:
        return f"{p:+.1f}%"
    return f"{p:+.2g}%"


@dataclass(frozen=True)
class Result:
    """One row: a check × optimizer × metric, judged against its budget and baseline."""

    check: str
    optimizer: str
    metric: str
    now: int
    budget: int | None
    budget_source: str | None
    baseline: int | None
    status: str
    #: why it failed / changed; "" for a plain PASS.
    message: str = ""
    #: "budget" or "regression" for a FAIL.
    failure: str | None = None

    @property
    def delta(self) -> int | None:
        return None if self.baseline is None else self.now - self.baseline

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def to_dict(self) -> dict:
        d = self.delta
        return {
            "check": self.check, "optimizer": self.optimizer, "metric": self.metric,
            "now_bytes": self.now, "budget_bytes": self.budget, "budget_source": self.budget_source,
            "baseline_bytes": self.baseline, "delta_bytes": d,
            "delta_ratio": (d / self.baseline) if d is not None and self.baseline else None,
            "status": self.status, "failure": self.failure, "message": self.message or None,
        }


@dataclass
class CheckReport:
    config: CheckConfig
    evaluated: list[Evaluated]
    results: list[Result]
    tolerance: Tolerance
    baseline_path: str | None = None
    baseline_updated: bool = False
    #: baseline entries no configured check produced: (check, optimizer, metric).
    stale: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def failures(self) -> list[Result]:
        return [r for r in self.results if r.failed]

    @property
    def exit_code(self) -> int:
        """1 when any metric is over budget or regressed beyond tolerance, else 0."""
        return 1 if self.failures else 0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def hints(self) -> list[str]:
        out = []
        if self.baseline_updated:
            out.append(f"baseline {self.baseline_path} rewritten with these results; commit it")
            return out
        where = f" --baseline {self.baseline_path}" if self.baseline_path else ""
        if self.count(IMPROVED):
            out.append(f"{self.count(IMPROVED)} metric(s) improved on the baseline: run "
                       f"smmf-plan check{where} --update-baseline and commit it to lock the gain in")
        if self.count(NEW):
            out.append(f"{self.count(NEW)} metric(s) have no baseline entry yet: run "
                       f"smmf-plan check{where} --update-baseline to record them")
        if self.stale:
            checks = sorted({c for c, _, _ in self.stale})
            out.append(f"the baseline has entries for no configured check/optimizer "
                       f"({', '.join(checks)}): --update-baseline drops them")
        return out

    def summary(self) -> str:
        n = len(self.results)
        if self.failures:
            return f"FAIL: {len(self.failures)} of {n} metric(s) over budget or regressed"
        extra = [f"{self.count(s)} {s.lower()}" for s in (IMPROVED, NEW, UPDATED) if self.count(s)]
        return f"PASS: {n} metric(s) within budget" + (
            " and baseline" if self.baseline_path and not self.baseline_updated else "") + (
            f" ({', '.join(extra)})" if extra else "")


def judge(check: str, optimizer: str, metric: str, now: int, budget: int | None,
          budget_source: str | None, baseline: int | None, tolerance: Tolerance, *,
          has_baseline: bool, updating: bool = False, budget_label: str | None = None) -> Result:
    """The status of one metric. Budget first (a budget failure is never waived by updating the
    baseline), then the baseline with its tolerance."""
    who = f"{check} [{optimizer}]"
    label = budget_label or (budget_source or "budget")
    if budget is not None and now > budget:
        over = now - budget
        msg = (f"{who}: {metric} {format_bytes(now)} > {label} {format_bytes(budget)} "
               f"({format_bytes(over, signed=True)}, {_pct(over, budget)})")
        return Result(check, optimizer, metric, now, budget, budget_source, baseline, FAIL, msg, "budget")
    if not has_baseline:
        return Result(check, optimizer, metric, now, budget, budget_source, None, PASS)
    if baseline is None:
        if updating:
            return Result(check, optimizer, metric, now, budget, budget_source, None, UPDATED,
                          f"{who}: {metric} {format_bytes(now)} recorded in the baseline")
        return Result(check, optimizer, metric, now, budget, budget_source, None, NEW,
                      f"{who}: {metric} {format_bytes(now)} has no baseline entry")
    delta = now - baseline
    change = (f"{who}: {metric} {format_bytes(baseline)} → {format_bytes(now)} "
              f"({format_bytes(delta, signed=True)}, {_pct(delta, baseline)})")
    if delta != 0 and updating:
        return Result(check, optimizer, metric, now, budget, budget_source, baseline, UPDATED,
                      change + "; baseline updated")
    if delta > tolerance.allowed(baseline):
        return Result(check, optimizer, metric, now, budget, budget_source, baseline, FAIL,
                      f"{change} grew beyond the tolerance of {tolerance.text} over the baseline",
                      "regression")
    if delta < 0:
        return Result(check, optimizer, metric, now, budget, budget_source, baseline, IMPROVED,
                      change + " improved on the baseline")
    msg = f"{change} within the tolerance of {tolerance.text}" if delta > 0 else ""
    return Result(check, optimizer, metric, now, budget, budget_source, baseline, PASS, msg)


def compare(config: CheckConfig, evaluated: Sequence[Evaluated], baseline: Baseline | None,
            tolerance: Tolerance, *, updating: bool = False) -> CheckReport:
    """Judge every measured metric against its budget and ``baseline`` (None: budgets only)."""
    results: list[Result] = []
    produced: set[tuple[str, str, str]] = set()
    for ev in evaluated:
        for m in ev.measurements:
            for metric in METRICS:
                if metric not in m.values:
                    continue
                produced.add((m.check, m.optimizer, metric))
                budget, source = ev.budget(metric)
                label = (f"usable memory of {ev.device['id']}" if source == "device" and ev.device
                         else f"host memory of {ev.device['id']}" if source == "host" and ev.device
                         else source)
                results.append(judge(
                    m.check, m.optimizer, metric, m.values[metric], budget, source,
                    baseline.get(m.check, m.optimizer, metric) if baseline else None, tolerance,
                    has_baseline=baseline is not None or updating, updating=updating,
                    budget_label=label))
    stale = sorted(baseline.keys() - produced) if baseline is not None else []
    return CheckReport(config=config, evaluated=list(evaluated), results=results,
                       tolerance=tolerance,
                       baseline_path=baseline.path if baseline is not None else None,
                       baseline_updated=False, stale=stale)


def run(config: CheckConfig, *, baseline_path: str | None = None, tolerance: Tolerance | None = None,
        update_baseline: bool = False, use_cache: bool = True,
        progress: Callable[[Check], None] | None = None) -> CheckReport:
    """Evaluate ``config``, compare with the baseline (``baseline_path`` or the config's), and
    rewrite the baseline when ``update_baseline``. Budgets still decide the exit code when updating.
    Configuration problems (including a missing baseline without ``update_baseline``) raise
    :class:`PlanError` before anything is written."""
    path = baseline_path or config.baseline
    tol = tolerance or config.tolerance or Tolerance()
    if update_baseline and not path:
        raise PlanError("--update-baseline needs a baseline file: pass --baseline FILE or set "
                        "baseline = \"...\" under [tool.smmf-plan]")
    old: Baseline | None = None
    if path:
        if update_baseline:
            missing_parents(path)  # a file in the way fails before anything is evaluated
        if not (update_baseline and not os.path.exists(path)):
            old = load_baseline(path)
    evaluated = evaluate(config, use_cache=use_cache, progress=progress)
    report = compare(config, evaluated, old, tol, updating=update_baseline)
    if update_baseline:
        assert path is not None
        write_baseline(path, evaluated)
        report.baseline_updated = True
        report.stale = []
    report.baseline_path = path
    return report
