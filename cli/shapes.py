"""``smmf-plan shapes MODEL``: one row per parameter with its SMMF shape and state bytes."""

from __future__ import annotations

from smmf_plan.options import ModelOptions
from smmf_plan.report.console import console as make_console
from smmf_plan.report.state_json import shapes_document
from smmf_plan.report.state_table import model_header, shapes_table

from . import options as o


@o.shared_options()
def shapes(m: ModelOptions, json_out: o.Json = False) -> None:
    """Every parameter: shape, numel, square-matricized shape, state bytes per optimizer."""
    m.layouts()  # a bad id fails before the model loads
    spec = o.load(m, quiet=json_out)
    layouts = m.layouts(spec)
    if json_out:
        o.emit_json(shapes_document(spec, layouts))
        return
    console = make_console()
    console.print(model_header(spec))
    console.print(shapes_table(spec, layouts))
