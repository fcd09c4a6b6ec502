"""Per-rank training-step estimates: the single-process estimate's basis (activations, runtime,
buffers) and each scheme's per-rank figures, put together.

:func:`plan_ranks` is the pure arithmetic (no trace, no torch): a scheme's rank classes for one
optimizer. :func:`estimate` adds the traced activations at the per-rank micro-batch and returns a
:class:`DistEstimate`, which the fit layer and every renderer read like a single-process
:class:`~smmf_plan.memory.MemoryEstimate`: per optimizer the **largest rank's** breakdown (the
rank that decides whether the job fits), and beside it every group of ranks with identical figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

from .. import dtypes
from ..allocators import models as allocator_models
from ..breakdown import Breakdown, StepMemory
from ..memory import TEMPORARIES_ASSUMPTION, MemoryEstimate, StepBasis, act_temp, step_basis
from ..memory import _offload_assumption as offload_assumption  # the one-process offload's words
from ..memory import estimate as single
from ..model import ModelSpec
from ..optimizers import OptimizerVariant, Unsupported
from . import allocation, ddp, fsdp2, offload, quantized, zero
from .context import Context
from .ranks import RankClass, RankFigures, RankRanges, group
from .sharding import Sharding

PLANNERS: dict[str, Callable[[Context, Sharding, OptimizerVariant], list[RankClass]]] = {
    "ddp": ddp.plan, "zero1": zero.plan, "zero2": zero.plan, "zero3": zero.plan,
    "fsdp2": fsdp2.plan,
}


def plan_ranks(ctx: Context, sharding: Sharding, optimizer: OptimizerVariant) -> list[RankClass]:
    """The ranks of ``sharding`` grouped by identical figures, for ``optimizer``."""
    return group(PLANNERS[sharding.scheme](ctx, sharding, optimizer))


def breakdown_of(f: RankFigures, activations: int | None, temporaries: int, runtime: int,
                 allocator: int = 0) -> Breakdown:
    """One rank's parts; ``activations`` None: not known (the sums are lower bounds)."""
    return Breakdown(weights=f.weights, master=f.master, grads=f.grads,
                     state_allocated=f.state_allocated, activations=activations or 0,
                     temporaries=temporaries, comm=f.comm, allocator=allocator, runtime=runtime,
                     unknown=("activations",) if activations is None else (), **dict(f.host))


def tensor_bytes(f: RankFigures, activations: int | None, temporaries: int) -> int:
    """The rank's tensors at the step's peak, as its breakdown counts them."""
    return (f.weights + f.master + f.grads + f.state_allocated + (activations or 0) + temporaries
            + f.comm)


def churn_bytes(f: RankFigures, activations: int | None, temporaries: int, persistent: bool) -> int:
    """The bytes the rank frees and allocates again every step: gradients, activations, the step's
    temporaries (not a scratch kept between steps) and the transients (not the buckets it keeps)."""
    transient = sum(f.blocks.transient) if f.blocks is not None else 0
    return f.grads + (activations or 0) + (0 if persistent else temporaries) + transient


@dataclass(frozen=True)
class RankStep(RankRanges):
    """One group of ranks with identical figures, at the planned batch."""

    ranges: tuple[tuple[int, int], ...]
    state_bytes: int
    breakdown: Breakdown

    @property
    def total_bytes(self) -> int:
        return self.breakdown.total_bytes

    def to_dict(self) -> dict:
        """``{"ranks": [[first, last], …], "count", "state_bytes", "breakdown", "total_bytes",
        "device_bytes", "host_bytes"}``."""
        return {"ranks": [list(r) for r in self.ranges], "count": self.count,
                "state_bytes": self.state_bytes, "breakdown": self.breakdown.to_dict(),
                "total_bytes": self.total_bytes, "device_bytes": self.breakdown.device_bytes,
                "host_bytes": self.breakdown.host_bytes}


