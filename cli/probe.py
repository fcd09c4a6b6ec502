"""``smmf-plan probe MODEL``: a few real training steps per optimizer, measured beside the plan."""

from __future__ import annotations

import shlex
import sys
from typing import Annotated, Optional

import typer

from smmf_plan.atomic import write_text_atomic
from smmf_plan.devices import get_device
from smmf_plan.errors import PlanError
from smmf_plan.options import DistOptions, ModelOptions, StepOptions
from smmf_plan.probe import dist as d
from smmf_plan.probe.runner import PROBE_RECIPE, run_probe
from smmf_plan.report.console import console as make_console
from smmf_plan.report.probe_report import failures, markdown, probe_table, rank_table, rank_verdicts, verdicts
from smmf_plan.trace import parse_input_size

from . import options as o

#: shared options the probe cannot honour yet: its worker builds the architecture in float32
#: (``smmf_plan.probe.runner.PROBE_RECIPE``) and trains it without adapters, quantization,
#: recomputation, accumulation or offload, under the stated runtime.
NOT_PROBED = ("dtype", "lora_rank", "lora_targets", "quantize_base", "double_quant", "amp",
              "grad_checkpointing", "grad_accum", "offload", "host_memory", "runtime")

Steps = Annotated[int, typer.Option("--steps", help="Training steps per optimizer (step 1 is a warm-up for timing).", min=1)]
DeviceType = Annotated[str, typer.Option("--device-type", help="Run on cpu or cuda.")]
DeviceCap = Annotated[Optional[str], typer.Option(
    "--device", help="Run under this device's usable memory as a cap (catalog id such as rpi-zero, "
                     "or a size such as 512MiB). CPU: Linux address-space limit over the post-import "
                     "baseline (conservative); CUDA: per-process memory fraction.")]
Lr = Annotated[Optional[float], typer.Option("--lr", help="Learning rate for every optimizer (default: a per-optimizer value, see the README).")]
Report = Annotated[Optional[str], typer.Option("--report", help="Also write a Markdown report to this file.")]
GlibcDefault = Annotated[bool, typer.Option(
    "--glibc-default", help="Measure CPU runs under glibc's default malloc instead of "
                            "MALLOC_MMAP_THRESHOLD_=131072 (what the estimate assumes; the default "
                            "keeps freed memory resident, so RSS reads up to ~1.35x higher).")]
Threads = Annotated[Optional[int], typer.Option("--threads", help="torch intra-op threads in each run (default: torch's).", min=1)]
Launcher = Annotated[bool, typer.Option(
    "--launcher", help="With --dist: print the torchrun command that runs this probe on a real "
                       "cluster (NCCL, --nnodes, c10d rendezvous) instead of running it here.")]
Timeout = Annotated[Optional[float], typer.Option("--timeout", help="Seconds allowed per optimizer run (default: no limit).", min=1)]


def _command_line(model: str, **opts) -> str:
    """The command that reproduces a run (for the report's header)."""
    parts = ["smmf-plan", "probe", model]
    for key, value in opts.items():
        if value is None or (key == "device_type" and value == "cpu"):
            continue
        parts += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return " ".join(shlex.quote(p) for p in parts)


