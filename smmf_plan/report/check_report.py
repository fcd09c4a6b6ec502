"""Renderers for ``smmf-plan check``: a rich table, Markdown (``$GITHUB_STEP_SUMMARY``, PR comments),
a versioned JSON document and JUnit XML.

Every status is a word (PASS, FAIL, IMPROVED, NEW, UPDATED) beside its colour, so the output reads
in monochrome logs. Byte counts are exact integers in JSON and JUnit properties; humans get MiB.
Checks that estimated the training step (a ``total`` metric) also show its breakdown per part, so
a total that grew says which part grew.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Iterable

from rich.table import Table
from rich.text import Text

from ..breakdown import StepMemory
from ..check import FAIL, IMPROVED, NEW, PASS, UPDATED, CheckReport, Evaluated, Result
from ..units import format_bytes
from . import SCHEMA_VERSION
from .breakdown_md import breakdown_table, legend
from .console import console as make_console
from .fit_table import verdict_table
from .step_json import training_json

_STYLE = {PASS: "green", FAIL: "bold red", IMPROVED: "cyan", NEW: "yellow", UPDATED: "yellow"}
_ICON = {PASS: "✅", FAIL: "❌", IMPROVED: "📉", NEW: "🆕", UPDATED: "📝"}


def _budget_cell(r: Result) -> str:
    if r.budget is None:
        return "–"
    suffix = " (device)" if r.budget_source == "device" else ""
    return format_bytes(r.budget) + suffix


def _delta_cell(r: Result) -> str:
    d = r.delta
    if d is None:
        return "–"
    if d == 0:
        return "±0"
    pct = f", {100.0 * d / r.baseline:+.1f}%" if r.baseline else ""
    return format_bytes(d, signed=True) + pct


def _rows(report: CheckReport) -> Iterable[tuple[Result, list[str]]]:
    for r in report.results:
        yield r, [r.check, r.optimizer, r.metric, _budget_cell(r),
                  format_bytes(r.baseline) if r.baseline is not None else "–",
                  format_bytes(r.now), _delta_cell(r), r.status]


COLUMNS = ("check", "optimizer", "metric", "budget", "baseline", "now", "delta", "status")
_RIGHT = {"budget", "baseline", "now", "delta"}


def check_table(report: CheckReport):
    """The rich table: one row per check × optimizer × metric, failures in bold red."""
    title = "smmf-plan check" + (f" · baseline {report.baseline_path}" if report.baseline_path else "")
    table = Table(title=title, title_justify="left", header_style="bold")
    for col in COLUMNS:
        table.add_column(col, justify="right" if col in _RIGHT else "left")
    for r, cells in _rows(report):
        style = _STYLE.get(r.status, "")
        table.add_row(*cells[:-1], Text(cells[-1], style=style),
                      style="red" if r.failed else None)
    return table


def steps(report: CheckReport) -> dict[str, StepMemory]:
    """``"check [optimizer]"`` → its step estimate, for every check that made one (a
    distributed check's is its largest rank's, and says so)."""
    out = {}
    for ev in report.evaluated:
        if ev.estimate is None:
            continue
        for oid, step in ev.estimate.steps().items():
            ranks = sum(r.count for r in step.ranks)
            label = f"{ev.check.id} [{oid}]" + (f" (largest of {ranks:,} ranks)" if ranks else "")
            out[label] = step
    return out


def step_table(report: CheckReport):
    """The breakdown behind every ``total`` metric (None when no check estimated the step)."""
    rows = steps(report)
    if not rows:
        return None
    return verdict_table(rows, title="Training step behind each total", first="check [optimizer]")


def messages(report: CheckReport) -> list[str]:
    """The lines printed under the table: failures first, then changes, then hints."""
    lines = [f"FAIL {r.message}" for r in report.failures]
    lines += [f"{r.status} {r.message}" for r in report.results
              if not r.failed and r.message and r.status != PASS]
    lines += [f"hint: {h}" for h in report.hints]
    lines.append(report.summary())
    return lines


def print_table(report: CheckReport, console=None) -> None:
    if console is None:
        console = make_console()
        if not console.is_terminal:  # CI logs: no wrapping at 80 columns; tables stay content-wide
            console = make_console(width=max(console.width, 160))
    console.print(check_table(report))
    table = step_table(report)
    if table is not None:
        console.print(table)
    for line in messages(report):
        style = "bold red" if line.startswith("FAIL") else ("dim" if line.startswith("hint") else None)
        console.print(Text(line, style=style or ""))


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(report: CheckReport) -> str:
    """A GitHub-flavoured Markdown section: verdict heading, table, failures, hints."""
    verdict = f"{_ICON[FAIL]} FAIL" if report.failures else f"{_ICON[PASS]} PASS"
    out = [f"### smmf-plan check: {verdict}", ""]
    meta = [f"config `{report.config.path}`"]
    if report.baseline_path:
        meta.append(f"baseline `{report.baseline_path}`" + (" (updated)" if report.baseline_updated else ""))
        meta.append(f"tolerance {report.tolerance.text}")
    out += [" · ".join(meta), ""]
    out.append("| " + " | ".join(COLUMNS) + " |")
    out.append("|" + "|".join("---:" if c in _RIGHT else ":---" for c in COLUMNS) + "|")
    for r, cells in _rows(report):
        cells = [_md_escape(c) for c in cells]
        cells[-1] = f"{_ICON.get(r.status, '')} {'**' + r.status + '**' if r.failed else r.status}"
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    rows = {_md_escape(label): step.breakdown for label, step in steps(report).items()}
    if rows:
        out += ["**Training step behind each total**", "",
                *breakdown_table(rows, first="check [optimizer]", fmt=format_bytes), "",
                *legend(rows), ""]
    if report.failures:
        out.append("**Failures**")
        out.append("")
        out += [f"- {_md_escape(r.message)}" for r in report.failures]
        out.append("")
    changes = [r for r in report.results if not r.failed and r.message and r.status != PASS]
    if changes:
        out += [f"- {r.status}: {_md_escape(r.message)}" for r in changes]
        out.append("")
    for h in report.hints:
        out.append(f"> {_md_escape(h)}")
    if report.hints:
        out.append("")
    out.append(report.summary())
    return "\n".join(out) + "\n"


def check_document(report: CheckReport) -> dict:
    """The ``--json`` document (schema in the README)."""
    tol = report.tolerance.to_dict() if report.baseline_path else None
    return {
        "schema_version": SCHEMA_VERSION,
        "command": "check",
        "ok": report.ok,
        "exit_code": report.exit_code,
        "summary": report.summary(),
        "config": report.config.path,
        "baseline": None if not report.baseline_path else {
            "path": report.baseline_path, "updated": report.baseline_updated, "tolerance": tol,
            "stale_entries": [{"check": c, "optimizer": o, "metric": m} for c, o, m in report.stale],
        },
        "checks": [
            {**ev.check.to_dict(), "device": ev.device, "model_summary": ev.model_summary,
             "training": training(ev)}
            for ev in report.evaluated
        ],
        "results": [r.to_dict() for r in report.results],
        "counts": {s: report.count(s) for s in (PASS, FAIL, IMPROVED, NEW, UPDATED)},
        "hints": report.hints,
    }


def training(ev: Evaluated) -> dict | None:
    """The step estimate behind a check's ``total`` metric: how it was made and, per optimizer,
    its step entry (``state_bytes``, ``breakdown``, ``total_bytes``); None without one."""
    if ev.estimate is None:
        return None
    return {**training_json(ev.estimate),
            "optimizers": {oid: s.to_dict() for oid, s in ev.estimate.steps().items()}}


def junit_xml(report: CheckReport) -> str:
    """JUnit XML: one ``<testcase>`` per check × optimizer × metric; a FAIL is a ``<failure>``
    whose ``type`` is ``budget`` or ``regression`` and whose message is the one-line reason."""
    suites = ET.Element("testsuites", name="smmf-plan check")
    suite = ET.SubElement(suites, "testsuite", {
        "name": "smmf-plan check",
        "tests": str(len(report.results)),
        "failures": str(len(report.failures)),
        "errors": "0",
        "skipped": "0",
        "time": "0",
    })
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="config", value=report.config.path)
    if report.baseline_path:
        ET.SubElement(props, "property", name="baseline", value=report.baseline_path)
        ET.SubElement(props, "property", name="tolerance", value=report.tolerance.text)
    for r in report.results:
        case = ET.SubElement(suite, "testcase", {
            "classname": f"smmf-plan.check.{r.check}",
            "name": f"{r.optimizer} {r.metric}",
            "time": "0",
        })
        if r.failed:
            failure = ET.SubElement(case, "failure", message=r.message, type=r.failure or "budget")
            failure.text = r.message
        # exact bytes for every case (testcase-level <properties> is not in the strict schema)
        facts = [f"status={r.status}", f"now_bytes={r.now}"]
        facts += [f"{k}={v}" for k, v in (("budget_bytes", r.budget), ("baseline_bytes", r.baseline))
                  if v is not None]
        out = ET.SubElement(case, "system-out")
        out.text = " ".join(facts) + (f"\n{r.message}" if r.message and not r.failed else "")
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
