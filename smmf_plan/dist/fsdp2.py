"""FSDP2 (``torch.distributed.fsdp.fully_shard``), per rank (torch-free).

Read from torch 2.14's ``_fully_shard`` and checked in tests against ``FSDPMemTracker`` (one
process, the ``fake`` process group) and real gloo runs:

* **Sharding** (``FSDPParam._init_sharded_param``): every parameter is split on dim 0 with
  ``torch.chunk`` semantics across the ``S`` ranks of its shard group: chunks of ``c = ⌈d0/S⌉`` rows,
  so shard rank ``s`` holds rows ``[s·c, min((s+1)·c, d0))`` — rank 0 the most, trailing ranks
  possibly none (a (10, 128) layer at S = 8: two rows on ranks 0-4, none on 5-7). Each rank's
  storage is padded to chunk 0's size, so the **weights** cost ``c × rest`` elements on every rank,
  while the optimizer sees the unpadded local shard. A 0-d parameter cannot be sharded
  (``fully_shard`` raises), and neither can it be planned.
* **Gradients** (``foreach_reduce``): one reduce-scatter output per unit, holding the padded shards
  of the unit's trainable parameters, in the parameters' dtype: the sharded gradients are views of it.
* **Optimizer state**: the registry's :meth:`~smmf_plan.optimizers.OptimizerVariant.shard_state` of
  each trainable parameter at the rank's local shape (Adam: local moments + ``step``; SMMF: the full
  matrix's factors + the local sign).
* **Units** (:func:`units`): the modules a user wraps with ``fully_shard``, by the stated rule of
  this planner: every block of a module list — the shallowest module whose name ends in an integer
  index (``model.layers.3``, ``transformer.h.0``, ``blocks.11``, ``encoder.layer.5``, ``layer1.2``) —
  is a unit; every parameter outside those blocks belongs to the root (``fully_shard(model)``).
* **Transients** (the ``comm`` part), per unit in the compute dtype ``C`` (``param_dtype`` of the
  ``MixedPrecisionPolicy``, the parameters' own without AMP): the unsharded parameters (``S × c ×
  rest`` elements each), the all-gather output (one flat buffer of the unit's padded size; plus the
  shard-sized copy-in under mixed precision), the unsharded gradients autograd produces and the
  reduce-scatter input (padded, in the reduce dtype: fp32 under AMP). With ``reshard_after_forward``
  (the default) at most the current and the prefetched unit are gathered (explicit backward prefetch,
  implicit forward prefetch), and the root, which never reshards, stays gathered; the peak is the
  largest of: a unit gathered while its neighbour's all-gather is copied out, and a unit's
  gradients being copied into its reduce-scatter input while the next unit is already gathered.
  Without it every unit stays gathered from forward to backward.
* HSDP (``shard_group`` < world): the same on ``S = shard_group``; the all-reduce across replicas
  runs in place on the reduce-scatter output.
* **Gradient accumulation** (``foreach_reduce``, ``requires_gradient_sync`` True: torch's default,
  every micro-step reduce-scatters): a later micro-step's reduce-scatter output is a fresh buffer
  added into the sharded gradients, so one unit's sharded gradients exist twice while it is added.
  With ``set_requires_gradient_sync(False)`` instead, every unit would keep its unsharded gradient
  (in the reduce dtype) across micro-steps: :func:`unsynced_grad_bytes`, stated, not planned.
* **Offload** (``CPUOffloadPolicy``, :mod:`.offload`): sharded parameters, gradients and the
  optimizer on the host; on the device each unit's shards are copied in for its all-gather and its
  reduce-scatter output lives until copied out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .. import dtypes
from ..errors import PlanError
from ..optimizers import OptimizerVariant
from ..optimizers.base import local_spec
from ..shapes import ParamSpec, Shape
from .context import Context, nbytes
from .offload import host_parts, pinned
from .ranks import RankBlocks, RankClass, RankFigures, state_sum
from .sharding import Sharding

#: the name of the root unit in reports.
ROOT = "(root)"


# --------------------------------------------------------------------------- the dim-0 chunk rule
def chunk_rows(d0: int, shards: int) -> int:
    """Rows per chunk: ``⌈d0 / shards⌉`` (what ``torch.chunk`` uses)."""
    return -(-d0 // shards)


def local_rows(d0: int, shards: int, rank: int) -> int:
    """Rows shard rank ``rank`` holds: ``c`` for the first ranks, the remainder for one, then 0."""
    c = chunk_rows(d0, shards)
    return max(0, min(c, d0 - rank * c))


def local_shape(shape: Shape, shards: int, rank: int) -> Shape:
    """The unpadded local shard ``rank`` holds of a parameter of ``shape``."""
    return (local_rows(shape[0], shards, rank),) + tuple(shape[1:])


def padded_numel(shape: Shape, shards: int) -> int:
    """Elements of one rank's (padded) shard storage: chunk 0's."""
    return chunk_rows(shape[0], shards) * math.prod(shape[1:])


def boundaries(shapes: Sequence[Shape], shards: int) -> list[tuple[int, int]]:
    """Inclusive shard-rank intervals within which every parameter's local shape is the same.

    With ``c = ⌈d0/S⌉`` and ``q = d0 // c`` full chunks, ranks ``< q`` hold ``c`` rows, rank ``q``
    the remainder (if any) and later ranks none, so each shape changes at ranks ``q`` and ``q+1``
    only: a model has as many intervals as it has distinct breakpoints, whatever ``S`` is."""
    cuts = {0, shards}
    for shape in shapes:
        d0 = shape[0]
        if d0 == 0:
            continue
        c = chunk_rows(d0, shards)
        q = d0 // c
        for cut in (q, q + 1 if d0 % c else q):
            if 0 < cut < shards:
                cuts.add(cut)
    points = sorted(cuts)
    return [(a, b - 1) for a, b in zip(points, points[1:])]


# --------------------------------------------------------------------------- units
@dataclass(frozen=True)
class Unit:
    """One ``fully_shard`` unit: its module name and the indices of its parameters."""

    name: str
    indices: tuple[int, ...]

    @property
    def is_root(self) -> bool:
        return self.name == ROOT


def unit_of(name: str) -> str:
    """The unit a parameter name belongs to (see the module docstring): the module path up to its
    first integer component, or the root."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ROOT


