"""One rank of the distributed probe, started by ``torch.distributed.run`` (torchrun)::

    python -m torch.distributed.run --standalone --nproc-per-node 2 \\
        -m smmf_plan.probe.dist_worker --model resnet18 --optimizer smmf --dist fsdp2 --out DIR

Every rank resolves the model itself (from the shape cache or architecture code: no job file to
copy between hosts), builds it with the same seed, wraps it (``fsdp2``: ``fully_shard`` on every
module that owns parameters, then on the root; ``ddp``: ``DistributedDataParallel``), trains
``--steps`` steps on its own synthetic micro-batch (seed + rank) and writes ``DIR/rank{R}.json``:

- ``state_bytes``: bytes of this rank's optimizer state (DTensor state counted by its local
  shard, :func:`smmf_plan.measure.total_state_bytes`), exact;
- ``peak_bytes``: CPU — peak RSS growth over the post-import baseline across model creation,
  wrapping and every step (:mod:`.rss`); CUDA — ``max_memory_allocated`` growth;
- ``step_ms`` / ``optimizer_step_ms``: medians over steps 2..N (step 1 is a warm-up);
- ``losses``: each step's loss averaged over the ranks (an all-reduce outside the timed step);
- ``param_bytes``: bytes of this rank's parameters (its shards under FSDP2).

The backend is ``gloo`` on CPU and ``nccl`` on CUDA unless ``--backend`` says otherwise; on CUDA
each rank takes the device ``LOCAL_RANK``. Nothing is printed on stdout but errors (stderr).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from typing import Any

from ..atomic import write_text_atomic
from ..measure import total_state_bytes
from ..optimizers import parse
from ..options import ModelOptions
from ..sources import build_module
from . import rss
from .inputs import compute_loss, input_spec, make_batch
from .job import default_lr
from .worker import _warm_up

SCHEMES = ("fsdp2", "ddp")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m smmf_plan.probe.dist_worker",
                                 description="one rank of smmf-plan probe --dist (run it under torchrun)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--optimizer", required=True, help="one optimizer id (with variants)")
    ap.add_argument("--dist", choices=SCHEMES, default="fsdp2")
    ap.add_argument("--shard-group", type=int, default=None,
                    help="fsdp2: ranks each parameter is sharded across (HSDP below the world)")
    ap.add_argument("--no-reshard-after-forward", dest="reshard_after_forward",
                    action="store_false", help="fsdp2: keep gathered parameters until backward")
    ap.add_argument("--bucket-cap-mb", type=float, default=25.0, help="ddp: bucket_cap_mb")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=1, help="each rank's micro-batch")
    ap.add_argument("--input-size", type=int, nargs="*", default=None)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--num-classes", type=int, default=None)
    ap.add_argument("--task", default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device-type", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--backend", default=None, help="default: gloo on cpu, nccl on cuda")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads per rank (default: cores / local ranks)")
    ap.add_argument("--out", required=True, help="folder for rank{R}.json")
    return ap.parse_args(argv)


def _wrap(model, args: argparse.Namespace, device, world: int):
    if args.dist == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       bucket_cap_mb=args.bucket_cap_mb)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    group = args.shard_group or world
    mesh = (init_device_mesh(device.type, (world,)) if group == world else
            init_device_mesh(device.type, (world // group, group), mesh_dim_names=("replicate", "shard")))
    owners = [m for m in model.modules() if m is not model and any(True for _ in m.parameters(recurse=False))]
    for module in reversed(owners):  # children before parents
        fully_shard(module, mesh=mesh, reshard_after_forward=args.reshard_after_forward)
    fully_shard(model, mesh=mesh)
    return model


#: what the rank was doing (for the error it reports)
PHASE = ["start"]


def run_rank(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.distributed as dist


    cuda = args.device_type == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    dist.init_process_group(args.backend or ("nccl" if cuda else "gloo"))
    rank, world = dist.get_rank(), dist.get_world_size()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // local_world))
    try:
        layout = parse(args.optimizer)
        lr = args.lr if args.lr is not None else default_lr(args.optimizer)
        spec = ModelOptions(model=args.model, num_classes=args.num_classes, task=args.task).load()
        in_spec = input_spec(spec, batch_size=args.batch_size, input_size=args.input_size,
                             seq_len=args.seq_len)
        layout.build([torch.nn.Parameter(torch.zeros(1))], lr=lr)  # import it before the baseline
        build_module(spec, device="meta")  # and the modeling code
        _warm_up(torch, device)
        gc.collect()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        base_rss = rss.rss_bytes()
        window = rss.PeakWindow() if not cuda and rss.available() else None

        PHASE[0] = "building the model"
        torch.manual_seed(args.seed)  # the same initial weights on every rank
        model = build_module(spec, device=device.type)
        model.train()
        PHASE[0] = f"wrapping the model for {args.dist}"
        model = _wrap(model, args, device, world)
        params = [p for p in model.parameters() if p.requires_grad]
        PHASE[0] = "building the optimizer"
        optimizer = layout.build(params, lr=lr)
        torch.manual_seed(args.seed + 1 + rank)  # each rank its own micro-batch
        batch = make_batch(in_spec, device)

        losses, fb_ms, opt_ms, peaks = [], [], [], []
        for k in range(1, args.steps + 1):
            if cuda:
                torch.cuda.synchronize()
            PHASE[0] = f"forward/backward of step {k}"
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = compute_loss(model, batch)
            loss.backward()
            if cuda:
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            PHASE[0] = f"optimizer.step() of step {k}"
            optimizer.step()
            if cuda:
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            seen = loss.detach().float().reshape(1).clone()
            del loss
            dist.all_reduce(seen)
            losses.append(seen.item() / world)
            if cuda:
                peaks.append(int(torch.cuda.max_memory_allocated() - base))
            elif window is not None:
                peaks.append(int(window.segment_peak() - base_rss))
            if k > 1:
                fb_ms.append((t1 - t0) * 1e3)
                opt_ms.append((t2 - t1) * 1e3)
        measured = {
            "state_bytes": int(total_state_bytes(optimizer)),
            "param_bytes": int(sum(_local(p).numel() * p.element_size() for p in model.parameters())),
            "peak_bytes": max(peaks) if peaks else None,
            "step_peak_bytes": peaks,
            "step_ms": statistics.median(fb_ms) if fb_ms else None,
            "optimizer_step_ms": statistics.median(opt_ms) if opt_ms else None,
            "losses": losses,
            "runtime_bytes": base_rss,
            "num_threads": torch.get_num_threads(),
            "method": "cuda max_memory_allocated growth" if cuda else
                      "peak RSS growth over the post-import baseline (VmHWM after /proc/self/clear_refs)",
        }
        result = {"rank": rank, "world": world, "status": "ok", "lr": lr, "measured": measured,
                  "torch": torch.__version__, "backend": dist.get_backend()}
        dist.barrier()
        return result
    finally:
        dist.destroy_process_group()


def _local(p):
    return p.to_local() if hasattr(p, "to_local") else p


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    try:
        result = run_rank(args)
    except Exception as e:  # noqa: BLE001 - written down for the parent, then re-raised
        import traceback

        text = str(e).splitlines()[0] if str(e) else ""
        if not text:  # a bare assert: say where it fired
            frame = traceback.extract_tb(e.__traceback__)[-1]
            text = f"at {os.path.basename(frame.filename)}:{frame.lineno} ({frame.name})"
        msg = f"{type(e).__name__} in {PHASE[0]}: {text}"
        result = {"rank": rank, "status": "error", "error": msg[:500]}
        write_text_atomic(os.path.join(args.out, f"rank{rank}.json"), json.dumps(result))
        raise
    write_text_atomic(os.path.join(args.out, f"rank{rank}.json"), json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
