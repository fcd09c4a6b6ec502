"""DeepSpeed ZeRO stages 1-3, per rank (torch-free).

Read from DeepSpeed 0.19's ``runtime/zero/stage_1_and_2.py`` and ``stage3.py`` and checked in tests
against real ZeRO engines on CPU (gloo) at world 2. ``b`` is the model's dtype (the AMP dtype: with
``--amp`` DeepSpeed's bf16/fp16 mode keeps the model in it; otherwise the parameters' own), ``N``
the world.

**Stages 1 and 2.** Each optimizer parameter group's trainable parameters are flattened into one
bit16 buffer padded to a multiple of ``2·N`` elements (``nccl_start_alignment_factor = 2`` times
the world) and split into ``N`` equal partitions of ``P`` elements; the model's parameters become
views of that buffer (**weights**: the whole buffer on every rank; frozen parameters stay as they
are). Each rank keeps an fp32 **master** copy of its partition
(``single_partition_of_fp32_groups``), and the client optimizer is handed that **one flat 1-D
fp32 tensor per group**: its **state** is the registry's layout of a ``(P,)`` fp32 parameter (Adam:
two ``P``-element moments + ``step``; SMMF would square-matricize a block that crosses parameter
boundaries). **Gradients**: the reduced gradient of the rank's partition, ``P`` elements of b
(``averaged_gradients``); stage 1 also has every parameter's full gradient at the end of backward
(it reduces only then). The step builds an fp32 gradient of the partition (a step buffer). **comm**: the contiguous gradient bucket
allocated for backward, ``reduce_bucket_size`` elements of b (two with ``overlap_comm``), whatever
the model's size.

**Stage 3.** Every parameter is partitioned on its own: ``⌈numel/N⌉`` elements per rank (the last
ranks padded), kept flat per sub-group of at most ``sub_group_size`` elements (**weights**); a
parameter under ``stage3_param_persistence_threshold`` elements also stays whole on every rank. The
fp32 master and the optimizer state are per sub-group flat tensors of the same size; gradients one
flat partitioned buffer (``grad_partitions_flat_buffer``). **comm**: the reduce bucket
(``reduce_bucket_size`` elements, one, allocated at initialisation), the
prefetch bucket (``stage3_prefetch_bucket_size`` elements) and the largest module's gathered
parameters and gradients (DeepSpeed's own estimate counts ``4 × largest layer`` bytes for these).

**Gradient accumulation** (``gradient_accumulation_steps``): gradients accumulate in the buffers
above (stage 1: every parameter's full gradient, reduced at the boundary; stages 2/3: the reduced
partition), so no buffer is added — except under ZeRO-Offload at stage 2, where each micro-step
stages a pinned bit16 copy of every parameter the rank's partition touches
(``accumulated_grads_in_cpu``; stage 1 accumulates the full gradients as without offload): ranks
then differ. **Offload**: :mod:`.offload`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .. import dtypes
from ..optimizers import OptimizerVariant, Unsupported
from ..shapes import ParamSpec
from .context import Context, nbytes
from .offload import host_parts, pinned
from .ranks import RankBlocks, RankClass, RankFigures, group, state_sum
from .sharding import Sharding

#: ``nccl_start_alignment_factor`` in ``stage_1_and_2.py``: 4-byte alignment / sizeof(fp16).
ALIGNMENT_FACTOR = 2


def model_dtype(ctx: Context, spec: ParamSpec) -> str:
    """The dtype DeepSpeed keeps the model in: the AMP dtype, else the parameter's."""
    return ctx.compute_dtype(spec)


@dataclass(frozen=True)
class FlatGroup:
    """One optimizer parameter group flattened as stages 1 and 2 do."""

    name: str
    #: elements of each trainable parameter, in flat order.
    numels: tuple[int, ...]
    #: the padded flat buffer's elements (a multiple of 2·N).
    aligned: int
    #: elements of each rank's partition.
    partition: int
    dtype: str