def units(specs: Sequence[ParamSpec]) -> list[Unit]:
    """The wrapped blocks in the order their first parameter appears, then the root."""
    order: dict[str, list[int]] = {}
    for i, s in enumerate(specs):
        order.setdefault(unit_of(s.name), []).append(i)
    root = order.pop(ROOT, [])
    out = [Unit(name, tuple(idx)) for name, idx in order.items()]
    return out + [Unit(ROOT, tuple(root))]


# --------------------------------------------------------------------------- transients
@dataclass(frozen=True)
class UnitBytes:
    """A unit's transients on one rank, as allocated."""

    #: the unsharded parameters (compute dtype).
    params: int
    #: the all-gather output (+ copy-in under mixed precision).
    all_gather: int
    #: the unsharded gradients autograd produces (compute dtype).
    grads: int
    #: the reduce-scatter input (reduce dtype).
    reduce_scatter: int
    #: the sharded gradients (the reduce-scatter output, in the parameters' dtype).
    sharded_grads: int


def unit_bytes(ctx: Context, unit: Unit, shards: int) -> UnitBytes:
    specs = [ctx.specs[i] for i in unit.indices]
    compute = [ctx.compute_dtype(s) for s in specs]
    padded = [padded_numel(s.shape, shards) for s in specs]
    params = sum(ctx.round(nbytes(p * shards, c)) for p, c in zip(padded, compute))
    gather_dtype = compute[0] if compute else "float32"
    all_gather = ctx.round(nbytes(sum(padded) * shards, gather_dtype))
    if any(c != dtypes.canonical(s.dtype) for s, c in zip(specs, compute)):
        all_gather += ctx.round(nbytes(sum(padded), gather_dtype))
    if ctx.recipe.offload is not None:  # each host shard copied to the device for the all-gather
        all_gather += sum(ctx.round(nbytes(p, s.dtype)) for s, p in zip(specs, padded))
    train = [(s, p, c) for s, p, c in zip(specs, padded, compute) if s.trainable]
    grads = sum(ctx.round(nbytes(s.numel, c)) for s, _, c in train)
    reduce_dtype = "float32" if ctx.amp else gather_dtype
    rs_numel = sum(p for _, p, _ in train) * shards
    reduce_scatter = ctx.round(nbytes(rs_numel, reduce_dtype))
    grad_dtype = dtypes.canonical(train[0][0].dtype) if train else "float32"
    sharded = ctx.round(nbytes(sum(p for _, p, _ in train), grad_dtype))
    return UnitBytes(params, all_gather, grads, reduce_scatter, sharded)


