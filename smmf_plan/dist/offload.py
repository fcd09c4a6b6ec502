"""``--offload`` per rank: what each scheme's engine moves to the host (torch-free).

Each rank is its own process with its own host memory use; the ranks of one node share its RAM.

* ``fsdp2``: ``fully_shard(offload_policy=CPUOffloadPolicy())`` (pin_memory=True), torch's one
  offload: the sharded parameters (padded, pinned), their sharded gradients (each reduce-scatter
  output copied to a pinned host tensor) and the optimizer, which steps on the host; the device
  keeps the gathered units, the reduce-scatter buffers and each unit's shards copied in for its
  all-gather. ``optimizer`` and ``optimizer+grads`` are the same policy.
* ``zero1``/``zero2``/``zero3``: DeepSpeed ZeRO-Offload, ``offload_optimizer: {device: cpu,
  pin_memory: true}`` (read from DeepSpeed 0.19's ``stage_1_and_2.py`` and ``stage3.py``): the
  fp32 master partition, its fp32 gradient and the optimizer state on the host, the step there;
  stages 1/2 also keep a pinned bit16 copy of the partition and a pinned and a device staging
  buffer of the largest parameter, and stage 2 with accumulation a pinned bit16 copy of each
  parameter the partition touches (``accumulated_grads_in_cpu``); stage 3 keeps its flat gradient-partition
  buffer on the host. ``optimizer`` and ``optimizer+grads`` are the same configuration.
* ``ddp``: refused. torchao's ``CPUOffloadOptimizer`` (the one-process offload) is for one GPU: it
  copies each gradient to the host from a post-accumulate-grad hook, before DDP's reducer has
  all-reduced it, so every rank would step on its own gradients.
"""

from __future__ import annotations

from ..allocators import pinned_round
from ..errors import PlanError
from ..memory import host_runtime_bytes
from ..recipe import Recipe
from .context import Context


def check(scheme: str, recipe: Recipe) -> None:
    """One-line :class:`PlanError` where ``scheme`` has no offload to plan."""
    if recipe.offload is not None and scheme == "ddp":
        raise PlanError(f"--dist ddp with --offload {recipe.offload}: torchao's CPUOffloadOptimizer "
                        "is single-GPU (it copies each gradient to the host before DDP all-reduces "
                        "it): offload with --dist zero1/zero2/zero3 (ZeRO-Offload) or fsdp2 "
                        "(CPUOffloadPolicy), or drop --offload")


def pinned(ctx: Context, *nbytes: int) -> int:
    """Pinned host blocks: each rounded up to a power of two as CUDA's host caching allocator
    does, on a CUDA plan; elsewhere (no pinned memory: DeepSpeed's CPU accelerator pins nothing;
    "raw" plans round nothing) as the plan's allocator rounds."""
    if ctx.allocator == "cuda":
        return sum(pinned_round(n) for n in nbytes)
    return sum(ctx.round(n) for n in nbytes)


def host_parts(ctx: Context, copies: int, state: int, temporaries: int) -> tuple[tuple[str, int], ...]:
    """One offloading rank's host parts (:data:`smmf_plan.breakdown.PARTS`' host keys)."""
    return (("host_copies", copies), ("host_state", state), ("host_temporaries", temporaries),
            ("host_runtime", host_runtime_bytes(ctx.library)))


def assumption(scheme: str, recipe: Recipe, ranks_per_node: int, allocator: str) -> str:
    if scheme == "fsdp2":
        what = ("fsdp2 offload: CPUOffloadPolicy(pin_memory=True) — sharded parameters (padded) and "
                "sharded gradients in pinned host memory, the optimizer state and step on the host; "
                "the device keeps buffers, gathered units, reduce-scatter buffers and the shards "
                "copied in for each all-gather; an optimizer that communicates in its step (SMMF's "
                "all-reduce) does so on host tensors: the process group needs a CPU backend too "
                "(init_process_group(backend=\"cpu:gloo,cuda:nccl\"))")
    else:
        what = (f"{scheme} offload: ZeRO-Offload (offload_optimizer device=cpu, pin_memory=true) — "
                "fp32 master partition, its fp32 gradient and the optimizer state on the host, the "
                "step there (the client optimizer's CPU temporaries; DeepSpeedCPUAdam needs none)"
                + ("; pinned bit16 partition copy and staging buffers of the largest parameter"
                   + ("; accumulating, a pinned bit16 copy of every parameter the partition "
                      "touches" if recipe.grad_accum > 1 and scheme == "zero2" else "")
                   if scheme != "zero3" else "; the flat gradient-partition buffer pinned on the host"))
    if recipe.offload == "optimizer+grads":
        what += " (--offload optimizer and optimizer+grads are the same engine setting)"
    rounding = ("pinned blocks rounded up to powers of two (CUDA's host caching allocator)"
                if allocator == "cuda" else "no pinned memory off CUDA: host blocks as allocated")
    return (what + f"; {rounding}; each rank's host parts include its own process; a node's {ranks_per_node} rank(s) share its RAM: each rank is checked "
            "against the host memory per GPU, so the largest rank fitting means the node does")