def largest_of(steps: Sequence[RankStep]) -> RankStep:
    """The group whose rank needs the most device memory (then host memory; the lowest ranks on
    a tie)."""
    return max(steps, key=lambda s: (s.breakdown.device_bytes, s.breakdown.host_bytes, -s.first))


@dataclass
class DistEstimate(MemoryEstimate):
    """A :class:`MemoryEstimate` whose figures are per rank; ``breakdowns`` are the largest
    rank's."""

    sharding: Sharding | None = None
    #: per optimizer id: its rank classes.
    classes: dict[str, list[RankClass]] = field(default_factory=dict)
    #: per (optimizer id, rank class ranges): ``batch -> bytes`` of the rank's allocator part.
    _rank_slack: dict[tuple[str, tuple], Callable[[int], int]] = field(default_factory=dict,
                                                                        repr=False)

    def _parts(self, oid: str, c: RankClass, batch: int) -> tuple[int | None, int]:
        return act_temp(self.activation_model, batch, self.rounding, c.figures.step_temp,
                        self.persistent.get(oid, False))

    def _class_breakdown(self, oid: str, c: RankClass, batch: int) -> Breakdown:
        act, temp = self._parts(oid, c, batch)
        slack = self._rank_slack.get((oid, c.ranges))
        return breakdown_of(c.figures, act, temp, sum(self.runtime_parts.values()),
                            slack(batch) if slack else 0)

    def _add_allocator_parts(self, layouts: Sequence[OptimizerVariant], logs) -> None:
        """Each rank class's allocator part (:mod:`.allocation`) under the estimate's model
        (none without a traced step: weights without an architecture)."""
        if not logs:
            return
        model = allocator_models.resolve(self.allocator)
        workspaces = sum(allocator_models.workspace_blocks(model))
        recomputes = self.recipe is not None and self.recipe.grad_checkpointing
        for v in layouts:
            persistent = self.persistent.get(v.id, False)
            for c in self.classes[v.id]:
                if c.figures.blocks is None:
                    continue

                def tensors_at(b: int, c=c, oid=v.id) -> int:
                    return tensor_bytes(c.figures, *self._parts(oid, c, b)) + workspaces

                def churn_at(b: int, c=c, oid=v.id, persistent=persistent) -> int:
                    return churn_bytes(c.figures, *self._parts(oid, c, b), persistent)

                self._rank_slack[(v.id, c.ranges)] = allocation.allocator_part(
                    model, v, self.rounding, logs, c.figures.blocks, tensors_at, churn_at,
                    recomputes)

    def rank_steps(self, oid: str, batch: int | None = None) -> list[RankStep]:
        """Every group of ranks of ``oid`` at ``batch`` (default: the planned one)."""
        b = self.batch_size if batch is None else batch
        return [RankStep(c.ranges, c.figures.state_bytes, self._class_breakdown(oid, c, b))
                for c in self.classes[oid]]

    def largest(self, oid: str, batch: int | None = None) -> RankStep:
        """The group whose rank needs the most memory (the lowest ranks on a tie)."""
        return largest_of(self.rank_steps(oid, batch))

    def breakdown_at(self, optimizer: str, batch: int) -> Breakdown:
        return self.largest(optimizer, batch).breakdown

    def steps(self) -> dict[str, StepMemory]:
        out = {}
        for oid in self.breakdowns:
            ranks = tuple(self.rank_steps(oid))
            top = largest_of(ranks)
            out[oid] = StepMemory(oid, top.breakdown, self.total_at(oid), complete=self.complete,
                                  state_bytes=top.state_bytes, ranks=ranks)
        return out

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["sharding"] = self.sharding.to_dict() if self.sharding else None
        return d


