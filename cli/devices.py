"""``smmf-plan devices [--json]``: the device catalog plus the user's own devices."""

from __future__ import annotations

from smmf_plan.devices import list_devices
from smmf_plan.report.console import console as make_console
from smmf_plan.report.fit_table import devices_document, devices_table

from . import options as o

Device, Devices, DevicesFile = o.Device, o.Devices, o.DevicesFile


def devices(
    json_out: o.Json = False,
    devices_file: DevicesFile = None,
) -> None:
    """Devices smmf-plan knows: memory, usable memory (and its basis), allocator, PyTorch support."""
    found = list_devices(devices_file or ())
    if json_out:
        o.emit_json(devices_document(found))
        return
    console = make_console()
    console.print(devices_table(found, wide=console.width >= 120))
