"""``smmf-plan devices [--json]``: the device catalog plus the user's own devices.

Also declares the ``--device`` / ``--devices-file`` options other commands reuse."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from . import options as o
from .app import app

Device = Annotated[Optional[str], typer.Option(
    "--device", "-d",
    help="Check the fit on this device: a catalog id (smmf-plan devices), an id from --devices-file "
         "or pyproject.toml [tool.smmf-plan.devices], or a size such as 512MiB or 4GB.",
    show_default=False)]
Devices = Annotated[Optional[list[str]], typer.Option(
    "--device", "-d",
    help="Only these devices (repeatable): catalog ids, ids from --devices-file, or sizes such "
         "as 512MiB. Default: every known device.",
    show_default=False)]
DevicesFile = Annotated[Optional[list[str]], typer.Option(
    "--devices-file",
    help="TOML file of extra devices, one [ID] table each (the catalog's format); repeatable.",
    show_default=False)]


@app.command("devices")
def devices(
    json_out: o.Json = False,
    devices_file: DevicesFile = None,
) -> None:
    """Devices smmf-plan knows: memory, usable memory (and its basis), allocator, PyTorch support."""
    from smmf_plan.devices import list_devices

    found = list_devices(devices_file or ())
    if json_out:
        from smmf_plan.report.fit_table import devices_document

        o.emit_json(devices_document(found))
        return
    from rich.console import Console

    from smmf_plan.report.fit_table import devices_table

    console = Console()
    console.print(devices_table(found, wide=console.width >= 120))