def assumptions_for(sharding: Sharding, ctx: Context) -> list[str]:
    """The per-rank model's assumptions, in words."""
    k = ctx.recipe.grad_accum
    out = [f"distributed: {sharding.describe()}; --batch-size is the per-rank micro-batch "
           f"(effective batch = batch{f' × {k} micro-steps' if k > 1 else ''} × {sharding.world:,} "
           "ranks, all data-parallel); activations are one rank's"]
    s = sharding.scheme
    if s == "ddp":
        out.append(f"ddp: every rank holds the whole model, gradients and optimizer state; "
                   f"gradient buckets (bucket_cap_mb={sharding.bucket_cap_mb:g}, first bucket 1 MiB, "
                   "gradient_as_bucket_view=False) hold a second copy of the gradients"
                   + ("; --amp as torch autocast (fp32 parameters and gradients)" if ctx.amp else ""))
    elif s == "fsdp2":
        out.append(
            "fsdp2: parameters sharded on dim 0 (torch.chunk: ⌈d0/S⌉ rows per rank, rank 0 the "
            "largest, trailing ranks possibly empty), each rank's storage padded to chunk 0; "
            "gradients one padded reduce-scatter output per unit; the optimizer state on each "
            "rank's local shard (its registry rule)")
        out.append(
            "fsdp2 units: each block of a module list (the shallowest name part that is an integer "
            "index: model.layers.N, blocks.N, …) is one fully_shard unit, the rest the root; "
            + ("reshard_after_forward=True: the root and at most two units gathered at once, plus "
               "one unit's unsharded gradients and reduce-scatter input"
               if sharding.reshard_after_forward else
               "reshard_after_forward=False: every unit stays gathered from forward to backward"))
        if ctx.amp:
            out.append(f"fsdp2 --amp as MixedPrecisionPolicy(param_dtype={ctx.amp}, "
                       "reduce_dtype=float32): fp32 sharded parameters and gradients, gathered "
                       f"units and unsharded gradients in {ctx.amp}")
    else:
        stage = sharding.zero_stage
        what = {1: "optimizer states", 2: "optimizer states and gradients",
                3: "optimizer states, gradients and parameters"}[stage]
        out.append(
            f"zero{stage} (DeepSpeed ZeRO-{stage}, {what} partitioned): "
            + zero.deepspeed_dtype_note(ctx) + "; the client optimizer steps one flat fp32 "
            + ("partition per parameter group (aligned to 2·N elements)" if stage < 3 else
               f"tensor per sub-group (sub_group_size={sharding.sub_group_size:.0e})")
            + f"; reduce bucket {sharding.reduce_bucket_size:.0e} elements"
            + (" ×2 (overlap_comm)" if sharding.overlap else "")
            + ("; parameters under "
               f"{sharding.param_persistence_threshold:,} elements stay whole on every rank, plus "
               "the largest module gathered with its gradients and the prefetch bucket"
               if stage == 3 else ""))
    out += recipe_assumptions(sharding, ctx)
    out.append("allocator part per rank: the one-process allocator model fed with the rank's own "
               "blocks (its parameters, shards or partitions and the buckets it keeps allocated "
               "first; the traced forward+backward at the per-rank micro-batch with the rank's "
               "transients alive through it, as one block of their peak's size; its gradient "
               "shards or partitions replacing the whole gradients when backward ends; the "
               "optimizer's state and temporaries on what it steps)")
    out.append("not modelled: NCCL's own buffers (allocated outside PyTorch's allocator), "
               "the CUDA context of each rank, and where inside forward and backward the "
               "collectives allocate their buffers (the replay keeps them alive throughout)")
    return out


