"""Per-rank plans for distributed training: DDP, DeepSpeed ZeRO-1/2/3 and FSDP2 (torch-free).

A :class:`Sharding` (scheme, world, nodes, shard group, engine settings) and the model's parameter
specs give, for every optimizer in the registry, what **each rank** keeps — computed per tensor, as
the engines lay tensors out, not from the parameter count alone:

* :mod:`.fsdp2`: dim-0 ``torch.chunk`` shards (rank 0 the largest, trailing ranks possibly empty,
  storage padded to chunk 0), the optimizer's state on each local shard through the registry's
  ``shard_state`` rule, gathered units and reduce-scatter buffers;
* :mod:`.zero`: ZeRO's flat, ``2·N``-aligned partitions, the client optimizer stepping one flat
  fp32 tensor per group (stage 3: per sub-group), master partitions and buckets;
* :mod:`.ddp`: whole replicas plus the gradient buckets.

:func:`plan_ranks` returns the ranks grouped by identical figures (:class:`RankClass`): a 1,024-rank
plan has as many entries as distinct rank shapes. :func:`estimate` adds the traced activations at
the per-rank micro-batch (the only part that needs torch, cached like the single-process trace).
"""

from .context import Context
from .estimate import DistEstimate, RankStep, estimate, plan_ranks
from .ranks import RankClass, RankFigures, ranks_label
from .sharding import SCHEMES, Sharding, parse_scheme

__all__ = ["Context", "DistEstimate", "RankClass", "RankFigures", "RankStep", "SCHEMES", "Sharding",
           "estimate", "parse_scheme", "plan_ranks", "ranks_label"]
