"""The ``allocator`` part of one rank's step: the rank's own blocks under the allocator model a
one-process plan uses (torch-free).

One home for the rule: :func:`smmf_plan.allocators.models.allocator_part` (glibc's retained heap
on CPU, the CUDA caching allocator's reserved-but-unallocated segments replayed on the allocation
sequence), fed with what one rank allocates (:class:`~.ranks.RankBlocks`):

* before the first step, the rank's parameters as it stores them (whole for DDP, padded dim-0
  shards for FSDP2, flat partitions for ZeRO), its buffers, fp32 master partitions and the buckets
  it keeps (DDP's gradient buckets, ZeRO's reduce bucket);
* every step, the traced forward + backward at the per-rank micro-batch (:func:`rank_log`), with
  the rank's transients (FSDP2's gathered units and collective buffers, replayed as one block of
  their peak's size) alive through forward and backward, and, where the rank keeps other
  gradients than the whole ones the trace produced (FSDP2's reduce-scatter outputs, ZeRO's
  partitions), each traced gradient freed as soon as it is made (reduced into the rank's own;
  the unit's unsharded gradients are part of the transients) and the rank's own allocated when
  backward ends;
* the optimizer's state and temporaries on the tensors it steps on this rank (local shards, flat
  partitions).

With one rank and no transients this is exactly the one-process sequence (tested: DDP at world 1
has the one-process allocator part on CPU).
"""

from __future__ import annotations

from typing import Callable, Mapping

from ..allocators import models as allocator_models
from ..allocators.models import AllocatorModel
from ..allocators.sequence import StepLog
from ..memory import optimizer_step
from ..optimizers import OptimizerVariant
from .ranks import RankBlocks


def rank_log(log: StepLog, blocks: RankBlocks) -> StepLog:
    """One process's traced forward + backward as this rank runs it (see the module docstring)."""
    if blocks.grads is None and not blocks.transient:
        return log
    k = len(blocks.transient)
    reduced = set(log.grads) if blocks.grads is not None else set()
    events = list(blocks.transient)
    i = 0  # the traced blocks' ids move up by the transients allocated first
    for e in log.events:
        if e < 0:
            events.append(~(~e + k))
            continue
        events.append(e)
        if i in reduced:  # a whole gradient, reduced into the rank's own as soon as it is made
            events.append(~(i + k))
        i += 1
    grads = tuple(i + k for i in log.grads)
    if blocks.grads is not None:
        grads = tuple(range(i + k, i + k + len(blocks.grads)))
        events += list(blocks.grads)
    events += [~j for j in range(k)]
    return StepLog(tuple(events), grads, tuple(i + k for i in log.retained), log.forward_end + k)


def allocator_part(model: AllocatorModel, layout: OptimizerVariant, rounding: str,
                   logs: Mapping[int, StepLog], blocks: RankBlocks,
                   tensors_at: Callable[[int], int], churn_at: Callable[[int], int],
                   recomputes: bool = False) -> Callable[[int], int]:
    """``batch -> bytes`` of one rank's ``allocator`` part (``tensors_at``/``churn_at`` as
    :func:`~smmf_plan.allocators.models.allocator_part` takes them, from the rank's breakdown;
    ``recomputes``: the traced step recomputes activations, gradient checkpointing)."""
    step = optimizer_step(layout, list(blocks.specs), rounding, states=list(blocks.states))
    return allocator_models.allocator_part(
        model, weights=blocks.kept, logs={b: rank_log(log, blocks) for b, log in logs.items()},
        step=step, tensors_at=tensors_at, churn_at=churn_at, recomputes=recomputes)
