"""Real multi-process SMMF runs under FSDP2 / DDP (gloo, CPU) for tests/test_optim_smmf_sharded.py.

One ``torch.multiprocessing.spawn`` per world size runs every scenario of that world in one process
group (process start-up dominates on two cores). Each rank saves what it saw to
``out/rank{r}.pt``; the test compares it with a single-process run built from the same seed.

The model is the reference document's MLP with a last layer of 3 rows: its 251-row layer shards
unevenly at world 2 and 4, and at world 4 the 3-row layer and its bias leave rank 3 an empty shard.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

WIDTHS = (32, 96, 251, 128, 3)
BATCH = 8  # divisible by every world size tested
STEPS = 12
RESUME_AT = 5  # the world-2 run saves a DCP checkpoint after this many steps
HYPER = dict(lr=1e-2, weight_decay=1e-2)
#: the other code paths: bool signs, Adam-like moments for vectors (the dense path on local
#: shards), coupled weight decay
OTHER = dict(sign="bool", vector_reshape=False, weight_decay_mode="adam")


def build_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(WIDTHS[:-1], WIDTHS[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def batches(steps: int = STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(steps, BATCH, WIDTHS[0], generator=gen)
    y = torch.randn(steps, BATCH, WIDTHS[-1], generator=gen)
    return x, y


def reference(steps: int = STEPS, **opt_kwargs):
    """Single-process SMMF on the full batches: each step's loss and the final parameters."""
    from smmf_plan.optim import SMMF

    model = build_model()
    opt = SMMF(model.parameters(), **{**HYPER, **opt_kwargs})
    x, y = batches(steps)
    losses = []
    for t in range(steps):
        loss = nn.functional.mse_loss(model(x[t]), y[t])
        loss.backward()
        losses.append(loss.item())
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses, [p.detach().clone() for p in model.parameters()]


def replay(grads: list[list[torch.Tensor]], **opt_kwargs) -> list[torch.Tensor]:
    """Single-process SMMF given each step's gradients: the final parameters."""
    from smmf_plan.optim import SMMF

    model = build_model()
    opt = SMMF(model.parameters(), **{**HYPER, **opt_kwargs})
    for step in grads:
        for p, g in zip(model.parameters(), step):
            p.grad = g.clone()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def bf16_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, world: int) -> float:
    """Set ``model``'s gradients to what a bf16 ``MixedPrecisionPolicy`` (fp32 reduction) over
    ``world`` ranks gives it: the mean of the micro-batches' bf16 gradients, each cast to fp32."""
    import copy

    half = copy.deepcopy(model).to(torch.bfloat16)
    grads = [torch.zeros_like(p) for p in model.parameters()]
    losses = []
    for xs, ys in zip(x.chunk(world), y.chunk(world)):
        half.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(half(xs.to(torch.bfloat16)), ys)
        loss.backward()
        losses.append(loss.float().item())
        for acc, p in zip(grads, half.parameters()):
            acc.add_(p.grad.float())
    for p, acc in zip(model.parameters(), grads):
        p.grad = acc / world
    return sum(losses) / world


# --------------------------------------------------------------------------- ranks
def _init(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _fsdp_model(mp: bool = False, mesh=None) -> nn.Module:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    model = build_model()
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mp \
        else MixedPrecisionPolicy()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mp_policy=policy, mesh=mesh)
    fully_shard(model, mp_policy=policy, mesh=mesh)
    return model


def _train(model, opt, rank: int, world: int, start: int, stop: int, counts: list | None = None,
           grads: list | None = None) -> list[float]:
    """Steps ``start..stop-1`` on this rank's micro-batches; the mean loss over ranks per step.
    ``counts`` collects the collectives each ``opt.step()`` issues, ``grads`` the full gradients
    each step is given."""
    import torch.distributed as dist
    from torch.distributed.tensor.debug import CommDebugMode

    x, y = batches()
    losses = []
    for t in range(start, stop):
        xs, ys = x[t].chunk(world)[rank], y[t].chunk(world)[rank]
        loss = nn.functional.mse_loss(model(xs), ys)
        loss.backward()
        if grads is not None:
            grads.append(_full(model, grad=True))
        if counts is None:
            opt.step()
        else:
            with CommDebugMode() as comm:
                opt.step()
            counts.append({str(k): v for k, v in comm.get_comm_counts().items()})
        opt.zero_grad(set_to_none=True)
        seen = loss.detach().float().clone()
        dist.all_reduce(seen)
        losses.append(seen.item() / world)
    return losses


