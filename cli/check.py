"""``smmf-plan check``: the CI memory-regression gate (budgets and a committed baseline).

Exit codes: 0 every metric within budget and baseline (improvements included, with a hint);
1 a budget exceeded or a regression beyond the tolerance; 2 configuration or usage error.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from smmf_plan import check as gate
from smmf_plan.atomic import write_text_atomic
from smmf_plan.errors import PlanError
from smmf_plan.report import check_report as render

from . import options as o

Config = Annotated[Optional[str], typer.Option(
    "--config", "-c", metavar="FILE",
    help="TOML file with the checks (default: [tool.smmf-plan] of the nearest pyproject.toml).")]
BaselineOpt = Annotated[Optional[str], typer.Option(
    "--baseline", "-b", metavar="FILE",
    help="Compare with this JSON baseline (default: baseline = under [tool.smmf-plan], if set).")]
ToleranceOpt = Annotated[Optional[str], typer.Option(
    "--tolerance", "-t", metavar="1%|2MiB",
    help="Growth over the baseline still accepted: percent of the baseline or a size. Default: 0.")]
Update = Annotated[bool, typer.Option(
    "--update-baseline", help="Rewrite the baseline with the current results (atomically). "
                              "Budgets still decide the exit code.")]
Format = Annotated[str, typer.Option(
    "--format", "-f", metavar="table|markdown",
    help="table (rich, for terminals and logs) or markdown (for $GITHUB_STEP_SUMMARY).")]
Junit = Annotated[Optional[str], typer.Option(
    "--junit", metavar="FILE", help="Also write JUnit XML: one test case per check × optimizer × metric.")]


def check(
    config: Config = None,
    baseline: BaselineOpt = None,
    tolerance: ToleranceOpt = None,
    update_baseline: Update = False,
    fmt: Format = "table",
    json_out: o.Json = False,
    junit: Junit = None,
    no_cache: o.NoCache = False,
) -> None:
    """Fail the build when optimizer state or the training footprint outgrows its budget or baseline."""
    fmt = fmt.strip().lower()
    if fmt not in ("table", "markdown", "md"):
        raise PlanError(f"--format {fmt!r} is not known: use table or markdown (or --json)")
    tol = gate.parse_tolerance(tolerance) if tolerance is not None else None
    cfg = gate.load_config(config)
    quiet = json_out or fmt != "table"

    with o.status(f"Checking {len(cfg.checks)} model(s) from {cfg.path} (no weights are allocated)…",
                  quiet):
        report = gate.run(cfg, baseline_path=baseline, tolerance=tol,
                          update_baseline=update_baseline, use_cache=not no_cache)
    for ev in report.evaluated:
        for note in ev.notes:  # what a model source had to guess: say so, also under --json
            print(f"warning: {ev.check.where}: {note}", file=sys.stderr)
    if junit:
        try:
            write_text_atomic(junit, render.junit_xml(report))
        except OSError as e:
            raise PlanError(f"--junit {junit}: cannot write ({e.strerror or e})") from None
    if json_out:
        o.emit_json(render.check_document(report))
    elif fmt in ("markdown", "md"):
        sys.stdout.write(render.markdown(report))
    else:
        render.print_table(report)
    if report.exit_code:
        raise typer.Exit(report.exit_code)
