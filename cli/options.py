"""Options shared by several commands, declared once, and :func:`shared_options`, which gives
``plan``, ``shapes``, ``size`` and ``probe`` one set of model options (and, where they apply, the
training-step options and the distributed-training options) as one validated record each.

A command declares a parameter annotated :class:`~smmf_plan.options.ModelOptions` (and optionally
ones annotated :class:`~smmf_plan.options.StepOptions` and
:class:`~smmf_plan.options.DistOptions`); the decorator replaces it in the
signature Typer reads by the individual options below, and hands the command the record::

    @shared_options()
    def shapes(m: ModelOptions, json_out: Json = False) -> None: ...
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import sys
from typing import Annotated, Any, Callable, Iterable, Optional

import typer
from rich.text import Text

from smmf_plan import dtypes
from smmf_plan.allocators.models import IDS as ALLOCATOR_IDS
from smmf_plan.allocators.models import get_model
from smmf_plan.errors import PlanError
from smmf_plan.fit import check_batch_size
from smmf_plan.optimizers.registry import ALL_IDS, DEFAULT_IDS
from smmf_plan.options import DistOptions, ModelOptions, StepOptions
from smmf_plan.recipe import Recipe
from smmf_plan.report.console import console
from smmf_plan.tasks import TASKS, check_task
from smmf_plan.units import parse_size

Model = Annotated[str, typer.Argument(
    help="timm name, bundled checkpoint name (gpt2, bert-base-uncased, llama-2-7b …), "
         "config.json, model directory, .safetensors / .index.json / .pt file, or hub id.",
    show_default=False)]
Optimizers = Annotated[Optional[str], typer.Option(
    "--optimizer", "-o",
    help=f"Comma-separated optimizer ids with optional variants ({', '.join(ALL_IDS)}) or 'all' "
         f"(smmf-plan optimizers lists every option). Default: {','.join(DEFAULT_IDS)}.")]
DType = Annotated[Optional[str], typer.Option(
    "--dtype", help="Store the weights in this dtype (fp32, bf16, fp16, fp64): pure training in it; "
                    "with --amp, the dtype of a frozen base. Default: as the checkpoint stores them "
                    "(a config's torch_dtype).")]
NumClasses = Annotated[Optional[int], typer.Option(
    "--num-classes", help="Classifier size for timm models (default: the architecture's).", min=1)]
Task = Annotated[Optional[str], typer.Option(
    "--task", help=f"Head to build from a transformers config: {', '.join(TASKS)}. Default: the "
                   "config's architectures, else the head its model_type is trained with.",
    show_default=False)]
Trainable = Annotated[Optional[list[str]], typer.Option(
    "--trainable", help="Only parameters matching this glob are trained (repeatable).")]
Freeze = Annotated[Optional[list[str]], typer.Option(
    "--freeze", help="Parameters matching this glob are frozen (repeatable).")]
LoraRank = Annotated[Optional[int], typer.Option(
    "--lora-rank", help="Plan LoRA adapters of this rank; base weights frozen.", min=1)]
LoraTargets = Annotated[Optional[str], typer.Option(
    "--lora-targets", help="Comma-separated module names that get adapters (q_proj,v_proj,…).")]
Target = Annotated[Optional[list[str]], typer.Option(
    "--target", help="The 2-D weights GaLore, APOLLO, COAP and Muon treat, as a name glob "
                     "(repeatable); default: Linear weights except the output head.")]
QuantizeBase = Annotated[Optional[str], typer.Option(
    "--quantize-base", help="Store the frozen base's Linear layers as bitsandbytes does: nf4, fp4 "
                            "(4-bit, QLoRA) or int8 (LLM.int8()). Needs a frozen base (--lora-rank, "
                            "--trainable or --freeze).", show_default=False)]
DoubleQuant = Annotated[bool, typer.Option(
    "--double-quant", help="4-bit: quantize the absmax too (bnb_4bit_use_double_quant; off by "
                           "default, as in BitsAndBytesConfig).")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON (schema in the README) instead of tables.")]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Rebuild the parameter specs instead of using the shape cache.")]

# end-to-end training-step options (smmf_plan.memory.estimate)
BatchSize = Annotated[Optional[int], typer.Option(
    "--batch-size", "-b", help="Samples per training step (default 1).", show_default=False)]
InputSize = Annotated[Optional[str], typer.Option(
    "--input-size", help="Image input C,H,W, or one number for a square RGB image (default: the "
                         "model's pretrained config).",
    show_default=False)]
SeqLen = Annotated[Optional[int], typer.Option(
    "--seq-len", help="Tokens per sample for text models (default 128, or the model's maximum "
                      "positions if smaller).", show_default=False)]
Amp = Annotated[Optional[str], typer.Option(
    "--amp", help="Mixed precision compute dtype (bf16 or fp16) with fp32 master weights "
                  "(trainable weights, gradients and state in fp32).",
    show_default=False)]
GradCheckpointing = Annotated[bool, typer.Option(
    "--grad-checkpointing", help="Recompute activations in backward instead of keeping them.")]
GradAccum = Annotated[Optional[int], typer.Option(
    "--grad-accum", help="Gradient accumulation: micro-steps per optimizer step (--batch-size is "
                         "the micro-batch; the effective batch is their product).",
    show_default=False)]
Offload = Annotated[Optional[str], typer.Option(
    "--offload", help="Keep the optimizer on the GPU's host: 'optimizer' (state, pinned copies, the "
                      "step on the CPU, as torchao's CPUOffloadOptimizer) or 'optimizer+grads' (and "
                      "free each gradient on the GPU once copied).", show_default=False)]
HostMemory = Annotated[Optional[str], typer.Option(
    "--host-memory", help="Host RAM beside the GPU (e.g. 64GiB), for --offload; default: the "
                          "device's (smmf-plan devices --json gives its basis).",
    show_default=False)]
Runtime = Annotated[Optional[str], typer.Option(
    "--runtime", help="Runtime baseline you measured on the device (e.g. 180MiB: RSS of a process "
                      "that imported torch and your model library), instead of the stated default.",
    show_default=False)]
Allocator = Annotated[Optional[str], typer.Option(
    "--allocator", metavar="|".join(ALLOCATOR_IDS),
    help="Allocator model of the training process: glibc (CPU, as installed: the default on CPU "
         "devices), glibc-mmap (CPU with MALLOC_MMAP_THRESHOLD_=131072 set in the training "
         "process: tighter), cuda (GPUs), unified (Jetson), mps (Apple). Default: the device's.",
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


def split_csv(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


@contextlib.contextmanager
def status(message: str, quiet: bool = False):
    """A transient spinner on stderr for slow steps (only on a terminal, never in --json runs);
    ``with status(...) as say:`` ``say(text)`` shows ``text`` after the message as the step goes."""
    if quiet or not sys.stderr.isatty():
        yield lambda text: None
        return

    with console(stderr=True).status(Text(message)) as spinner:  # a str would be parsed as markup
        yield lambda text: spinner.update(Text(f"{message} {text}"))


def load(m: ModelOptions, quiet: bool = False, recipe=None):
    """``m.load(recipe)`` behind a spinner (every parameter in the dtype the recipe stores it in).
    What the source had to guess (e.g. the head of a config without ``architectures``) is printed
    as one ``warning:`` line per fact on stderr, also under ``--json``."""
    with status(f"Reading {m.model} (no weights are allocated)…", quiet):
        spec = m.load(recipe)
    for line in (spec.meta or {}).get("warnings") or ():
        print(f"warning: {line}", file=sys.stderr)
    return spec


def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


# --------------------------------------------------------------------------- the shared option set

#: (parameter, its option, its default) of every model option, in --help order.
MODEL_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("model", Model, inspect.Parameter.empty),
    ("optimizer", Optimizers, None),
    ("dtype", DType, None),
    ("num_classes", NumClasses, None),
    ("task", Task, None),
    ("trainable", Trainable, None),
    ("freeze", Freeze, None),
    ("lora_rank", LoraRank, None),
    ("lora_targets", LoraTargets, None),
    ("target", Target, None),
    ("quantize_base", QuantizeBase, None),
    ("double_quant", DoubleQuant, False),
    ("no_cache", NoCache, False),
)
#: the same for the training-step options.
STEP_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("batch_size", BatchSize, None),
    ("input_size", InputSize, None),
    ("seq_len", SeqLen, None),
    ("amp", Amp, None),
    ("grad_checkpointing", GradCheckpointing, False),
    ("grad_accum", GradAccum, None),
    ("offload", Offload, None),
    ("host_memory", HostMemory, None),
    ("runtime", Runtime, None),
    ("allocator", Allocator, None),
)


def model_options(model: str, optimizer: str | None = None, dtype: str | None = None,
                  num_classes: int | None = None, task: str | None = None,
                  trainable: list[str] | None = None, freeze: list[str] | None = None,
                  lora_rank: int | None = None, lora_targets: str | None = None,
                  target: list[str] | None = None,
                  quantize_base: str | None = None, double_quant: bool = False,
                  no_cache: bool = False) -> ModelOptions:
    """The model options as given on the command line, validated."""
    targets = split_csv(lora_targets)
    if lora_rank is None and targets:
        raise PlanError("--lora-targets needs --lora-rank: add e.g. --lora-rank 8")
    if lora_rank is not None and not targets:
        raise PlanError("--lora-rank needs --lora-targets: add e.g. --lora-targets q_proj,v_proj")
    dt = None
    if dtype is not None:
        try:
            dt = dtypes.canonical(dtype)
        except ValueError as e:
            raise PlanError(f"--dtype: {e}") from None
        if dt not in dtypes.FLOATING:
            raise PlanError(f"--dtype {dtype!r} is not a floating-point dtype: use fp32, bf16, fp16 "
                            "or fp64")
    m = ModelOptions(model=model, optimizers=optimizer, dtype=dt, num_classes=num_classes,
                     task=check_task(task), trainable=tuple(trainable or ()),
                     freeze=tuple(freeze or ()), lora_rank=lora_rank, lora_targets=tuple(targets),
                     targets=tuple(target or ()), quantize_base=quantize_base,
                     double_quant=double_quant, use_cache=not no_cache)
    m.recipe()  # the precision options, validated (a PlanError names the fix)
    return m


def step_options(batch_size: int | None = None, input_size: str | None = None,
                 seq_len: int | None = None, amp: str | None = None,
                 grad_checkpointing: bool = False, grad_accum: int | None = None,
                 offload: str | None = None, host_memory: str | None = None,
                 runtime: str | None = None, allocator: str | None = None) -> StepOptions:
    """The training-step options as given on the command line, validated."""
    if batch_size is not None:
        check_batch_size(batch_size)
    if seq_len is not None and seq_len < 1:
        raise PlanError(f"--seq-len {seq_len} is not a sequence length: give a whole number >= 1")
    if allocator is not None:
        allocator = get_model(allocator).id
    host = None
    if host_memory is not None:
        host = parse_size(host_memory, "--host-memory")
        if host <= 0:
            raise PlanError(f"--host-memory {host_memory!r}: give a positive size such as 64GiB")
    step = StepOptions(batch_size=batch_size, input_size=input_size, seq_len=seq_len, amp=amp,
                       grad_checkpointing=grad_checkpointing, grad_accum=grad_accum,
                       offload=offload, host_memory_bytes=host,
                       runtime_bytes=None if runtime is None else parse_size(runtime, "--runtime"),
                       allocator=allocator)
    Recipe(amp=amp, grad_checkpointing=grad_checkpointing, grad_accum=1 if grad_accum is None else grad_accum,
           offload=offload)  # validated here, before any model is read
    return step


# distributed training (smmf_plan.dist)
Dist = Annotated[Optional[str], typer.Option(
    "--dist", help="Plan per rank for distributed training: ddp, zero1, zero2, zero3 (DeepSpeed "
                   "ZeRO) or fsdp2 (torch fully_shard). Needs --world (size: without it, finds the "
                   "smallest number of each device that fits).", show_default=False)]
World = Annotated[Optional[int], typer.Option(
    "--world", help="Number of ranks (processes, one per GPU or CPU host) with --dist.",
    show_default=False)]
Nodes = Annotated[Optional[int], typer.Option(
    "--nodes", help="Hosts the ranks run on (must divide --world; default 1).", show_default=False)]
ShardGroup = Annotated[Optional[str], typer.Option(
    "--shard-group", help="fsdp2 only, HSDP: ranks each parameter is sharded across (must divide "
                          "--world; the rest replicate), or 'node' for the ranks of one node. "
                          "Default: the whole world.", show_default=False)]
BucketCapMb = Annotated[Optional[float], typer.Option(
    "--bucket-cap-mb", help="ddp only: DistributedDataParallel's bucket_cap_mb, the size of its "
                            "gradient buckets in MiB (default 25, the first bucket 1 MiB).",
    show_default=False)]
ReshardAfterForward = Annotated[Optional[bool], typer.Option(
    "--reshard-after-forward/--no-reshard-after-forward",
    help="fsdp2 only: fully_shard's reshard_after_forward (default: on, each unit's gathered "
         "parameters freed after its forward; off keeps every unit gathered until its backward).",
    show_default=False)]

DIST_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("dist", Dist, None),
    ("world", World, None),
    ("nodes", Nodes, None),
    ("shard_group", ShardGroup, None),
    ("bucket_cap_mb", BucketCapMb, None),
    ("reshard_after_forward", ReshardAfterForward, None),
)


def dist_options(dist: str | None = None, world: int | None = None, nodes: int | None = None,
                 shard_group: str | None = None, bucket_cap_mb: float | None = None,
                 reshard_after_forward: bool | None = None) -> DistOptions:
    """The distributed-training options as given on the command line, validated."""
    group: int | str | None = shard_group
    if isinstance(shard_group, str) and shard_group.strip().isdigit():
        group = int(shard_group.strip())
    return DistOptions(scheme=dist, world=world, nodes=nodes, shard_group=group,
                       bucket_cap_mb=bucket_cap_mb, reshard_after_forward=reshard_after_forward)


_GROUPS: dict[type, tuple[tuple[tuple[str, Any, Any], ...], Callable[..., Any]]] = {
    ModelOptions: (MODEL_OPTIONS, model_options),
    StepOptions: (STEP_OPTIONS, step_options),
    DistOptions: (DIST_OPTIONS, dist_options),
}


def _resolve(annotation: Any, command: Callable) -> Any:
    """An annotation as Typer would read it; the records are recognised by name too, so a
    command may import them anywhere (postponed annotations are strings)."""
    if not isinstance(annotation, str):
        return annotation
    by_name = {cls.__name__: cls for cls in _GROUPS}
    if annotation in by_name:
        return by_name[annotation]
    return eval(annotation, command.__globals__)  # noqa: S307 - our own source, as Typer does


def shared_options(*, omit: Iterable[str] = ()) -> Callable[[Callable], Callable]:
    """Splice the shared options into a command: each parameter annotated ``ModelOptions``,
    ``StepOptions`` or ``DistOptions`` becomes the individual options of :data:`MODEL_OPTIONS` /
    :data:`STEP_OPTIONS` / :data:`DIST_OPTIONS` in the signature Typer reads (leaving out those named in ``omit``, for a command that cannot
    honour them), and the command receives the validated record in that parameter."""
    omit = frozenset(omit)

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)
        params: list[inspect.Parameter] = []
        spliced: dict[str, tuple[Callable[..., Any], list[str]]] = {}
        for p in signature.parameters.values():
            annotation = _resolve(p.annotation, command)
            group = _GROUPS.get(annotation)
            if group is None:
                params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=annotation))
                continue
            options, build = group
            names = [name for name, _, _ in options if name not in omit]
            spliced[p.name] = (build, names)
            params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                         annotation=option)
                       for name, option, default in options if name not in omit]
        if not spliced:
            raise TypeError(f"{command.__name__} has no ModelOptions/StepOptions/DistOptions parameter")

        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            for target, (build, names) in spliced.items():
                kwargs[target] = build(**{name: kwargs.pop(name) for name in names})
            return command(**kwargs)

        run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return decorate
