"""What a user asks to plan, as two records every entry point shares: :class:`ModelOptions` (the
model, how its parameters are loaded and trained, the optimizers to compare) and
:class:`StepOptions` (the training step to estimate).

``plan``, ``shapes``, ``size`` and ``probe`` build them from their command-line options
(:mod:`smmf_plan.cli.options`), ``check`` from each ``[[tool.smmf-plan.checks]]`` table
(:mod:`smmf_plan.check.config`); each front-end validates its own syntax and names its own keys in
errors, and everything after that goes through these records. Torch-free. Every CLI command
imports this module at start-up, so the subsystems its methods use are imported in them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .allocators import models as allocator_models
from .dist import Sharding, parse_scheme
from .errors import PlanError
from .optimizers import UnknownOptimizer, parse, parse_many
from .recipe import Recipe
from .sources import load_model


@dataclass(frozen=True)
class ModelOptions:
    """The model and how it is trained, independent of the step's shape."""

    #: anything a source resolves: a timm or bundled name, a config.json, a model directory,
    #: a weights file or a hub id.
    model: str
    #: comma-separated optimizer ids with optional variants, or "all" (as typed on the command
    #: line), or the ids one by one (as a check configuration lists them); None: the default set.
    optimizers: str | tuple[str, ...] | None = None
    #: plan parameters in this (canonical, floating) dtype; None: as the source has them.
    dtype: str | None = None
    #: classifier size for timm models; None: the architecture's.
    num_classes: int | None = None
    #: the head to build from a transformers config (:data:`smmf_plan.tasks.TASKS`);
    #: None: the config's ``architectures``, else the head its model_type is trained with.
    task: str | None = None
    #: globs of the parameters trained (the rest frozen) / frozen.
    trainable: tuple[str, ...] = ()
    freeze: tuple[str, ...] = ()
    #: LoRA adapters of this rank on these modules (both or neither); base weights frozen.
    lora_rank: int | None = None
    lora_targets: tuple[str, ...] = ()
    #: globs of the 2-D weights low-rank and orthogonalizing optimizers treat (GaLore, APOLLO,
    #: COAP, Muon), replacing :data:`smmf_plan.targets.TARGET_RULE`.
    targets: tuple[str, ...] = ()
    #: store the frozen base's Linear weights as bitsandbytes does: "nf4", "fp4" or "int8".
    quantize_base: str | None = None
    #: 4-bit absmax quantized again (bitsandbytes' double quantization).
    double_quant: bool = False
    #: read and write the shape cache.
    use_cache: bool = True

    def layouts(self, model=None) -> list:
        """The optimizer layouts to plan; an unknown id is a :class:`PlanError` with suggestions.
        Given the loaded ``model``, options that default to its facts (Adam-mini's hidden size and
        heads) are bound to them."""
        try:
            if isinstance(self.optimizers, tuple):
                out = [parse(i) for i in self.optimizers]
            else:
                out = parse_many(self.optimizers)
        except UnknownOptimizer as e:
            raise PlanError(str(e)) from None
        return out if model is None else [o.bind(model.facts) for o in out]

    def recipe(self, step: "StepOptions | None" = None):
        """The :class:`~smmf_plan.recipe.Recipe` these options (and ``step``'s) ask for."""
        return Recipe.from_options(self, step)

    def load(self, recipe=None):
        """The :class:`~smmf_plan.model.ModelSpec` (no weights allocated), every parameter in the
        dtype ``recipe`` (default: :meth:`recipe` of these options alone) stores it in."""
        spec = load_model(self.model, num_classes=self.num_classes, trainable=self.trainable,
                          freeze=self.freeze, lora_rank=self.lora_rank,
                          lora_targets=self.lora_targets, targets=self.targets,
                          use_cache=self.use_cache, task=self.task)
        recipe = recipe or self.recipe()
        recipe.check(spec)
        return recipe.apply(spec)


@dataclass(frozen=True)
class StepOptions:
    """The training step to estimate end to end (:func:`smmf_plan.memory.estimate`)."""

    #: samples per step; None: 1 (and, for ``plan``, not asked for).
    batch_size: int | None = None
    #: image input C,H,W ("3,224,224" or a tuple); None: the model's.
    input_size: str | Sequence[int] | None = None
    #: tokens per sample for text models; None: 128 or the model's maximum positions.
    seq_len: int | None = None
    #: mixed-precision compute dtype ("bf16"/"fp16") with fp32 master weights.
    amp: str | None = None
    grad_checkpointing: bool = False
    #: a runtime baseline measured on the device, instead of the stated one.
    runtime_bytes: int | None = None
    #: the allocator model (:data:`smmf_plan.allocators.models.IDS`); None: the device's default.
    allocator: str | None = None
    #: micro-steps per optimizer step (gradient accumulation); None: 1.
    grad_accum: int | None = None
    #: "optimizer" or "optimizer+grads": kept on the host (GPU devices only).
    offload: str | None = None
    #: the host memory of a GPU device, instead of the catalog's.
    host_memory_bytes: int | None = None

    @property
    def given(self) -> bool:
        """Whether any step option was set (``plan`` then estimates the whole step)."""
        return self.grad_checkpointing or any(
            v is not None for v in (self.batch_size, self.input_size, self.seq_len, self.amp,
                                    self.runtime_bytes, self.allocator, self.grad_accum,
                                    self.offload, self.host_memory_bytes))

    def allocator_for(self, device=None) -> str:
        """The allocator model id to estimate with on ``device``: :attr:`allocator` checked
        against it, else the device's default (``glibc`` without a device); a model that cannot
        describe the device is a :class:`~smmf_plan.errors.PlanError`."""
        if device is None:
            return allocator_models.get_model(self.allocator or allocator_models.GLIBC.id).id
        return allocator_models.for_device(device, self.allocator).id

    @property
    def batch(self) -> int:
        return 1 if self.batch_size is None else self.batch_size

    def estimate_kwargs(self, model: ModelOptions) -> dict[str, Any]:
        """Keyword arguments of :func:`smmf_plan.memory.estimate` (the recipe from ``model``'s
        options and these) but the batch size and the allocator, which callers vary."""
        return {"input_size": self.input_size, "seq_len": self.seq_len,
                "recipe": model.recipe(self), "runtime_bytes": self.runtime_bytes}

    def device(self, device):
        """``device`` as this step sees it: its host memory replaced by ``--host-memory``, and
        checked for ``--offload`` (a PlanError where the device has no host of its own)."""
        if device is None:
            return None
        device = device.with_host_memory(self.host_memory_bytes)
        device.check_offload(self.offload)
        return device


