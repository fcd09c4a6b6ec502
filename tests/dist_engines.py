"""Workers that run the real engines (torch FSDP2 / DDP, DeepSpeed ZeRO) and report what each rank
holds, as JSON on stdout. Run by ``tests/test_dist_engines.py`` in subprocesses (each engine wants a
process group of its own); never imported by smmf_plan.

``python tests/dist_engines.py fake OPT[,OPT...] W[,W...]``: FSDP2 under FSDPMemTracker with the
``fake`` process group and FakeTensorMode, one process playing every rank of every world size in
turn, for each optimizer (or its error).
``python tests/dist_engines.py gloo OPT``: FSDP2 and DDP on 2 real gloo ranks (spawned), a few steps
of :data:`ACCUM` micro-steps each (FSDP2 reduce-scattering every micro-step, torch's default; DDP
under ``no_sync()`` until the last).
``python tests/dist_engines.py deepspeed``: one rank of a 2-rank DeepSpeed job (RANK, WORLD_SIZE,
MASTER_ADDR/PORT from the environment), ZeRO stages 1-3 in bf16 with AdamW, then ZeRO-Offload
(stages 1-3, :data:`ACCUM` micro-steps).

Each prints its result as one line ``RESULT {json}`` on stdout.
"""

from __future__ import annotations

import json
import os
import sys

import torch

#: the MLP the engines train: a 251-row layer shards unevenly at every world size > 1, and a
#: 10-row layer leaves trailing ranks empty at 8.
DIMS = (32, 96, 251, 128, 10)
#: micro-steps per optimizer step in the gloo runs (gradient accumulation).
ACCUM = 2


def mlp():
    return torch.nn.Sequential(*[torch.nn.Linear(a, b) for a, b in zip(DIMS, DIMS[1:])])


def specs_of(model) -> list[dict]:
    return [{"name": n, "shape": list(p.shape), "dtype": str(p.dtype).removeprefix("torch.")}
            for n, p in model.named_parameters()]


def _local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def state_bytes(optimizer) -> int:
    """Bytes of every tensor in ``optimizer.state`` (DTensors as their local shard)."""
    return sum(_local(v).numel() * _local(v).element_size()
               for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))


def sharded_weight_bytes(model) -> int:
    """Bytes of each FSDP2 parameter's (padded) shard storage."""
    total = 0
    for m in model.modules():
        state = getattr(m, "_get_fsdp_state", None)
        group = state()._fsdp_param_group if state else None
        if group is not None:
            total += sum(fp._sharded_param_data.numel() * fp._sharded_param_data.element_size()
                         for fp in group.fsdp_params)
    return total


def sharded_grad_bytes(model) -> int:
    """Bytes of the distinct storages behind the sharded gradients."""
    seen = {}
    for p in model.parameters():
        if p.grad is not None:
            s = _local(p.grad).untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def shard(model, mesh):
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def build(opt_id: str, params):
    from smmf_plan.optimizers import parse

    return parse(opt_id).build(params, lr=1e-3)


def fake_all(opt_ids: list[str], worlds: list[int]) -> dict:
    """:func:`fake` per optimizer; one that fails reports its error (the step's traceback line)
    instead of its ranks."""
    import traceback

    import torch.distributed as dist

    out = {}
    for opt_id in opt_ids:
        try:
            out[opt_id] = {"ranks": fake(opt_id, worlds)}
        except Exception as e:  # noqa: BLE001 - reported, the test decides
            frames = traceback.format_tb(e.__traceback__)
            # from the innermost frame of this module on (the line that failed here, e.g.
            # opt.step(), however deep the optimizer's own call stack goes below it)
            ours = [i for i, f in enumerate(frames) if __file__ in f]
            out[opt_id] = {"error": f"{type(e).__name__}: {e}",
                           "where": "".join(frames[ours[-1] if ours else -6:])}
            if dist.is_initialized():
                dist.destroy_process_group()
    return out


