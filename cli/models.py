"""``smmf-plan models [PATTERN]``: the model names smmf-plan resolves offline."""

from __future__ import annotations

import fnmatch
from typing import Annotated, Optional

import typer
from rich.table import Table

from smmf_plan.report import SCHEMA_VERSION
from smmf_plan.report.console import console as make_console
from smmf_plan.sources import bundled_models
from smmf_plan.sources.registry import HUB_IDS

from . import options as o


def models(
    pattern: Annotated[Optional[str], typer.Argument(help="Glob on timm names, e.g. 'resnet*'.")] = None,
    json_out: o.Json = False,
) -> None:
    """Bundled transformers checkpoints (configs shipped with smmf-plan) and timm architectures."""
    with o.status("Listing timm architectures…", json_out):
        import timm

        timm_names = timm.list_models(pattern or "*")
    bundled = [b for b in bundled_models() if pattern is None or _match(b, pattern)]
    if json_out:
        o.emit_json({
            "schema_version": SCHEMA_VERSION,
            "bundled": [{"name": b, "hub_id": HUB_IDS.get(b)} for b in bundled],
            "timm": timm_names,
        })
        return

    console = make_console()
    table = Table(title="Bundled checkpoints (offline configs)", title_justify="left", header_style="bold")
    table.add_column("name")
    table.add_column("reproduces the config of")
    for b in bundled:
        table.add_row(b, HUB_IDS.get(b, "–"))
    if bundled:
        console.print(table)
    shown = ", ".join(timm_names[:40]) + (" …" if len(timm_names) > 40 else "")
    console.print(f"timm architectures matching {pattern or '*'!r}: {len(timm_names)}")
    if timm_names:
        console.print(shown, highlight=False)
    console.print("Also accepted: a config.json, a model directory, .safetensors / "
                  ".safetensors.index.json / .pt / .pth / .bin files, and owner/name hub ids.")


def _match(name: str, pattern: str) -> bool:
    return fnmatch.fnmatch(name, pattern)
