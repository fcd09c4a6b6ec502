"""``smmf-plan size MODEL``: devices × optimizers — fits, headroom, largest batch — and the smallest
device that fits with each optimizer.

The memory per optimizer comes from :mod:`smmf_plan.memory` (the end-to-end estimate) where that
module is installed; otherwise only weights + gradients + optimizer state are counted, and the
output says so.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Annotated, Any, Optional, Sequence

import typer

from . import options as o
from .app import app
from .devices import Devices, DevicesFile

BatchSize = getattr(o, "BatchSize", Annotated[int, typer.Option(
    "--batch-size", "-b", help="Samples per training step.")])
InputSize = getattr(o, "InputSize", Annotated[Optional[str], typer.Option(
    "--input-size", help="Image input C,H,W (default: the model's pretrained config).",
    show_default=False)])
SeqLen = getattr(o, "SeqLen", Annotated[Optional[int], typer.Option(
    "--seq-len", help="Tokens per sample for text models.", show_default=False)])
Amp = getattr(o, "Amp", Annotated[Optional[str], typer.Option(
    "--amp", help="Mixed precision compute dtype (bf16 or fp16) with fp32 master weights.",
    show_default=False)])
GradCheckpointing = getattr(o, "GradCheckpointing", Annotated[bool, typer.Option(
    "--grad-checkpointing", help="Recompute activations in backward instead of keeping them.")])
Svg = Annotated[Optional[str], typer.Option(
    "--svg", help="Also write the stacked bars as SVG to this file (needs exactly one --device).",
    show_default=False)]


def has_memory_model() -> bool:
    """True when the end-to-end estimate (:mod:`smmf_plan.memory`) is available."""
    return importlib.util.find_spec("smmf_plan.memory") is not None


def step_memory(spec, layouts, allocator: str, *, batch_size: int, estimate_options: dict[str, Any]):
    """optimizer id → :class:`~smmf_plan.fit.StepMemory` under ``allocator``."""
    from smmf_plan import fit

    if has_memory_model():
        from smmf_plan import memory

        est = memory.estimate(spec, layouts, batch_size=batch_size, allocator=allocator,
                              **estimate_options)
        return fit.from_estimate(est, batch_size)
    return fit.state_only(spec, layouts, allocator)


def size_model(spec, layouts, devices: Sequence, *, batch_size: int,
               estimate_options: dict[str, Any] | None = None) -> dict:
    """Everything ``size`` shows, computed once: steps per allocator, the device × optimizer grid,
    the optimizer order (least memory first), the devices by usable memory and, per optimizer,
    the smallest device that fits (PyTorch running there, and on memory alone)."""
    from smmf_plan import fit

    steps = {a: step_memory(spec, layouts, a, batch_size=batch_size,
                            estimate_options=estimate_options or {})
             for a in sorted({d.allocator for d in devices})}
    grid = fit.grid(steps, devices, batch_size)
    ref = steps.get("cpu") or next(iter(steps.values()))
    order = sorted(ref, key=lambda oid: (ref[oid].total_bytes, oid))
    by_memory = sorted(devices, key=lambda d: (d.usable_bytes, d.id))
    smallest = {}
    for oid in order:
        pairs = [(d, grid[d.id][oid]) for d in by_memory]
        smallest[oid] = (fit.smallest_device(pairs), fit.smallest_device(pairs, require_pytorch=False))
    complete = all(s.complete for per in steps.values() for s in per.values())
    return {"steps": steps, "grid": grid, "order": order, "devices": by_memory,
            "smallest": smallest, "complete": complete}


def size_document(spec, dtype: str | None, batch_size: int, result: dict) -> dict:
    from smmf_plan.fit import recommendation
    from smmf_plan.report import SCHEMA_VERSION
    from smmf_plan.report.fit_table import device_json

    steps, grid = result["steps"], result["grid"]
    optimizers = {}
    for oid in result["order"]:
        runs, anywhere = result["smallest"][oid]
        optimizers[oid] = {
            "by_allocator": {a: per[oid].to_dict() for a, per in steps.items()},
            "smallest_device": device_json(runs),
            "smallest_device_memory_only": device_json(anywhere),
        }
    rows = []
    for d in result["devices"]:
        cells = {oid: {"total_bytes": grid[d.id][oid].total_bytes, **grid[d.id][oid].to_dict()}
                 for oid in result["order"]}
        rows.append({"device": device_json(d), "optimizers": cells,
                     "recommendation": recommendation(d, grid[d.id], batch_known=result["complete"])})
    return {
        "schema_version": SCHEMA_VERSION,
        "model": {**spec.summary(), "dtype": dtype},
        "batch_size": batch_size,
        "estimate": "end-to-end" if result["complete"] else "weights+grads+state",
        "optimizers": optimizers,
        "devices": rows,
    }


def _estimate_options(input_size, seq_len, amp, grad_checkpointing, dtype) -> dict[str, Any]:
    return {"input_size": input_size, "seq_len": seq_len, "dtype": dtype, "amp": amp,
            "grad_checkpointing": grad_checkpointing}


@app.command("size")
def size(
    model: o.Model,
    optimizer: o.Optimizers = None,
    dtype: o.DType = None,
    num_classes: o.NumClasses = None,
    trainable: o.Trainable = None,
    freeze: o.Freeze = None,
    lora_rank: o.LoraRank = None,
    lora_targets: o.LoraTargets = None,
    batch_size: BatchSize = 1,
    input_size: InputSize = None,
    seq_len: SeqLen = None,
    amp: Amp = None,
    grad_checkpointing: GradCheckpointing = False,
    device: Devices = None,
    devices_file: DevicesFile = None,
    svg: Svg = None,
    json_out: o.Json = False,
    no_cache: o.NoCache = False,
) -> None:
    """Which devices can train MODEL, with which optimizer, at what batch size."""
    from smmf_plan.devices import get_device, list_devices
    from smmf_plan.errors import PlanError
    from smmf_plan.fit import check_batch_size
    from smmf_plan.plan import with_dtype

    batch = check_batch_size(batch_size)
    if seq_len is not None and seq_len < 1:
        raise PlanError(f"--seq-len {seq_len} is not a sequence length: give a whole number ≥ 1")
    layouts = o.layouts(optimizer)
    dt = o.dtype(dtype)
    files = tuple(devices_file or ())
    if device:
        chosen = list({d.id: d for d in (get_device(t, files) for t in device)}.values())
    else:
        chosen = list_devices(files)
    if svg is not None and len(chosen) != 1:
        raise PlanError(f"--svg {svg!r} draws the bars against one device: add --device ID "
                        f"(got {len(chosen)} devices)")
    spec = o.load_model(model, num_classes=num_classes, trainable=trainable, freeze=freeze,
                        lora_rank=lora_rank, lora_targets=lora_targets, no_cache=no_cache,
                        quiet=json_out)
    spec.params = with_dtype(spec.params, dt)
    asked = {"--input-size": input_size, "--seq-len": seq_len, "--amp": amp,
             "--grad-checkpointing": grad_checkpointing or None}
    if not has_memory_model() and any(v is not None for v in asked.values()):
        names = ", ".join(k for k, v in asked.items() if v is not None)
        print(f"note: {names} ignored: activations are not estimated in this build", file=sys.stderr)
    with o.status("Estimating training memory…", json_out):
        result = size_model(spec, layouts, chosen, batch_size=batch,
                            estimate_options=_estimate_options(input_size, seq_len, amp,
                                                               grad_checkpointing, dt))
    if json_out:
        o.emit_json(size_document(spec, dt, batch, result))
        if svg is not None:
            _write_svg(svg, spec, result, batch)
        return
    _print(spec, dt, batch, result)
    if svg is not None:
        path = _write_svg(svg, spec, result, batch)
        print(f"wrote {path}", file=sys.stderr)


def _bar_rows(result: dict, device) -> list:
    from smmf_plan.report.bars import BarRow

    steps = result["steps"][device.allocator]
    return [BarRow(oid, dict(steps[oid].parts)) for oid in result["order"]]


def _write_svg(path: str, spec, result: dict, batch: int):
    from smmf_plan.report.bars import write_svg

    d = result["devices"][0]
    title = f"{spec.name} · batch {batch} · {d.id} ({d.name})"
    return write_svg(path, _bar_rows(result, d), d.usable_bytes, title)


def _print(spec, dtype, batch: int, result: dict) -> None:
    from rich.console import Console
    from rich.text import Text

    from smmf_plan.report.fit_table import STATE_ONLY_NOTE, size_table
    from smmf_plan.report.state_table import model_header
    from smmf_plan.units import format_bytes

    console = Console()
    console.print(model_header(spec, dtype))
    if not result["complete"]:
        console.print(Text(STATE_ONLY_NOTE, style="yellow"))
    devices = result["devices"]
    grid = result["grid"]
    if len(devices) == 1:
        from smmf_plan.report.fit_table import device_report

        d = devices[0]
        console.print(device_report(result["steps"][d.allocator], d, batch, grid[d.id]))
        return
    console.print(size_table(devices, result["order"], grid, batch))
    lines = Text(f"Smallest device that fits at batch {batch} (and runs PyTorch):\n", style="bold")
    width = max(len(oid) for oid in result["order"])
    for oid in result["order"]:
        runs, anywhere = result["smallest"][oid]
        lines.append(f"  {oid:<{width}}  ")
        if runs is None:
            lines.append("none of these devices", style="red")
        else:
            lines.append(runs.id, style="green")
            lines.append(f" ({format_bytes(runs.usable_bytes, 0)} usable)")
        if anywhere is not None and anywhere is not runs:
            lines.append(f"; {anywhere.id} fits in memory, but PyTorch does not run there",
                         style="dim")
        lines.append("\n")
    console.print(lines, end="")