def transient_bytes(ctx: Context, sharding: Sharding, unit_list: Sequence[Unit],
                    sizes: Sequence[UnitBytes] | None = None) -> int:
    """The gathered units, unsharded gradients and collective buffers at the step's peak (see
    the module docstring); ``sizes``: :func:`unit_bytes` of each unit, if already computed."""
    S = sharding.shards
    if sizes is None:
        sizes = [unit_bytes(ctx, u, S) for u in unit_list]
    blocks = [b for u, b in zip(unit_list, sizes) if not u.is_root]
    root = next(b for u, b in zip(unit_list, sizes) if u.is_root)
    # a reduce-scatter output beside the kept sharded gradients: added into them (accumulation)
    # or copied to the host (offload)
    fresh = ctx.recipe.grad_accum > 1 or ctx.recipe.offload is not None

    def reduce(b: UnitBytes) -> int:
        return b.grads + b.reduce_scatter + (b.sharded_grads if fresh else 0)

    if not sharding.reshard_after_forward:
        gathered = root.params + sum(b.params for b in blocks)
        per_unit = [b.all_gather for b in (*blocks, root)]
        per_unit += [reduce(b) for b in (*blocks, root)]
        return gathered + max(per_unit)
    peak = max(root.all_gather, reduce(root))
    for i, b in enumerate(blocks):
        # forward: b gathered, the next unit's all-gather copied out; backward: b gathered, the
        # previous unit prefetched (and its all-gather copied out), b's gradients copied into its
        # reduce-scatter input
        for j in (i - 1, i + 1):
            if 0 <= j < len(blocks):
                peak = max(peak, b.params + blocks[j].params + blocks[j].all_gather)
        prefetched = blocks[i - 1].params if i > 0 else 0
        peak = max(peak, b.params + prefetched + reduce(b))
    return root.params + peak


def unsynced_grad_bytes(ctx: Context) -> int:
    """Bytes every rank would keep across micro-steps with ``set_requires_gradient_sync(False)``:
    each trainable parameter's unsharded gradient, up-cast to the reduce dtype (fp32 under
    ``--amp``) when it differs (``FSDPParam.to_accumulated_grad_if_needed``)."""
    return sum(ctx.round(nbytes(s.numel, "float32" if ctx.amp else ctx.compute_dtype(s)))
               for s in ctx.trainable)


# --------------------------------------------------------------------------- per rank
def check_shardable(specs: Sequence[ParamSpec]) -> None:
    for s in specs:
        if len(s.shape) == 0:
            raise PlanError(f"fsdp2 cannot shard the 0-d parameter {s.name!r} (fully_shard raises "
                            "'Shard dim 0 is invalid for 0D tensor'): plan it with --dist ddp or "
                            "zero*, or make the parameter 1-d")


def plan(ctx: Context, sharding: Sharding, optimizer: OptimizerVariant) -> list[RankClass]:
    """The rank classes of FSDP2 (or HSDP) training with ``optimizer``."""
    specs = ctx.specs
    check_shardable(specs)
    S = sharding.shards
    offload = ctx.recipe.offload is not None
    unit_list = units(specs)
    shards = [nbytes(padded_numel(s.shape, S), s.dtype) for s in specs]
    # offload: the sharded parameters live pinned on the host
    weights = (0 if offload else sum(ctx.round(n) for n in shards)) + ctx.buffer_bytes
    sizes = [unit_bytes(ctx, u, S) for u in unit_list]
    grads = 0 if offload else sum(b.sharded_grads for b in sizes)
    comm = transient_bytes(ctx, sharding, unit_list, sizes)
    trainable = ctx.trainable
    groups = optimizer.group_names(trainable)
    classes = []
    memo: dict = {}

    def shard_state(spec: ParamSpec, shape: Shape, group: str):
        # models repeat a few shapes many times (80 identical blocks): one rule call per kind
        key = (optimizer.state_key(spec, group), shape)
        if key not in memo:
            memo[key] = optimizer.shard_state(spec, shape, group)
        return memo[key]

    where = "cpu" if offload else ctx.allocator  # the optimizer's state and step
    kept = tuple(nbytes(padded_numel(s.shape, S), s.dtype) for s in specs if s.numel)
    kept += (ctx.buffer_bytes,) if ctx.buffer_bytes else ()
    sharded_grads = tuple(b.sharded_grads for b in sizes if b.sharded_grads)
    for first, last in boundaries([s.shape for s in trainable], S):
        shapes = [local_shape(s.shape, S, first) for s in trainable]
        states = tuple(shard_state(s, shape, g) for s, shape, g in zip(trainable, shapes, groups))
        logical, allocated, count = state_sum(states, where)
        local = [local_spec(s, shape) for s, shape in zip(trainable, shapes)]
        temp = optimizer.step_temp_bytes(local, where)
        if offload:  # no allocator replay: the device keeps shards and transients only
            copies = pinned(ctx, *shards) + pinned(ctx, *(s.nbytes for s in local))
            figures = RankFigures(weights=weights, master=0, grads=0, state_allocated=0,
                                  state_bytes=logical, comm=comm, step_temp=0, state_tensors=count,
                                  host=host_parts(ctx, copies, allocated, temp))
        else:
            # the transients are replayed as one block of their peak's size
            blocks = RankBlocks(kept=kept, grads=sharded_grads, transient=(comm,) if comm else (),
                                specs=tuple(local), states=states)
            figures = RankFigures(weights=weights, master=0, grads=grads, state_allocated=allocated,
                                  state_bytes=logical, comm=comm, step_temp=temp,
                                  state_tensors=count, blocks=blocks)
        classes.append(RankClass(tuple(sharding.global_ranges(first, last)), figures))
    return classes
