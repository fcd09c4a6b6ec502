"""``smmf-plan optimizers``: the optimizer ids smmf-plan knows, their variants and implementations."""

from __future__ import annotations

from . import options as o
from .app import app


@app.command("optimizers")
def optimizers(json_out: o.Json = False) -> None:
    """List optimizer ids, their variant options and the implementation each layout reproduces."""
    from smmf_plan.layouts import ALL_IDS, DEFAULT_IDS, FAMILIES
    from smmf_plan.report import SCHEMA_VERSION

    rows = [
        {
            "name": name,
            "implementation": cls.implementation,
            "requires": cls.requires,
            "options": {k: default for k, (default, _) in cls.options.items()},
            "summary": cls.summary,
            "default": name in DEFAULT_IDS,
        }
        for name, cls in FAMILIES.items()
    ]
    if json_out:
        o.emit_json({"schema_version": SCHEMA_VERSION, "optimizers": rows, "all": list(ALL_IDS)})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Optimizers (variants: NAME:key=value,...)", title_justify="left", header_style="bold")
    for col in ("id", "options (default)", "implementation", "what it keeps"):
        table.add_column(col)
    for r in rows:
        opts = ", ".join(f"{k}={'none' if v is None else v}" for k, v in r["options"].items()) or "–"
        table.add_row(r["name"] + (" *" if r["default"] else ""), opts, r["implementation"], r["summary"])
    console = Console()
    console.print(table)
    console.print("* shown by default; '--optimizer all' selects: " + ", ".join(ALL_IDS))