@o.shared_options(omit=NOT_PROBED)
def probe(
    m: ModelOptions,
    step: StepOptions,
    dist: DistOptions,
    steps: Steps = 10,
    device_type: DeviceType = "cpu",
    device: DeviceCap = None,
    lr: Lr = None,
    json_out: o.Json = False,
    report: Report = None,
    timeout: Timeout = None,
    glibc_default: GlibcDefault = False,
    threads: Threads = None,
    launcher: Launcher = False,
) -> None:
    """Train MODEL (random weights, synthetic batch) a few steps with each optimizer, each in a fresh
    subprocess, and show measured state, peak memory and step times beside the plan."""
    layouts = m.layouts()
    # "-o all" means every optimizer that can run here: those whose implementation is not
    # installed are named and left out (one named explicitly still fails the probe)
    not_probed = {}
    if isinstance(m.optimizers, str) and m.optimizers.strip().lower() == "all":
        not_probed = {v.id: v.missing_requirement() for v in layouts if v.missing_requirement()}
        layouts = [v for v in layouts if v.id not in not_probed]
        for reason in not_probed.values():
            print(f"not probed: {reason}", file=sys.stderr)
    if dist.given or launcher:
        given = [flag for flag, v in (("--device", device), ("--report", report),
                                      ("--glibc-default", glibc_default)) if v]
        if given:
            raise PlanError(f"{given[0]} is not available with --dist yet: drop it (the ranks run "
                            "uncapped on CPU under glibc's default malloc)")
        if device_type != "cpu" and not launcher:
            raise PlanError("--dist runs its ranks on this host's CPU (gloo); for GPUs print the "
                            "cluster command with --launcher")
        return _probe_dist(m, step, layouts, dist, launcher, steps=steps, lr=lr,
                           json_out=json_out, threads=threads, timeout=timeout)
    if device_type not in ("cpu", "cuda"):
        raise PlanError(f"--device-type {device_type!r}: use cpu or cuda")
    dev = None
    if device is not None:
        dev = get_device(device)
    spec = o.load(m, quiet=json_out, recipe=PROBE_RECIPE)
    size = None
    if step.input_size is not None:
        size = list(parse_input_size(step.input_size))
    doc = run_probe(spec, layouts, steps=steps, batch_size=step.batch, input_size=size,
                    seq_len=step.seq_len, device_type=device_type, device=dev, lr=lr,
                    progress=not json_out and sys.stderr.isatty(), timeout_s=timeout,
                    num_threads=threads, deterministic_malloc=not glibc_default)
    if not_probed:
        doc["not_probed"] = not_probed
    if report:
        command = _command_line(m.model, optimizer=m.optimizers, steps=steps, batch_size=step.batch,
                                input_size=step.input_size, seq_len=step.seq_len,
                                device_type=device_type, device=device, lr=lr, threads=threads,
                                glibc_default=glibc_default or None, report=report)
        try:
            write_text_atomic(report, markdown(doc, command=command))
        except OSError as e:
            raise PlanError(f"--report {report}: cannot write ({e.strerror or e}); check the path") from None
    if json_out:
        o.emit_json(doc)
    else:
        console = make_console()
        console.print(probe_table(doc))
        for line in verdicts(doc):
            console.print(line, highlight=False)
        if report:
            console.print(f"report written to {report}", highlight=False)
    failed = failures(doc)
    err = make_console(stderr=True)
    for line in failed:
        err.print(f"error: {line}", highlight=False, soft_wrap=True)
    if failed:
        # an optimizer that could not run is not a measurement: fail like a test would
        raise typer.Exit(1)


def _probe_dist(m: ModelOptions, step: StepOptions, layouts, dist: DistOptions, launcher: bool, *,
                steps: int, lr, json_out: bool, threads, timeout) -> None:
    """``--dist``: one torchrun per optimizer; ``--launcher``: the cluster command, not run."""
    if not dist.given:
        raise PlanError("--launcher needs --dist and --world: e.g. --dist fsdp2 --world 8 --launcher")
    sharding = d.probe_sharding(dist)
    size = None
    if step.input_size is not None:
        size = list(parse_input_size(step.input_size))
    if launcher:
        lines = []
        for layout in layouts:
            worker = d.worker_args(m.model, layout.id, sharding, steps, step.batch or 1, size,
                                   step.seq_len, m.num_classes, m.task, lr, threads, "cuda")
            lines.append(d.cluster_command(sharding, worker))
        if json_out:
            o.emit_json({"schema_version": 2, "launcher": lines})
        else:
            for line in lines:
                print(line)
        return
    spec = o.load(m, quiet=json_out)
    doc = d.run_dist_probe(m.model, spec, layouts, sharding, steps=steps,
                           batch_size=step.batch or 1, input_size=size, seq_len=step.seq_len,
                           num_classes=m.num_classes, task=m.task, lr=lr, threads=threads,
                           timeout_s=timeout, progress=not json_out and sys.stderr.isatty())
    if json_out:
        o.emit_json(doc)
    else:
        console = make_console()
        console.print(rank_table(doc))
        for line in rank_verdicts(doc):
            console.print(line, highlight=False)
    failed = [f"{oid}: {e['error']}" for oid, e in doc["optimizers"].items() if e["status"] != "ok"]
    err = make_console(stderr=True)
    for line in failed:
        err.print(f"error: {line}", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)