def flat_groups(ctx: Context, optimizer: OptimizerVariant, world: int) -> list[FlatGroup]:
    trainable = ctx.trainable
    out = []
    for g in optimizer.param_groups(trainable):
        specs = [trainable[i] for i in g.indices]
        if not specs:
            continue
        numel = sum(s.numel for s in specs)
        align = ALIGNMENT_FACTOR * world
        aligned = -(-numel // align) * align
        out.append(FlatGroup(g.name, tuple(s.numel for s in specs), aligned, aligned // world,
                             model_dtype(ctx, specs[0])))
    return out


def _where(ctx: Context) -> str:
    """The allocator the client optimizer's state and step live in: the host's under offload."""
    return "cpu" if ctx.recipe.offload is not None else ctx.allocator


def flat_specs(flats: Sequence[tuple[str, int]]) -> tuple[ParamSpec, ...]:
    """The flat fp32 tensors the client optimizer steps, one per (group name, elements)."""
    return tuple(ParamSpec(f"{name}.flat", (n,), "float32") for name, n in flats)


def _flat_state(ctx: Context, optimizer: OptimizerVariant, flats: Sequence[tuple[str, int]]):
    """State, its tensor count and the step temporaries of the client optimizer over one flat fp32
    tensor per (group name, elements)."""
    per = [optimizer.state(spec, name) for spec, (name, _) in zip(flat_specs(flats), flats)]
    logical, allocated, count = state_sum(per, _where(ctx))
    return logical, allocated, count


def _flat_blocks(optimizer: OptimizerVariant, flats: Sequence[tuple[str, int]]) -> dict:
    specs = flat_specs(flats)
    return {"flats": specs,
            "flat_states": tuple(optimizer.state(s, name) for s, (name, _) in zip(specs, flats))}


def _temp(ctx: Context, optimizer: OptimizerVariant, flats: Sequence[tuple[str, int]],
          one_at_a_time: bool) -> int:
    specs = [ParamSpec(f"{name}.flat", (n,), "float32") for name, n in flats if n]
    if not specs:
        return 0
    if one_at_a_time:
        return max(optimizer.step_temp_bytes([s], _where(ctx)) for s in specs)
    return optimizer.step_temp_bytes(specs, _where(ctx))


@dataclass(frozen=True)
class Components:
    """One ZeRO rank's bytes, named as DeepSpeed allocates them (each as the allocator rounds)."""

    #: the bit16 model: stages 1/2 the aligned flat buffer, stage 3 this rank's partitions.
    params: int
    #: stage 3: parameters under the persistence threshold, whole on every rank.
    persistent: int
    #: frozen parameters (not flattened; stage 3 partitions them too).
    frozen: int
    #: the fp32 master partition.
    master: int
    #: the reduced bit16 gradient partition.
    grad_partition: int
    #: stage 1: every parameter's full bit16 gradient at the end of backward.
    full_grads: int
    #: the client optimizer's state over the flat fp32 tensors (logical, allocated, tensors).
    state_bytes: int
    state_allocated: int
    state_tensors: int
    #: the fp32 gradient of the partition the step builds.
    fp32_grad: int
    #: the client optimizer's own step temporaries on the flat tensors.
    optimizer_temp: int
    #: the contiguous reduce bucket(s).
    reduce_bucket: int
    #: stage 3: the prefetch bucket, and the largest module's gathered parameters and gradients.
    prefetch: int = 0
    gathered: int = 0
    #: ZeRO-Offload (:mod:`.offload`): the device's staging buffer of the largest parameter, the
    #: pinned host blocks (master, gradients, bit16 copies, staging), and whether the state and
    #: the step (``state_*``, ``optimizer_temp``) are the host's.
    staging: int = 0
    host_copies: int = 0
    offloaded: bool = False
    #: the flat tensors the client optimizer steps and their state (the allocator's replay).
    flats: tuple[ParamSpec, ...] = ()
    flat_states: tuple = ()

    def figures(self, ctx: Context, host_extra: int = 0) -> RankFigures:
        """This rank's figures; ``host_extra``: pinned bytes of this rank only (accumulation)."""
        comm = self.reduce_bucket + self.prefetch + self.gathered + self.staging
        grads = self.grad_partition + self.full_grads
        weights = self.params + self.persistent + self.frozen + ctx.buffer_bytes
        if self.offloaded:  # no allocator replay: the state and the step are the host's
            return RankFigures(
                weights=weights, master=0, grads=grads, state_allocated=0,
                state_bytes=self.state_bytes, comm=comm, step_temp=0,
                state_tensors=self.state_tensors,
                host=host_parts(ctx, self.host_copies + host_extra, self.state_allocated,
                                self.optimizer_temp))
        blocks = RankBlocks(
            kept=tuple(n for n in (self.params, self.persistent, self.frozen, ctx.buffer_bytes,
                                   self.master, self.reduce_bucket) if n),
            grads=tuple(n for n in (self.grad_partition, self.full_grads) if n),
            transient=(self.prefetch + self.gathered,) if self.prefetch + self.gathered else (),
            specs=self.flats, states=self.flat_states)
        return RankFigures(
            weights=weights, master=self.master, grads=grads,
            state_allocated=self.state_allocated, state_bytes=self.state_bytes, comm=comm,
            step_temp=self.fp32_grad + self.optimizer_temp, state_tensors=self.state_tensors,
            blocks=blocks)


def plan(ctx: Context, sharding: Sharding, optimizer: OptimizerVariant) -> list[RankClass]:
    """ZeRO's ranks hold the same bytes (partitions are equal; the padding is the last ranks'),
    except under ZeRO-Offload with accumulation at stage 2, where each rank stages the
    parameters its partition touches."""
    c = components(ctx, sharding, optimizer)
    N = sharding.world
    if not (c.offloaded and ctx.recipe.grad_accum > 1 and sharding.zero_stage == 2):
        return [RankClass(((0, N - 1),), c.figures(ctx))]
    per_rank = touched_bytes(ctx, flat_groups(ctx, optimizer, N), N)
    return group(RankClass(((r, r),), c.figures(ctx, extra)) for r, extra in enumerate(per_rank))


def touched_bytes(ctx: Context, groups: Sequence[FlatGroup], world: int) -> list[int]:
    """Per rank: the pinned bit16 copies ZeRO-Offload keeps for accumulation, one per parameter
    whose flat range overlaps the rank's partition, of the whole parameter
    (``accumulated_grads_in_cpu``: ``torch.zeros(param.numel())``)."""
    out = [0] * world
    for g in groups:
        start = 0
        for n in g.numels:
            end = start + n
            if n:
                block = pinned(ctx, nbytes(n, g.dtype))
                for r in range(start // g.partition, min(world, -(-end // g.partition))):
                    out[r] += block
            start = end
    return out


def components(ctx: Context, sharding: Sharding, optimizer: OptimizerVariant) -> Components:
    if optimizer.info.target_rule or optimizer.info.named_params:
        # GaLore, APOLLO, COAP, Muon treat each 2-D weight by its shape, Adam-mini and Adalayer by
        # its name: neither survives DeepSpeed's flattening, and no measured layout exists there
        raise Unsupported(f"{optimizer.id} is not planned under ZeRO: it treats each weight by its "
                          "shape or name, which DeepSpeed's flat 1-D partitions do not keep; "
                          "plan it with --dist ddp or fsdp2")
    if sharding.zero_stage == 3:
        return _stage3(ctx, sharding, optimizer)
    return _stage12(ctx, sharding, optimizer)


def _stage12(ctx: Context, sharding: Sharding, optimizer: OptimizerVariant) -> Components:
    N, stage = sharding.world, sharding.zero_stage
    groups = flat_groups(ctx, optimizer, N)
    frozen = [s for s in ctx.specs if not s.trainable]
    flats = [(g.name, g.partition) for g in groups]
    logical, allocated, count = _flat_state(ctx, optimizer, flats)
    bucket_dtype = groups[0].dtype if groups else "float32"
    offloaded = ctx.recipe.offload is not None
    largest = max((n for g in groups for n in g.numels), default=0)
    return Components(
        params=sum(ctx.round(nbytes(g.aligned, g.dtype)) for g in groups),
        persistent=0,
        frozen=sum(ctx.round(nbytes(s.numel, model_dtype(ctx, s))) for s in frozen),
        master=sum(ctx.round(nbytes(g.partition, "float32")) for g in groups),
        # ZeRO-Offload copies each reduced gradient into the host's fp32 partition
        grad_partition=0 if offloaded else sum(ctx.round(nbytes(g.partition, g.dtype)) for g in groups),
        full_grads=(sum(ctx.round(nbytes(s.numel, model_dtype(ctx, s))) for s in ctx.trainable)
                    if stage == 1 else 0),
        state_bytes=logical, state_allocated=allocated, state_tensors=count,
        fp32_grad=sum(ctx.round(nbytes(g.partition, "float32")) for g in groups),
        optimizer_temp=_temp(ctx, optimizer, flats, one_at_a_time=False),
        reduce_bucket=ctx.round(nbytes(sharding.reduce_bucket_size, bucket_dtype))
        * (2 if sharding.overlap else 1),
        # temp_grad_buffer_for_gpu_offload / _for_cpu_offload; the fp32 master and its gradient,
        # and the bit16 partition the step writes back through
        staging=ctx.round(nbytes(largest, bucket_dtype)) if offloaded else 0,
        host_copies=(pinned(ctx, nbytes(largest, bucket_dtype))
                     + sum(pinned(ctx, nbytes(g.partition, "float32"), nbytes(g.partition, "float32"),
                                  nbytes(g.partition, g.dtype)) for g in groups)
                     if offloaded else 0),
        offloaded=offloaded,
        **_flat_blocks(optimizer, flats),
    )


def partition_numel(numel: int, world: int) -> int:
    """ZeRO-3's elements per rank of one parameter (``ds_tensor``): ``⌈numel / N⌉``."""
    return -(-numel // world)


def sub_groups(numels: Sequence[int], sub_group_size: int) -> list[int]:
    """Elements of each sub-group (``_create_fp16_sub_groups``): parameters are added until a
    sub-group reaches ``sub_group_size``."""
    total = sum(numels)
    if sub_group_size >= total:
        return [total] if numels else []
    out, current = [], 0
    for i, n in enumerate(numels):
        current += n
        if current >= sub_group_size or i == len(numels) - 1:
            out.append(current)
            current = 0
    return out


def largest_module(specs: Sequence[ParamSpec]) -> list[ParamSpec]:
    """The parameters of the module with the most parameter elements of its own (a name's prefix
    before its last dot), as DeepSpeed's ``model_to_params`` finds the largest layer."""
    modules: dict[str, list[ParamSpec]] = {}
    for s in specs:
        modules.setdefault(s.name.rpartition(".")[0], []).append(s)
    return max(modules.values(), key=lambda ps: sum(p.numel for p in ps), default=[])


def _stage3(ctx: Context, sharding: Sharding, optimizer: OptimizerVariant) -> Components:
    N = sharding.world
    trainable = ctx.trainable
    frozen = [s for s in ctx.specs if not s.trainable]
    b = model_dtype(ctx, trainable[0]) if trainable else "float32"
    subs: list[tuple[str, int]] = []
    for g in optimizer.param_groups(trainable):
        parts = [partition_numel(trainable[i].numel, N) for i in g.indices]
        subs += [(g.name, n) for n in sub_groups(parts, sharding.sub_group_size)]
    persistent = [s for s in ctx.specs if s.numel < sharding.param_persistence_threshold]
    logical, allocated, count = _flat_state(ctx, optimizer, subs)
    module = largest_module(ctx.specs)
    total = sum(s.numel for s in ctx.specs)
    offloaded = ctx.recipe.offload is not None
    return Components(
        params=sum(ctx.round(nbytes(n, b)) for _, n in subs),
        persistent=sum(ctx.round(nbytes(s.numel, model_dtype(ctx, s))) for s in persistent),
        frozen=sum(ctx.round(nbytes(partition_numel(s.numel, N), model_dtype(ctx, s)))
                   for s in frozen),
        master=sum(ctx.round(nbytes(n, "float32")) for _, n in subs),
        # offload: grad_partitions_flat_buffer lives on the host
        grad_partition=0 if offloaded else ctx.round(nbytes(sum(n for _, n in subs), b)),
        full_grads=0,
        state_bytes=logical, state_allocated=allocated, state_tensors=count,
        # the sub-groups are stepped one at a time
        fp32_grad=max((ctx.round(nbytes(n, "float32")) for _, n in subs), default=0),
        optimizer_temp=_temp(ctx, optimizer, subs, one_at_a_time=True),
        reduce_bucket=ctx.round(nbytes(sharding.reduce_bucket_size, b)),  # one, at init
        prefetch=ctx.round(nbytes(min(sharding.prefetch_bucket_size, total), b)),
        gathered=sum(ctx.round(nbytes(s.numel, model_dtype(ctx, s))) for s in module)
        + sum(ctx.round(nbytes(s.numel, model_dtype(ctx, s))) for s in module if s.trainable),
        # offload: the fp32 master and gradient of each sub-group and the flat gradient buffer
        host_copies=(pinned(ctx, nbytes(sum(n for _, n in subs), b))
                     + sum(pinned(ctx, nbytes(n, "float32"), nbytes(n, "float32")) for _, n in subs)
                     if offloaded else 0),
        offloaded=offloaded,
        **_flat_blocks(optimizer, subs),
    )


def deepspeed_dtype_note(ctx: Context) -> str:
    """How the plan maps the precision onto DeepSpeed's configuration."""
    if ctx.amp:
        return (f"DeepSpeed {'bf16' if ctx.amp == 'bfloat16' else 'fp16'} mode: the model in "
                f"{ctx.amp}, an fp32 master partition per rank")
    dt = dtypes.canonical(ctx.specs[0].dtype) if ctx.specs else "float32"
    return f"the model in {dt} (no bf16/fp16 mode), an fp32 master partition per rank"
