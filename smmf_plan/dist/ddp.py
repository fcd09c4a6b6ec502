"""DDP (``torch.nn.parallel.DistributedDataParallel``), per rank (torch-free).

Every rank keeps the whole model, its gradients and the whole optimizer state: a single-process
step's figures. DDP adds its gradient **buckets**: the C++ reducer allocates one flat tensor per
bucket (``Reducer::initialize_buckets``) and, with ``gradient_as_bucket_view=False`` (the
default), copies each gradient into it for the all-reduce, so the buckets cost a second copy of the
gradients. Buckets are filled in reverse parameter order (the order gradients become ready), one
dtype per bucket, closed once they reach their cap: 1 MiB for the first
(``dist._DEFAULT_FIRST_BUCKET_BYTES``), ``bucket_cap_mb`` (25 MiB) after that — the layout the
reducer rebuilds after the first iteration. Only the allocator's rounding per bucket depends on
where buckets end.
"""

from __future__ import annotations

from typing import Sequence

from ..optimizers import OptimizerVariant
from ..shapes import ParamSpec
from . import offload
from .context import Context
from .ranks import RankBlocks, RankClass, RankFigures, state_sum
from .sharding import Sharding

MiB = 1 << 20
#: ``torch.distributed._DEFAULT_FIRST_BUCKET_BYTES``.
FIRST_BUCKET_BYTES = 1 * MiB


def buckets(specs: Sequence[ParamSpec], bucket_cap_mb: float = 25.0) -> list[int]:
    """Bytes of each gradient bucket over the trainable ``specs`` (see the module docstring)."""
    cap = int(bucket_cap_mb * MiB)
    limits = [min(FIRST_BUCKET_BYTES, cap), cap]
    open_: dict[str, int] = {}
    count: dict[str, int] = {}
    out: list[int] = []
    for spec in reversed([s for s in specs if s.trainable]):
        key = spec.dtype
        open_[key] = open_.get(key, 0) + spec.nbytes
        limit = limits[min(count.get(key, 0), 1)]
        if open_[key] >= limit:
            out.append(open_.pop(key))
            count[key] = count.get(key, 0) + 1
    out += [b for b in open_.values() if b]
    return out


def plan(ctx: Context, sharding: Sharding, optimizer: OptimizerVariant) -> list[RankClass]:
    """Every rank alike; accumulation (``no_sync``) keeps the same gradients and buckets."""
    offload.check("ddp", ctx.recipe)
    specs, trainable = ctx.specs, ctx.trainable
    weights = sum(ctx.round(s.nbytes) for s in specs) + ctx.buffer_bytes
    grads = sum(ctx.round(s.nbytes) for s in trainable)
    groups = optimizer.group_names(trainable)
    states = tuple(optimizer.state(s, g) for s, g in zip(trainable, groups))
    logical, allocated, count = state_sum(states, ctx.allocator)
    bucket_list = buckets(trainable, sharding.bucket_cap_mb)
    comm = sum(ctx.round(b) for b in bucket_list)
    temp = optimizer.step_temp_bytes(trainable, ctx.allocator)
    blocks = RankBlocks(kept=tuple(s.nbytes for s in specs if s.nbytes)
                        + ((ctx.buffer_bytes,) if ctx.buffer_bytes else ()) + tuple(bucket_list),
                        grads=None, transient=(), specs=tuple(trainable), states=states)
    figures = RankFigures(weights=weights, master=0, grads=grads, state_allocated=allocated,
                          state_bytes=logical, comm=comm, step_temp=temp, state_tensors=count,
                          blocks=blocks)
    return [RankClass(((0, sharding.world - 1),), figures)]