def recipe_assumptions(sharding: Sharding, ctx: Context) -> list[str]:
    """How each scheme runs the recipe's accumulation, quantized base and offload, in words."""
    recipe, s, out = ctx.recipe, sharding.scheme, []
    if recipe.grad_accum > 1:
        k = recipe.grad_accum
        if s == "ddp":
            out.append(f"ddp accumulation: no_sync() for the first {k - 1} of {k} micro-steps, "
                       "every rank accumulating its whole gradients in .grad; the buckets "
                       "all-reduce on the last micro-step only (allocated once either way)")
        elif s == "fsdp2":
            out.append(
                "fsdp2 accumulation: torch's default, set_requires_gradient_sync(True): every "
                "micro-step reduce-scatters and the sharded gradients accumulate in place (one "
                "unit's fresh reduce-scatter output beside them while it is added); with "
                "set_requires_gradient_sync(False) each rank would instead keep every unsharded "
                f"gradient across micro-steps: {fsdp2.unsynced_grad_bytes(ctx):,} B more, not "
                "planned")
        else:
            out.append(f"{s} accumulation: gradient_accumulation_steps={k}; gradients accumulate "
                       "in ZeRO's own buffers (stage 1: the full gradients, reduced at the "
                       "boundary; stages 2/3: the reduced partition) in the model's dtype, "
                       "DeepSpeed's default (data_types.grad_accum_dtype=fp32 would keep an fp32 "
                       "partition instead: not planned)")
    if recipe.quantize_base is not None:
        base = next((dt for p in ctx.specs if not p.trainable
                     for dt in [dtypes.canonical(p.dtype)] if dt in dtypes.FLOATING), None)
        out.append(quantized.assumption(s, recipe, ctx.amp, base))
    if recipe.offload is not None:
        out.append(offload.assumption(s, recipe, sharding.ranks_per_node, ctx.allocator))
    return out


def estimate(model_spec: ModelSpec, layouts: Sequence[OptimizerVariant], sharding: Sharding, *,
             batch_size: int = 1, allocator: str = "cpu", **options: Any) -> DistEstimate:
    """Per-rank training-step estimates of ``model_spec`` under ``sharding`` for each optimizer.
    ``options`` are :func:`smmf_plan.memory.step_basis`'s (input size, dtype, amp, …)."""
    return from_basis(basis_for(model_spec, sharding.scheme, batch_size=batch_size,
                                allocator=allocator, **options),
                      model_spec.name, layouts, sharding)


def basis_for(model_spec: ModelSpec, scheme: str, **options: Any) -> StepBasis:
    """The step basis a scheme's ranks share: DDP runs mixed precision as torch autocast, the
    sharding engines hand the model low-precision parameters (``amp_trace="cast"``). The
    per-rank planners place the specs themselves (sharded, quantized, offloaded); a recipe a
    scheme cannot run is refused here, before any trace."""
    recipe = options.get("recipe")
    if recipe is not None:
        quantized.check(scheme, recipe)
        offload.check(scheme, recipe)
    return step_basis(model_spec, amp_trace="autocast" if scheme == "ddp" else "cast", **options)


def context_of(basis: StepBasis, scheme: str) -> Context:
    """What ``scheme``'s planner is given: the basis's specs as the engine holds them (a quantized
    base's packed weights in place of its weights, its quantization state whole on every rank)."""
    params, state = quantized.engine_tensors(basis.specs, basis.quantized, basis.recipe, scheme,
                                             basis.amp)
    ctx = Context(tuple(params), basis.rounding, basis.buffer_bytes, basis.amp,
                  recipe=basis.recipe, library=basis.library)
    return replace(ctx, buffer_bytes=ctx.buffer_bytes + sum(ctx.round(t.nbytes) for t in state))


