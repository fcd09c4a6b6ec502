"""``smmf-plan shapes MODEL``: one row per parameter with its SMMF shape and state bytes."""

from __future__ import annotations

from . import options as o


def shapes(
    model: o.Model,
    optimizer: o.Optimizers = None,
    dtype: o.DType = None,
    num_classes: o.NumClasses = None,
    trainable: o.Trainable = None,
    freeze: o.Freeze = None,
    lora_rank: o.LoraRank = None,
    lora_targets: o.LoraTargets = None,
    json_out: o.Json = False,
    no_cache: o.NoCache = False,
) -> None:
    """Every parameter: shape, numel, square-matricized shape, state bytes per optimizer."""
    from smmf_plan.plan import with_dtype

    layouts = o.layouts(optimizer)
    dt = o.dtype(dtype)
    spec = o.load_model(model, num_classes=num_classes, trainable=trainable, freeze=freeze,
                        lora_rank=lora_rank, lora_targets=lora_targets, no_cache=no_cache,
                        quiet=json_out)
    spec.params = with_dtype(spec.params, dt)
    if json_out:
        from smmf_plan.report.state_json import shapes_document

        o.emit_json(shapes_document(spec, layouts))
        return
    from rich.console import Console

    from smmf_plan.report.state_table import model_header, shapes_table

    console = Console()
    console.print(model_header(spec, dt))
    console.print(shapes_table(spec, layouts))