def _full(model, grad: bool = False) -> list[torch.Tensor]:
    from torch.distributed.tensor import DTensor

    tensors = [p.grad if grad else p for p in model.parameters()]
    return [(t.full_tensor() if isinstance(t, DTensor) else t).detach().clone() for t in tensors]


def _state_bytes(opt) -> dict[str, int]:
    from torch.distributed.tensor import DTensor

    out = {}
    for name, p in zip(_names(), opt.param_groups[0]["params"]):
        tensors = [v for v in opt.state[p].values() if isinstance(v, torch.Tensor)]
        assert not any(isinstance(v, DTensor) for v in tensors)  # live state: local tensors only
        out[name] = sum(v.numel() * v.element_size() for v in tensors)
    return out


def _local_rows(opt) -> dict[str, int]:
    return {name: p.to_local().shape[0] for name, p in zip(_names(), opt.param_groups[0]["params"])}


def _names() -> list[str]:
    return [n for n, _ in build_model().named_parameters()]


def _save(model, opt, path: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=path)


def _load(model, opt, path: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, opt)
    both = {"model": msd, "optim": osd}
    dcp.load(both, checkpoint_id=path)
    set_state_dict(model, opt, model_state_dict=both["model"], optim_state_dict=both["optim"])


def run_rank(rank: int, world: int, port: int, out: str, ckpt: str) -> None:
    """Every scenario of one world size, on rank ``rank``."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from smmf_plan.optim import SMMF

    _init(rank, world, port)
    result: dict = {}
    try:
        # FSDP2, fp32, with the collectives of every step counted
        model = _fsdp_model()
        opt = SMMF(model.parameters(), **HYPER)
        counts: list = []
        losses = _train(model, opt, rank, world, 0, RESUME_AT, counts)
        if world == 2:
            _save(model, opt, ckpt + "-default")
        losses += _train(model, opt, rank, world, RESUME_AT, STEPS, counts)
        result["fsdp"] = dict(losses=losses, params=_full(model), counts=counts,
                              state_bytes=_state_bytes(opt), rows=_local_rows(opt))
        try:  # the sharded step is eager: asking for the fused kernel is an error, not ignored
            SMMF(model.parameters(), **HYPER, fused=True)
            result["fused_error"] = None
        except RuntimeError as e:
            result["fused_error"] = str(e)
        if world == 2:
            # bool signs, dense-path vectors and coupled weight decay, checkpointed too
            model = _fsdp_model()
            opt = SMMF(model.parameters(), **HYPER, **OTHER)
            losses = _train(model, opt, rank, world, 0, RESUME_AT)
            _save(model, opt, ckpt + "-other")
            losses += _train(model, opt, rank, world, RESUME_AT, STEPS)
            result["other"] = dict(losses=losses, params=_full(model), state_bytes=_state_bytes(opt))
            # DDP: SMMF itself runs unchanged on whole parameters
            model = DistributedDataParallel(build_model())
            opt = SMMF(model.parameters(), **HYPER)
            result["ddp"] = dict(losses=_train(model, opt, rank, world, 0, STEPS),
                                 params=_full(model))
            # FSDP2 with a bf16 MixedPrecisionPolicy
            model = _fsdp_model(mp=True)
            opt = SMMF(model.parameters(), **HYPER)
            grads: list = []
            result["bf16"] = dict(losses=_train(model, opt, rank, world, 0, STEPS, grads=grads),
                                  params=_full(model), grads=grads)
        else:
            # resume the world-2 checkpoints here and finish their runs
            for name, kwargs in (("default", {}), ("other", OTHER)):
                model = _fsdp_model()
                opt = SMMF(model.parameters(), **HYPER, **kwargs)
                _load(model, opt, ckpt + "-" + name)
                result["resumed-" + name] = dict(
                    losses=_train(model, opt, rank, world, RESUME_AT, STEPS), params=_full(model),
                    state_bytes=_state_bytes(opt))
            # HSDP: 2 replicas of 2 shards
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
            model = _fsdp_model(mesh=mesh)
            opt = SMMF(model.parameters(), **HYPER)
            counts = []
            result["hsdp"] = dict(losses=_train(model, opt, rank, world, 0, STEPS, counts),
                                  params=_full(model), counts=counts, state_bytes=_state_bytes(opt))
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def spawn(world: int, out: str, ckpt: str) -> list[dict]:
    """Run :func:`run_rank` on ``world`` processes; every rank's result."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(run_rank, args=(world, port, out, ckpt), nprocs=world, join=True)
    return [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(world)]
