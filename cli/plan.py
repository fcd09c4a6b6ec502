"""``smmf-plan plan MODEL`` (also plain ``smmf-plan MODEL``): optimizer state per optimizer."""

from __future__ import annotations

from . import options as o
from .app import app


@app.command("plan")
def plan(
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
    """Optimizer-state bytes of MODEL for each optimizer (logical and allocator-rounded)."""
    from smmf_plan.plan import adam_reference_bytes, plan_model, with_dtype

    layouts = o.layouts(optimizer)
    dt = o.dtype(dtype)
    spec = o.load_model(model, num_classes=num_classes, trainable=trainable, freeze=freeze,
                        lora_rank=lora_rank, lora_targets=lora_targets, no_cache=no_cache,
                        quiet=json_out)
    spec.params = with_dtype(spec.params, dt)
    plans = plan_model(spec, layouts)
    adam = adam_reference_bytes(spec)
    if json_out:
        from smmf_plan.report.state_json import plan_document

        o.emit_json(plan_document(spec, plans, adam, dt))
        return
    from rich.console import Console

    from smmf_plan.report.state_table import model_header, state_table

    console = Console()
    console.print(model_header(spec, dt))
    console.print(state_table(plans, adam))