@dataclass(frozen=True)
class DistOptions:
    """How training is spread over ranks, as asked (``--dist --world --nodes --shard-group``):
    :meth:`sharding` turns it into a :class:`smmf_plan.dist.Sharding`. Without ``scheme`` the
    plan is for one process."""

    #: ``ddp``, ``zero1``, ``zero2``, ``zero3`` or ``fsdp2`` (as typed); None: one process.
    scheme: str | None = None
    #: number of ranks; None: not given (``size`` then searches the smallest that fits).
    world: int | None = None
    #: number of hosts the world runs on; None: 1.
    nodes: int | None = None
    #: FSDP2's shard group (HSDP): ranks per shard group, or ``"node"`` for the ranks of one node.
    shard_group: int | str | None = None
    #: DDP's ``bucket_cap_mb``; None: torch's default (25).
    bucket_cap_mb: float | None = None
    #: FSDP2's ``reshard_after_forward``; None: torch's default (True).
    reshard_after_forward: bool | None = None

    def __post_init__(self) -> None:
        if self.scheme is None:
            given = [(f, example) for f, v, example in (
                ("--world", self.world, "fsdp2"), ("--nodes", self.nodes, "fsdp2"),
                ("--shard-group", self.shard_group, "fsdp2"),
                ("--bucket-cap-mb", self.bucket_cap_mb, "ddp"),
                (_RESHARD_FLAG.get(self.reshard_after_forward), self.reshard_after_forward, "fsdp2"),
            ) if v is not None]
            if given:
                flag, example = given[0]
                raise PlanError(f"{flag} needs --dist: add e.g. --dist {example} (one of ddp, "
                                "zero1, zero2, zero3, fsdp2)")
            return
        object.__setattr__(self, "scheme", parse_scheme(self.scheme))
        if self.bucket_cap_mb is not None:
            if self.scheme != "ddp":
                raise PlanError(f"--bucket-cap-mb sets DDP's gradient buckets, not {self.scheme}'s: "
                                "drop it, or use --dist ddp")
            if not 0 < self.bucket_cap_mb < float("inf"):
                raise PlanError(f"--bucket-cap-mb {self.bucket_cap_mb:g} is not a bucket size: give "
                                "a number of MiB > 0, e.g. 25")
        if self.reshard_after_forward is not None and self.scheme != "fsdp2":
            raise PlanError(f"{_RESHARD_FLAG[self.reshard_after_forward]} is an fsdp2 setting, not "
                            f"{self.scheme}'s: drop it, or use --dist fsdp2")
        if self.world is not None:
            self.sharding()  # validates world, nodes and shard group now, before any model loads
        elif self.nodes is not None:
            raise PlanError("--nodes needs --world: give the number of ranks too")
        elif self.shard_group is not None:
            if self.shard_group_size is None:
                raise PlanError("--shard-group node needs --world and --nodes: give a number "
                                "of ranks instead, e.g. --shard-group 8")
            Sharding(self.scheme, self.shard_group, shard_group=self.shard_group)

    @property
    def given(self) -> bool:
        return self.scheme is not None

    def sharding(self, world: int | None = None):
        """The :class:`~smmf_plan.dist.Sharding` at ``world`` (default: the given one)."""
        world = self.world if world is None else world
        if world is None:
            raise PlanError(f"--dist {self.scheme} needs --world N: the number of ranks")
        nodes = 1 if self.nodes is None else self.nodes
        group = None
        if self.shard_group is not None:
            group = _group_size(self.shard_group, world, nodes)
        settings: dict = {}
        if self.bucket_cap_mb is not None:
            settings["bucket_cap_mb"] = float(self.bucket_cap_mb)
        if self.reshard_after_forward is not None:
            settings["reshard_after_forward"] = self.reshard_after_forward
        return Sharding(self.scheme, world, nodes, group, **settings)

    @property
    def shard_group_size(self) -> int | None:
        """The shard group as a number when it was given as one (``size``'s search steps by it)."""
        return self.shard_group if isinstance(self.shard_group, int) else None


#: the flag that sets each value of ``reshard_after_forward``, for messages.
_RESHARD_FLAG = {True: "--reshard-after-forward", False: "--no-reshard-after-forward"}


def _group_size(value: int | str, world: int, nodes: int) -> int:
    """``--shard-group`` → ranks: a whole number, or ``node`` (the ranks of one node)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "node":
            return world // nodes
        try:
            return int(text)
        except ValueError:
            raise PlanError(f"--shard-group {value!r} is not a number of ranks: give e.g. 8, or "
                            "'node' for the ranks of one node") from None
    return value
