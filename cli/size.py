"""``smmf-plan size MODEL``: devices × optimizers — fits, headroom, largest batch — and the smallest
device that fits with each optimizer.

The memory per optimizer is the end-to-end estimate of :mod:`smmf_plan.memory`; with ``--dist`` and
``--world`` the largest rank's (:mod:`smmf_plan.dist`). ``--dist`` without ``--world`` answers the
other question: the smallest number of each device that fits (:mod:`smmf_plan.dist.search`).
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

from rich.text import Text

from smmf_plan import fit
from smmf_plan.allocators import models
from smmf_plan.devices import get_device, list_devices
from smmf_plan.dist.estimate import step_estimate as estimate
from smmf_plan.dist.search import smallest_worlds
from smmf_plan.errors import PlanError
from smmf_plan.options import DistOptions, ModelOptions, StepOptions
from smmf_plan.report.bars import BarRow, write_svg
from smmf_plan.report.console import console as make_console
from smmf_plan.report.fit_table import device_report, size_table
from smmf_plan.report.rank_table import answers_table, rank_table, sharding_header, world_table
from smmf_plan.report.state_table import assumptions_text, model_header, recipe_line
from smmf_plan.report.step_json import size_document, size_search_document
from smmf_plan.units import format_bytes

from . import options as o


def step_estimate(spec, layouts, allocator: str, *, batch_size: int, estimate_options: dict[str, Any],
                  sharding=None):
    """The :class:`~smmf_plan.memory.MemoryEstimate` under ``allocator`` (the largest rank's under
    ``sharding``)."""
    return estimate(spec, layouts, sharding, batch_size=batch_size, allocator=allocator,
                    **estimate_options)


def allocators_for(devices: Sequence, allocator: str | None) -> dict[str, str]:
    """device id → allocator model id: ``allocator`` (``--allocator``) on the devices it can
    describe, each other device's default; a model that describes none of them is a
    :class:`PlanError`."""
    chosen = models.get_model(allocator) if allocator is not None else None
    out = {}
    for d in devices:
        out[d.id] = (chosen if chosen in models.applicable(d) else models.default_for(d)).id
    if chosen is not None and devices and chosen.id not in out.values():
        models.for_device(devices[0], chosen.id)  # raises, naming what applies
    return out


def size_model(spec, layouts, devices: Sequence, *, batch_size: int,
               estimate_options: dict[str, Any] | None = None, sharding=None,
               allocator: str | None = None) -> dict:
    """Everything ``size`` shows, computed once: steps per allocator model, the device × optimizer
    grid, the optimizer order (least memory first), the devices by usable memory and, per
    optimizer, the smallest device that fits (PyTorch running there, and on memory alone)."""
    model_of = allocators_for(devices, allocator)
    estimates = {a: step_estimate(spec, layouts, a, batch_size=batch_size,
                                  estimate_options=estimate_options or {}, sharding=sharding)
                 for a in sorted(set(model_of.values()))}
    steps = {a: est.steps() for a, est in estimates.items()}
    grid = fit.grid(steps, devices, batch_size, allocator_of=lambda d: model_of[d.id])
    ref = steps.get("glibc") or next(iter(steps.values()))
    order = sorted(ref, key=lambda oid: (ref[oid].total_bytes, oid))
    by_memory = sorted(devices, key=lambda d: (d.usable_bytes, d.id))
    smallest = {}
    for oid in order:
        pairs = [(d, grid[d.id][oid]) for d in by_memory]
        smallest[oid] = (fit.smallest_device(pairs), fit.smallest_device(pairs, require_pytorch=False))
    complete = all(s.complete for per in steps.values() for s in per.values())
    first = next(iter(estimates.values()), None)
    reason = next((e.incomplete_reason for e in estimates.values() if e.incomplete_reason), None)
    return {"steps": steps, "grid": grid, "order": order, "devices": by_memory,
            "smallest": smallest, "complete": complete, "incomplete_reason": reason,
            "sharding": sharding, "allocators": model_of,
            "recipe": None if first is None else first.recipe_info,
            "recipe_line": None if first is None else recipe_line(first)}


@o.shared_options()
def size(
    m: ModelOptions,
    step: StepOptions,
    dist: DistOptions,
    device: o.Devices = None,
    devices_file: o.DevicesFile = None,
    svg: o.Svg = None,
    json_out: o.Json = False,
) -> None:
    """Which devices can train MODEL, with which optimizer, at what batch size. With --dist and
    --world, per rank; with --dist alone, the smallest number of each device (default: the
    catalog's GPUs) that fits."""
    batch = step.batch
    layouts = m.layouts()
    dt = m.dtype
    recipe = m.recipe(step)
    files = tuple(devices_file or ())
    search = dist.given and dist.world is None
    sharding = dist.sharding() if dist.given and not search else None
    if device:
        chosen = list({d.id: d for d in (get_device(t, files) for t in device)}.values())
    else:
        chosen = list_devices(files)
        if search:
            chosen = [d for d in chosen if d.allocator == "cuda" and d.runs_pytorch]
        if step.offload is not None:  # offloading is for GPUs: judge those
            chosen = [d for d in chosen if d.has_host]
    chosen = [step.device(d) for d in chosen]
    if search:
        if svg is not None:
            raise PlanError(f"--svg {svg!r} draws one world size: add --world N")
        return _search(m, step, dist, chosen, json_out)
    if svg is not None and len(chosen) != 1:
        raise PlanError(f"--svg {svg!r} draws the bars against one device: add --device ID "
                        f"(got {len(chosen)} devices)")
    spec = o.load(m, quiet=json_out, recipe=recipe)
    options = step.estimate_kwargs(m)
    with o.status("Estimating training memory (tracing one step on meta tensors)…", json_out):
        result = size_model(spec, layouts, chosen, batch_size=batch, estimate_options=options,
                            sharding=sharding, allocator=step.allocator)
    if json_out:
        o.emit_json(size_document(spec, batch, result))
        if svg is not None:
            _write_svg(svg, spec, result, batch)
        return
    _print(spec, dt, batch, result)
    if svg is not None:
        path = _write_svg(svg, spec, result, batch)
        print(f"wrote {path}", file=sys.stderr)


def _bar_rows(result: dict, device) -> list:
    steps = result["steps"][result["allocators"][device.id]]
    return [BarRow(oid, steps[oid].breakdown) for oid in result["order"]]


def _write_svg(path: str, spec, result: dict, batch: int):
    d = result["devices"][0]
    title = f"{spec.name} · batch {batch} · {d.id} ({d.name})"
    return write_svg(path, _bar_rows(result, d), d.usable_bytes, title)


def _print(spec, dtype, batch: int, result: dict) -> None:
    console = make_console()
    console.print(model_header(spec))
    if result.get("recipe_line") is not None:
        console.print(result["recipe_line"])
    if not result["complete"]:
        why = result.get("incomplete_reason") or "no architecture for these weights"
        console.print(Text(f"Activations not known ({why}): the totals are lower bounds.",
                           style="yellow"))
    devices = result["devices"]
    grid = result["grid"]
    sharding = result.get("sharding")
    if sharding is not None:
        console.print(sharding_header(sharding))
    if len(devices) == 1:
        d = devices[0]
        steps = result["steps"][result["allocators"][d.id]]
        console.print(device_report(steps, d, batch, grid[d.id],
                                    note=" · the largest rank" if sharding is not None else ""))
        if sharding is not None:
            console.print(rank_table(steps, sharding, batch))
        return
    console.print(size_table(devices, result["order"], grid, batch))
    lines = Text(f"Smallest device that fits at batch {batch} (and runs PyTorch):\n", style="bold")
    width = max(len(oid) for oid in result["order"])
    for oid in result["order"]:
        runs, anywhere = result["smallest"][oid]
        lines.append(f"  {oid:<{width}}  ")
        if runs is None and not result["complete"] and any(
                grid[d.id][oid].fits is None for d in devices):
            lines.append("not known (activations not estimated)", style="yellow")
        elif runs is None:
            lines.append("none of these devices", style="red")
        else:
            lines.append(runs.id, style="green")
            lines.append(f" ({format_bytes(runs.usable_bytes, 0)} usable)")
        if anywhere is not None and anywhere is not runs:
            lines.append(f"; {anywhere.id} fits in memory, but PyTorch does not run there",
                         style="dim")
        lines.append("\n")
    console.print(lines, end="")


def _search(m: ModelOptions, step: StepOptions, dist: DistOptions, devices: Sequence,
            json_out: bool) -> None:
    """``size MODEL --dist S`` without ``--world``: the smallest number of each device."""
    if dist.nodes is not None:
        raise PlanError("--nodes needs --world: size --dist without --world searches the number "
                        "of ranks; drop --nodes")
    spec = o.load(m, quiet=json_out, recipe=m.recipe(step))
    layouts = m.layouts()
    batch = step.batch
    with o.status("Searching the smallest world size per device…", json_out):
        result = smallest_worlds(spec, layouts, dist.scheme, devices, batch_size=batch,
                                 shard_group=dist.shard_group_size, **step.estimate_kwargs(m))
    order = [v.id for v in layouts]
    if json_out:
        o.emit_json(size_search_document(spec, batch, result, devices, order))
        return

    console = make_console()
    console.print(model_header(spec))
    if not result.complete:
        console.print(Text("Activations not estimated (no architecture for these weights): "
                           "the totals are lower bounds.", style="yellow"))
    console.print(world_table(result, devices, order, batch))
    console.print(answers_table(result, devices, order))
    console.print(assumptions_text(result.assumptions))
