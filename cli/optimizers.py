"""``smmf-plan optimizers``: the optimizer registry — ids, variant options, implementations, code paths."""

from __future__ import annotations

from rich import box
from rich.table import Table

from smmf_plan.optimizers import ALL_IDS, DEFAULT_IDS, FAMILIES, describe
from smmf_plan.report import SCHEMA_VERSION
from smmf_plan.report.console import console as make_console

from . import options as o


def optimizers(json_out: o.Json = False) -> None:
    """List every optimizer: id, variant options (default and valid values), the implementation
    each layout reproduces, the step's code path per device and the probe's learning rate."""
    rows = describe()
    for row in rows:
        info = FAMILIES[row["id"]]
        row["installed"] = info.requires.installed()
        for key, impl in row["impls"].items():
            impl["installed"] = info.impls[key].requires.installed()
    if json_out:
        o.emit_json({"schema_version": SCHEMA_VERSION, "optimizers": rows,
                     "default": list(DEFAULT_IDS), "all": list(ALL_IDS)})
        return

    console = make_console()  # markup off: ids, help and values print as written
    table = Table(title="Optimizers", title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
    table.add_column("id", no_wrap=True)
    table.add_column("reproduces (implementation, version)", max_width=30)
    table.add_column("step cpu / cuda", max_width=19)
    table.add_column("probe lr", no_wrap=True)
    table.add_column("what it keeps")
    for r in rows:
        impls = [_impl(r["reproduces"], r["requires"], r["installed"])]
        impls += [f"impl={k}: " + _impl(i["reproduces"], i["requires"], i["installed"])
                  for k, i in r["impls"].items()]
        paths = r["temporaries"]["default_path"]
        keeps = r["summary"] + ("; keeps its step scratch between steps" if r["keeps_scratch"] else "")
        table.add_row(r["id"] + (" *" if r["default"] else ""), "\n".join(impls),
                      f"{paths['cpu']} / {paths['cuda']}", f"{r['probe_lr']:g}", keeps)
    console.print(table)
    options = Table(title="Variant options: ID:key=value,...", title_justify="left",
                    header_style="bold", box=box.SIMPLE_HEAD)
    for col in ("id", "option", "default", "valid", "meaning"):
        options.add_column(col, no_wrap=col != "meaning")
    for r in rows:
        for k, v in r["options"].items():
            options.add_row(r["id"], k, _word(v["default"]), v["valid"],
                            v["help"])
    console.print(options)
    papers = ", ".join(f"{r['paper_name']} = {r['id']}" for r in rows if r["paper_name"])
    console.print("* shown by default; '--optimizer all' selects: " + ", ".join(ALL_IDS))
    console.print("The SMMF paper's tables name them: " + papers + ". Every field: --json.")


def _impl(reproduces: str, requires: dict, installed: bool) -> str:
    if installed:
        return reproduces
    if requires.get("source"):
        return f"{reproduces}; not on PyPI, not installed"
    return f"{reproduces}; not installed (pip install {requires['distribution']})"


def _word(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)
