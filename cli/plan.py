"""``smmf-plan plan MODEL`` (also plain ``smmf-plan MODEL``): optimizer state per optimizer and,
with ``--device`` or any training-step option, the end-to-end training memory and the fit."""

from __future__ import annotations

import sys

from smmf_plan.alternatives import search
from smmf_plan.devices import get_device, list_devices
from smmf_plan.dist.estimate import step_estimate
from smmf_plan.errors import PlanError
from smmf_plan.options import DistOptions, ModelOptions, StepOptions
from smmf_plan.plan import adam_reference_bytes, plan_model
from smmf_plan.report.bars import BarRow, write_svg
from smmf_plan.report.console import console as make_console
from smmf_plan.report.fit_table import device_report, judge, verdict_table
from smmf_plan.report.rank_table import rank_table, sharding_header
from smmf_plan.report.state_json import plan_document
from smmf_plan.report.state_table import assumptions_text, model_header, recipe_line, state_table

from . import options as o


@o.shared_options()
def plan(
    m: ModelOptions,
    step: StepOptions,
    dist: DistOptions,
    device: o.Device = None,
    devices_file: o.DevicesFile = None,
    svg: o.Svg = None,
    json_out: o.Json = False,
) -> None:
    """Optimizer-state bytes of MODEL for each optimizer (logical and allocator-rounded); with
    --device (or any training-step option: --batch-size, --amp, --grad-checkpointing,
    --quantize-base, --grad-accum, --offload, --allocator …) the whole training step: weights,
    gradients, state, activations, temporaries, allocator, runtime (and what an offload keeps on
    the host), and the fit. With --dist and --world, the step of every rank (the largest decides
    the fit)."""
    layouts = m.layouts()
    recipe = m.recipe(step)
    sharding = dist.sharding() if dist.given else None
    end_to_end = (device is not None or svg is not None or step.given or sharding is not None
                  or m.quantize_base is not None)
    dev = None
    if end_to_end:
        batch = step.batch
        if device is not None:
            dev = step.device(get_device(device, tuple(devices_file or ())))
        elif svg is not None:
            raise PlanError(f"--svg {svg!r} draws the bars against a device's usable memory: add --device ID")
        elif step.offload is not None:
            raise PlanError(f"--offload {step.offload} moves the optimizer to a GPU's host: add "
                            "--device with a GPU (smmf-plan devices lists them)")
        allocator = step.allocator_for(dev)
    spec = o.load(m, quiet=json_out, recipe=recipe)
    plans = plan_model(spec, layouts)
    adam = adam_reference_bytes(spec)
    est = steps = fits = None
    if end_to_end:
        with o.status("Estimating the training step (tracing on meta tensors)…", json_out):
            est = step_estimate(spec, layouts, sharding, batch_size=batch, allocator=allocator,
                                **step.estimate_kwargs(m))
        steps = est.steps()
        fits = judge(steps, dev, batch) if dev else None
    would = None  # what would fit: single-process plans (a --dist plan's changes are its own)
    if fits and sharding is None and not all(f.fits for f in fits.values()):
        with o.status("Planning what would fit (each change estimated for real)…", json_out) as say:
            would = search(m, step, dev, fits, steps, spec,
                           devices=list_devices(tuple(devices_file or ())), progress=say)
    if svg is not None:
        path = write_svg(svg, [BarRow(oid, s.breakdown) for oid, s in steps.items()],
                         dev.usable_bytes, f"{spec.name} · batch {batch} · {dev.id} ({dev.name})")
        if not est.complete:
            print(f"warning: {path}: activations not known, the bars are lower bounds", file=sys.stderr)
    if json_out:
        o.emit_json(plan_document(spec, plans, adam, estimate=est, device=dev, fits=fits,
                                  would_fit=would))
        return
    console = make_console()
    console.print(model_header(spec))
    # under --dist this table is the whole model's state, before sharding; the per-rank figures follow
    console.print(state_table(plans, adam, "Optimizer state" + (" (whole model, one process)"
                                                                 if sharding is not None else "")))
    if not end_to_end:
        return
    console.print(recipe_line(est))
    order = sorted(steps, key=lambda oid: (steps[oid].total_bytes, oid))
    if sharding is not None:
        console.print(sharding_header(sharding))
    if dev is not None:
        console.print(device_report({oid: steps[oid] for oid in order}, dev, batch, fits,
                                    note=" · the largest rank" if sharding is not None else "",
                                    would_fit=would))
    else:
        console.print(verdict_table({oid: steps[oid] for oid in order},
                                    title=f"Training step at batch {batch} ({est.allocator} allocator)"
                                    + (" · the largest rank" if sharding is not None else "")))
    if sharding is not None:
        console.print(rank_table({oid: steps[oid] for oid in order}, sharding, batch))
    console.print(assumptions_text(est.assumptions))
    if svg is not None:
        console.print(f"wrote {path}", style="dim")