def fake(opt_id: str, worlds: list[int]) -> list[dict]:
    """Every rank of every world size under FSDPMemTracker: its optimizer-state bytes."""
    import torch.distributed as dist
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    out = []
    for world in worlds:
        for rank in range(world):
            dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
            mesh = init_device_mesh("cpu", (world,))
            with FakeTensorMode():
                torch.manual_seed(0)
                model = shard(mlp(), mesh)
                opt = build(opt_id, model.parameters())
                x = torch.randn(4, DIMS[0])
                tracker = FSDPMemTracker(model, opt)
                tracker.track_inputs((x,))
                with tracker:
                    for _ in range(2):
                        model(x).sum().backward()
                        opt.step()
                        opt.zero_grad()
                snap = tracker.get_tracker_snapshot("current")[torch.device("cpu")]
                opt_state = next(v for k, v in snap.items() if getattr(k, "value", None) == "OptState")
                out.append({"world": world, "rank": rank, "tracker_state_bytes": opt_state,
                            "state_bytes": state_bytes(opt), "weight_bytes": sharded_weight_bytes(model),
                            "local_shapes": [list(_local(p).shape) for p in model.parameters()]})
            dist.destroy_process_group()
    return out


def _gloo_rank(rank: int, world: int, port: int, opt_id: str, path: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    mesh = init_device_mesh("cpu", (world,))
    model = shard(mlp(), mesh)
    opt = build(opt_id, model.parameters())
    x = torch.randn(4, DIMS[0])
    for _ in range(3):
        opt.zero_grad()
        for _ in range(ACCUM):  # each micro-step's sharded gradients added in place
            model(x).square().mean().backward()
        grads = sharded_grad_bytes(model)
        opt.step()
    from smmf_plan.measure import total_state_bytes

    result = {"rank": rank, "fsdp2": {"state_bytes": state_bytes(opt), "weight_bytes":
                                      sharded_weight_bytes(model), "grad_bytes": grads},
              "probe_state_bytes": total_state_bytes(opt)}  # what smmf-plan probe --dist reports
    torch.manual_seed(0)
    ddp = torch.nn.parallel.DistributedDataParallel(mlp())
    opt = build(opt_id, ddp.parameters())
    for _ in range(3):
        opt.zero_grad()
        with ddp.no_sync():
            for _ in range(ACCUM - 1):
                ddp(x).square().mean().backward()
        ddp(x).square().mean().backward()
        opt.step()
    logged = ddp._get_ddp_logging_data()
    result["ddp"] = {"state_bytes": state_bytes(opt), "bucket_sizes": logged.get("bucket_sizes")}
    with open(f"{path}.{rank}", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


def gloo(opt_id: str, world: int = 2) -> list[dict]:
    import socket
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rank")
        mp.spawn(_gloo_rank, args=(world, port, opt_id, path), nprocs=world, join=True)
        out = []
        for r in range(world):
            with open(f"{path}.{r}") as f:
                out.append(json.load(f))
    return out


def deepspeed_rank() -> dict:
    """This rank's ZeRO-1/2/3 figures (bf16, AdamW as the client optimizer)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch.distributed as dist

    dist.init_process_group("gloo")
    import deepspeed

    rank = dist.get_rank()
    out = {"rank": rank, "world": dist.get_world_size()}
    for stage in (1, 2, 3):
        torch.manual_seed(0)
        model = mlp()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        cfg = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
               "zero_optimization": {"stage": stage}, "bf16": {"enabled": True},
               "zero_allow_untested_optimizer": True}
        engine, zopt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
        for _ in range(2):
            x = torch.randn(2, DIMS[0], dtype=torch.bfloat16)
            engine.backward(engine(x).float().sum())
            if stage < 3:
                grads = sum(t.numel() * t.element_size()
                            for ts in zopt.averaged_gradients.values() for t in ts)
            else:
                buf = zopt.grad_partitions_flat_buffer
                grads = buf.numel() * buf.element_size()
            engine.step()
        fig = {"state_bytes": state_bytes(zopt.optimizer), "grad_bytes": grads}
        if stage < 3:
            fig["bit16_bytes"] = sum(t.numel() * t.element_size() for t in zopt.bit16_groups_flat)
            fig["master_bytes"] = sum(t.numel() * t.element_size()
                                      for t in zopt.single_partition_of_fp32_groups)
        else:
            fig["bit16_bytes"] = sum(t.numel() * t.element_size()
                                     for t in zopt.fp16_partitioned_groups_flat)
            fig["persistent_bytes"] = sum(p.numel() * p.element_size()
                                          for p in model.parameters() if p.ds_persist)
            fig["master_bytes"] = sum(t.numel() * t.element_size()
                                      for t in zopt.fp32_partitioned_groups_flat)
            fig["reduce_bucket_bytes"] = sum(b.buffer.numel() * b.buffer.element_size()
                                             for b in zopt.ipg_buckets.values()
                                             if b.buffer is not None)
        out[f"zero{stage}"] = fig
        engine.destroy()
    for stage in (1, 2, 3):
        out[f"zero{stage}-offload"] = offload_figures(deepspeed, stage)
    dist.destroy_process_group()
    return out


def offload_figures(deepspeed, stage: int) -> dict:
    """ZeRO-Offload's buffers on this rank (``offload_optimizer: cpu``, :data:`ACCUM` micro-steps;
    on the CPU accelerator nothing is pinned, so each is its own size)."""
    def nbytes(t) -> int:
        return t.numel() * t.element_size()

    torch.manual_seed(0)
    model = mlp()
    cfg = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": ACCUM,
           "zero_optimization": {"stage": stage, "offload_optimizer": {"device": "cpu"}},
           "bf16": {"enabled": True}, "zero_allow_untested_optimizer": True,
           "zero_force_ds_cpu_optimizer": False}
    engine, zopt, _, _ = deepspeed.initialize(
        model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), config=cfg)
    for _ in range(ACCUM):
        x = torch.randn(2, DIMS[0], dtype=torch.bfloat16)
        engine.backward(engine(x).float().sum())
        engine.step()
    if stage < 3:
        masters = zopt.single_partition_of_fp32_groups
        host = sum(nbytes(t) for t in zopt.param_buffer_of_bit16_for_cpu_offload_groups)
        host += nbytes(zopt.temp_grad_buffer_for_cpu_offload)
        fig = {"touched_bytes": sum(nbytes(t) for t in zopt.accumulated_grads_in_cpu.values()),
               "staging_bytes": nbytes(zopt.temp_grad_buffer_for_gpu_offload),
               "device_grad_bytes": 0 if zopt.grads_in_partition is None
               else nbytes(zopt.grads_in_partition)}
    else:
        masters = zopt.fp32_partitioned_groups_flat
        host = nbytes(zopt.grad_partitions_flat_buffer)
        fig = {}
    host += sum(nbytes(t) + nbytes(t.grad) for t in masters)
    fig.update(state_bytes=state_bytes(zopt.optimizer), host_bytes=host,
               devices={str(t.device) for t in masters} == {"cpu"})
    engine.destroy()
    return fig


if __name__ == "__main__":
    mode = sys.argv[1]
    # DeepSpeed prints to stdout too: the result is the one line starting with RESULT
    if mode == "fake":
        print("RESULT " + json.dumps({"specs": specs_of(mlp()), "optimizers": fake_all(
            sys.argv[2].split(","), [int(w) for w in sys.argv[3].split(",")])}))
    elif mode == "gloo":
        print("RESULT " + json.dumps({"specs": specs_of(mlp()), "accum": ACCUM,
                                      "ranks": gloo(sys.argv[2])}))
    elif mode == "deepspeed":
        print("RESULT " + json.dumps({"specs": specs_of(mlp()), "accum": ACCUM, **deepspeed_rank()}))
    else:
        raise SystemExit(f"unknown mode {mode}")
