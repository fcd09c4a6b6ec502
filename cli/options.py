"""Options shared by several commands, declared once."""

from __future__ import annotations

import contextlib
import sys
from typing import Annotated, Optional

import typer

from smmf_plan.optimizers.registry import ALL_IDS, DEFAULT_IDS  # torch-free, a few ms

Model = Annotated[str, typer.Argument(
    help="timm name, bundled checkpoint name (gpt2, bert-base-uncased, llama-2-7b …), "
         "config.json, model directory, .safetensors / .index.json / .pt file, or hub id.",
    show_default=False)]
Optimizers = Annotated[Optional[str], typer.Option(
    "--optimizer", "-o",
    help=f"Comma-separated optimizer ids with optional variants ({', '.join(ALL_IDS)}) or 'all' "
         f"(smmf-plan optimizers lists every option). Default: {','.join(DEFAULT_IDS)}.")]
DType = Annotated[Optional[str], typer.Option(
    "--dtype", help="Plan parameters in this dtype (fp32, bf16, fp16, fp64). Default: as the source has them.")]
NumClasses = Annotated[Optional[int], typer.Option(
    "--num-classes", help="Classifier size for timm models (default: the architecture's).", min=1)]
Trainable = Annotated[Optional[list[str]], typer.Option(
    "--trainable", help="Only parameters matching this glob are trained (repeatable).")]
Freeze = Annotated[Optional[list[str]], typer.Option(
    "--freeze", help="Parameters matching this glob are frozen (repeatable).")]
LoraRank = Annotated[Optional[int], typer.Option(
    "--lora-rank", help="Plan LoRA adapters of this rank; base weights frozen.", min=1)]
LoraTargets = Annotated[Optional[str], typer.Option(
    "--lora-targets", help="Comma-separated module names that get adapters (q_proj,v_proj,…).")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON (schema in the README) instead of tables.")]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Rebuild the parameter specs instead of using the shape cache.")]

# end-to-end training-step options (smmf_plan.memory.estimate)
BatchSize = Annotated[Optional[int], typer.Option(
    "--batch-size", "-b", help="Samples per training step (default 1).", show_default=False)]
InputSize = Annotated[Optional[str], typer.Option(
    "--input-size", help="Image input C,H,W (default: the model's pretrained config).",
    show_default=False)]
SeqLen = Annotated[Optional[int], typer.Option(
    "--seq-len", help="Tokens per sample for text models (default 128, or the model's maximum "
                      "positions if smaller).", show_default=False)]
Amp = Annotated[Optional[str], typer.Option(
    "--amp", help="Mixed precision compute dtype (bf16 or fp16) with fp32 master weights.",
    show_default=False)]
GradCheckpointing = Annotated[bool, typer.Option(
    "--grad-checkpointing", help="Recompute activations in backward instead of keeping them.")]
Runtime = Annotated[Optional[str], typer.Option(
    "--runtime", help="Runtime baseline you measured on the device (e.g. 180MiB: RSS of a process "
                      "that imported torch and your model library), instead of the stated default.",
    show_default=False)]
Svg = Annotated[Optional[str], typer.Option(
    "--svg", help="Also write the stacked bars as SVG to this file (needs exactly one device).",
    show_default=False)]

# devices (smmf_plan.devices)
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


def batch_size(value: int | None) -> int:
    from smmf_plan.fit import check_batch_size

    return check_batch_size(1 if value is None else value)


def estimate_options(input_size, seq_len, amp, grad_checkpointing, dtype, runtime=None) -> dict:
    """Keyword arguments for :func:`smmf_plan.memory.estimate`, validated."""
    from smmf_plan.errors import PlanError
    from smmf_plan.units import parse_size

    if seq_len is not None and seq_len < 1:
        raise PlanError(f"--seq-len {seq_len} is not a sequence length: give a whole number >= 1")
    return {"input_size": input_size, "seq_len": seq_len, "dtype": dtype, "amp": amp,
            "grad_checkpointing": grad_checkpointing,
            "runtime_bytes": None if runtime is None else parse_size(runtime, "--runtime")}


def split_csv(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


@contextlib.contextmanager
def status(message: str, quiet: bool = False):
    """A transient spinner on stderr for slow steps (only on a terminal, never in --json runs)."""
    if quiet or not sys.stderr.isatty():
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield


def load_model(model: str, *, num_classes=None, trainable=None, freeze=None, lora_rank=None,
               lora_targets=None, no_cache=False, quiet=False):
    from smmf_plan.errors import PlanError
    from smmf_plan.sources import load_model as _load

    targets = split_csv(lora_targets)
    if lora_rank is None and targets:
        raise PlanError("--lora-targets needs --lora-rank: add e.g. --lora-rank 8")
    if lora_rank is not None and not targets:
        raise PlanError("--lora-rank needs --lora-targets: add e.g. --lora-targets q_proj,v_proj")
    with status(f"Reading {model} (no weights are allocated)…", quiet):
        return _load(model, num_classes=num_classes, trainable=tuple(trainable or ()),
                     freeze=tuple(freeze or ()), lora_rank=lora_rank, lora_targets=tuple(targets),
                     use_cache=not no_cache)


def layouts(text: str | None):
    from smmf_plan.errors import PlanError
    from smmf_plan.optimizers import UnknownOptimizer, parse_many

    try:
        return parse_many(text)
    except UnknownOptimizer as e:
        raise PlanError(str(e)) from None


def dtype(text: str | None) -> str | None:
    from smmf_plan import dtypes
    from smmf_plan.errors import PlanError

    if text is None:
        return None
    try:
        dt = dtypes.canonical(text)
    except ValueError as e:
        raise PlanError(f"--dtype: {e}") from None
    if dt not in dtypes.FLOATING:
        raise PlanError(f"--dtype {text!r} is not a floating-point dtype: use fp32, bf16, fp16 or fp64")
    return dt


def emit_json(obj) -> None:
    import json

    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
