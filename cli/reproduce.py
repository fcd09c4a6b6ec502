"""``smmf-plan reproduce``: regenerate the SMMF paper's memory tables with the planner."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from smmf_plan.errors import PlanError
from smmf_plan.report import SCHEMA_VERSION
from smmf_plan.reproduce import reproduce as run

from . import options as o

Output = Annotated[Path, typer.Option(
    "--output", help="Folder that receives paper-reproduction.md and paper-reproduction.json.")]


def reproduce(output: Output = Path("reports"), json_out: o.Json = False) -> None:
    """Plan every optimizer-memory and end-to-end figure of the SMMF paper (Tables 1-4, 6-13) and
    write the comparison report (Markdown + JSON)."""
    if output.exists() and not output.is_dir():
        raise PlanError(f"--output {output} is a file: pass a folder, e.g. --output reports/")
    with o.status("Building the paper's models on the meta device…", quiet=json_out):
        try:
            summary = run(output)
        except OSError as e:
            raise PlanError(f"cannot write the report into {output}: {e.strerror or e}") from None
    if json_out:
        o.emit_json({"schema_version": SCHEMA_VERSION, "summary": summary.counts(),
                     "markdown": str(summary.markdown_path), "json": str(summary.json_path)})
        return
    c = summary
    print(f"{c.total} paper figures: {c.within_5pct} within 5 %, {c.within_10pct} within 10 %, "
          f"{c.agrees_at_precision} agree at the printed precision")
    print(f"wrote {summary.markdown_path} and {summary.json_path}")