def from_basis(basis: StepBasis, name: str, layouts: Sequence[OptimizerVariant],
               sharding: Sharding, *, allocator_parts: bool = True) -> DistEstimate:
    """The per-rank estimate of every optimizer from a computed basis (no trace).
    ``allocator_parts=False`` leaves every rank's ``allocator`` part at 0 (no allocator replay): a
    lower bound of each rank's device bytes, since the part is never negative."""
    t0 = time.perf_counter()
    ctx = context_of(basis, sharding.scheme)
    classes, skipped = {}, []
    for v in layouts:
        try:
            classes[v.id] = plan_ranks(ctx, sharding, v)
        except Unsupported as e:
            skipped.append(f"{v.id}: not estimated: {e}")
    layouts = [v for v in layouts if v.id in classes]
    if ctx.recipe.offload is not None:
        skipped += [node_host_line(sharding, classes)]
    assumptions = (per_rank(basis.assumptions, basis, sharding) + assumptions_for(sharding, ctx)
                   + caveats(sharding, layouts) + skipped + [TEMPORARIES_ASSUMPTION])
    info = dict(basis.recipe_info)
    if "effective_batch_size" in info:  # every data-parallel rank's micro-batches
        info["data_parallel_ranks"] = sharding.world
        info["effective_batch_size"] = basis.batch_size * basis.recipe.grad_accum * sharding.world
    est = DistEstimate(
        model=name, batch_size=basis.batch_size, allocator=basis.allocator,
        breakdowns={}, activation_model=basis.activation_model, assumptions=assumptions,
        step_temp={}, runtime_parts=basis.runtime_parts, input=basis.input,
        persistent={v.id: v.keeps_scratch for v in layouts}, sharding=sharding, classes=classes,
        recipe=basis.recipe, recipe_info=info, incomplete_reason=basis.incomplete_reason)
    if allocator_parts:
        est._add_allocator_parts(layouts, basis.logs)
    for v in layouts:
        top = est.largest(v.id)
        est.breakdowns[v.id] = top.breakdown
        est.state_bytes[v.id] = top.state_bytes
        est.step_temp[v.id] = max(c.figures.step_temp for c in classes[v.id])
    est.seconds = time.perf_counter() - t0 + (t0 - basis.t0)
    return est


def node_host_bytes(sharding: Sharding, classes: Sequence[RankClass]) -> int:
    """The host bytes of the node whose ranks hold the most (nodes hold consecutive ranks)."""
    per = sharding.ranks_per_node
    nodes = [0] * sharding.nodes
    for c in classes:
        host = sum(n for _, n in c.figures.host)
        for a, b in c.ranges:
            for k in range(a // per, b // per + 1):
                nodes[k] += host * (min(b, (k + 1) * per - 1) - max(a, k * per) + 1)
    return max(nodes, default=0)


def node_host_line(sharding: Sharding, classes: dict[str, list[RankClass]]) -> str:
    per = sharding.ranks_per_node
    figures = ", ".join(f"{oid} {node_host_bytes(sharding, cs):,} B" for oid, cs in classes.items())
    return (f"host memory per node ({per} rank{'s' if per != 1 else ''} sharing its RAM; the "
            f"fullest node): {figures}")


def per_rank(assumptions: Sequence[str], basis: StepBasis, sharding: Sharding) -> list[str]:
    """The basis's assumptions as they hold per rank: its one-process effective batch made one
    rank's, and its one-process offload (torchao's) left to the scheme's own line."""
    k = basis.batch_size * basis.recipe.grad_accum
    one = f"(effective batch {k})"
    every = f"(effective batch {k} per rank, × {sharding.world:,} ranks = {k * sharding.world:,})"
    torchao = offload_assumption(basis.recipe, basis.library) if basis.recipe.offload else None
    return [a.replace(one, every, 1) if a.startswith("gradient accumulation:") else a
            for a in assumptions if a != torchao]


def caveats(sharding: Sharding, layouts: Sequence[OptimizerVariant]) -> list[str]:
    """What the registry says about running each optimizer under this scheme."""
    out = []
    for v in layouts:
        note = v.info.dist_caveats.get(sharding.scheme) or (
            v.info.dist_caveats.get("zero") if sharding.zero_stage else None)
        if note:
            out.append(f"{v.id} under {sharding.scheme}: {note}")
    return out


def step_estimate(model_spec: ModelSpec, layouts: Sequence[OptimizerVariant],
                  sharding: Sharding | None, *, batch_size: int = 1, allocator: str = "cpu",
                  **options: Any) -> MemoryEstimate:
    """One process's estimate (:func:`smmf_plan.memory.estimate`) without ``sharding``, the
    per-rank one with it: what ``plan``, ``size`` and ``check`` call."""
    if sharding is None:
        return single(model_spec, layouts, batch_size=batch_size, allocator=allocator, **options)
    return estimate(model_spec, layouts, sharding, batch_size=batch_size, allocator=allocator,
                    **options)
