"""Parent side of ``smmf-plan probe MODEL --dist fsdp2|ddp --world N``: one ``torch.distributed.run``
per optimizer (N ranks on this host, gloo on CPU), each rank's measurement beside the plan.

Each run is ``python -m torch.distributed.run --standalone --nproc-per-node N -m
smmf_plan.probe.dist_worker ...`` (:func:`local_command`); :func:`cluster_command` is the same
run for a real cluster (NCCL, ``--nnodes`` and a c10d rendezvous), printed by ``--launcher``.

Predicted per-rank optimizer state: the per-rank planner's (:func:`smmf_plan.dist.plan_ranks`,
FSDP2's dim-0 ``torch.chunk`` shards with each optimizer's ``shard_state`` rule; SMMF: the factors
of the full matrix and the local sign), for the very :class:`~smmf_plan.dist.Sharding` the ranks
run.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from typing import Any, Sequence

from ..dist import Context, plan_ranks
from ..errors import PlanError
from ..model import ModelSpec
from ..report import SCHEMA_VERSION
from ..shapes import ParamSpec
from .dist_worker import SCHEMES
from .inputs import resolve_input
from .runner import _cpu_name, _model_summary


def probe_sharding(dist):
    """The :class:`~smmf_plan.dist.Sharding` a probe runs, from the validated ``--dist`` options
    (``DistOptions``): a world is required and only fsdp2/ddp run here (one-line ``PlanError``)."""
    if dist.scheme not in SCHEMES:
        raise PlanError(f"probe --dist {dist.scheme}: the probe runs {' or '.join(SCHEMES)} "
                        "(DeepSpeed ZeRO is planned by smmf-plan plan --dist, not probed)")
    if dist.world is None:
        raise PlanError(f"probe --dist {dist.scheme} needs --world N: the number of ranks to launch")
    return dist.sharding()


def rank_state_bytes(params: Sequence[ParamSpec], layout, sharding) -> list[int]:
    """Each rank's planned optimizer state bytes, rank 0 first."""
    out = [0] * sharding.world
    for cls in plan_ranks(Context(tuple(params)), sharding, layout):
        for first, last in cls.ranges:
            for r in range(first, last + 1):
                out[r] = cls.figures.state_bytes
    return out


def worker_args(model: str, optimizer: str, sharding, steps: int, batch_size: int,
                input_size, seq_len, num_classes, task, lr, threads, device_type: str) -> list[str]:
    """``-m smmf_plan.probe.dist_worker ...``: what every rank runs."""
    args = ["-m", "smmf_plan.probe.dist_worker", "--model", model, "--optimizer", optimizer,
            "--dist", sharding.scheme, "--steps", str(steps), "--batch-size", str(batch_size)]
    if sharding.scheme == "fsdp2" and sharding.shard_group is not None:
        args += ["--shard-group", str(sharding.shard_group)]
    if sharding.scheme == "fsdp2" and not sharding.reshard_after_forward:
        args += ["--no-reshard-after-forward"]
    if sharding.scheme == "ddp":
        args += ["--bucket-cap-mb", f"{sharding.bucket_cap_mb:g}"]
    if input_size:
        args += ["--input-size", *map(str, input_size)]
    for flag, value in (("--seq-len", seq_len), ("--num-classes", num_classes), ("--task", task),
                        ("--lr", lr), ("--threads", threads)):
        if value is not None:
            args += [flag, str(value)]
    if device_type != "cpu":
        args += ["--device-type", device_type]
    return args


def local_command(world: int, worker: list[str], out: str) -> list[str]:
    """``torch.distributed.run`` on this host: ``world`` ranks, a free port found by c10d."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            str(world), *worker, "--out", out]


def cluster_command(sharding, worker: list[str]) -> str:
    """The same run on a cluster: ``torchrun`` on each of the sharding's nodes, one rank per GPU,
    NCCL."""
    per_node = sharding.world // sharding.nodes
    parts = ["torchrun", f"--nnodes={sharding.nodes}", f"--nproc-per-node={per_node}",
             "--rdzv-backend=c10d", "--rdzv-endpoint=$MASTER_ADDR:29500", "--rdzv-id=smmf-probe",
             *worker, "--device-type", "cuda", "--backend", "nccl", "--out", "probe-ranks"]
    return " ".join(p if p.startswith("--rdzv-endpoint") else shlex.quote(p) for p in parts)


def run_dist_probe(model: str, spec: ModelSpec, layouts: Sequence, sharding, *,
                   steps: int, batch_size: int, input_size=None, seq_len=None, num_classes=None,
                   task=None, lr: float | None = None, threads: int | None = None,
                   timeout_s: float | None = None, progress: bool = False) -> dict[str, Any]:
    """Probe every layout on ``world`` local ranks; the JSON document (README, probe schema 2)."""
    world = sharding.world
    inp = resolve_input(spec, batch_size=batch_size, input_size=input_size, seq_len=seq_len)
    optimizers: dict[str, Any] = {}
    versions = set()
    for layout in layouts:
        worker = worker_args(model, layout.id, sharding, steps, batch_size, inp.get("input_size"),
                             inp.get("seq_len"), num_classes, task, lr, threads, "cpu")
        with tempfile.TemporaryDirectory(prefix="smmf-plan-probe-") as out:
            cmd = local_command(world, worker, out)
            if progress:
                print(f"probe {layout.id}: {world} ranks …", file=sys.stderr)
            ranks, error = _launch(cmd, out, world, timeout_s)
        predicted = rank_state_bytes(spec.params, layout, sharding)
        optimizers[layout.id] = _entry(ranks, predicted, error)
        versions.update(r.get("torch") for r in ranks if r.get("torch"))
    return {
        "schema_version": SCHEMA_VERSION,
        "model": _model_summary(spec),
        "input": {**inp, "per_rank": True},
        "settings": {"steps": steps, "device_type": "cpu", "dist": sharding.scheme, "world": world,
                     "shard_group": sharding.shards,
                     "backend": "gloo",
                     "launcher": f"python -m torch.distributed.run --standalone --nproc-per-node {world}",
                     "timing": "median over steps 2..N (step 1 is a warm-up and excluded)"},
        "host": {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch": sorted(versions)[0] if versions else None},
        "assumptions": [
            "every rank trains its own synthetic micro-batch of --batch-size samples (seed + rank)",
            "fsdp2: fully_shard on every module that owns parameters, then on the root; fp32",
            "predicted: optimizer state per rank only (FSDP2's dim-0 torch.chunk rule)",
        ],
        "optimizers": optimizers,
    }


def _launch(cmd: list[str], out: str, world: int, timeout_s: float | None) -> tuple[list[dict], str | None]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, timeout=timeout_s)
        rc, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired:
        rc, stderr = "timeout", ""
    ranks = []
    for r in range(world):
        path = os.path.join(out, f"rank{r}.json")
        if os.path.exists(path):
            with open(path) as f:
                ranks.append(json.load(f))
        else:
            ranks.append({"rank": r, "status": "error", "error": "no result (the rank did not finish)"})
    if rc == 0:
        return ranks, None
    first = next((r["error"] for r in ranks if r.get("error") and r["status"] == "error"
                  and not r["error"].startswith("no result")), None)
    tail = [ln for ln in stderr.splitlines() if ln.strip()][-1:] if stderr else []
    why = "timed out" if rc == "timeout" else f"torch.distributed.run exited with code {rc}"
    return ranks, f"{why}: {first or (tail[0][:300] if tail else 'no detail')}"


def _entry(ranks: list[dict], predicted: list[int], error: str | None) -> dict:
    rows = []
    for r, (res, pred) in enumerate(zip(ranks, predicted)):
        m = res.get("measured")
        state = m.get("state_bytes") if m else None
        rows.append({"rank": r, "status": res.get("status", "error"),
                     "predicted": {"state_bytes": pred},
                     "measured": m,
                     "error_pct": {"state_bytes": None if state is None or not pred
                                   else 100.0 * (state - pred) / pred}})
    ok = error is None and all(row["status"] == "ok" for row in rows)
    measured = [row["measured"] for row in rows if row["measured"]]
    largest = max(range(len(predicted)), key=lambda r: predicted[r])
    entry = {
        "status": "ok" if ok else "error",
        "verdict": "ran" if ok else f"error: {error}",
        "lr": next((res.get("lr") for res in ranks if res.get("lr") is not None), None),
        # the top-level figures describe the largest rank, as in the per-rank plans
        "predicted": {"state_bytes": predicted[largest]},
        "measured": None if not ok else {
            "state_bytes": max(m["state_bytes"] for m in measured),
            "peak_bytes": max((m["peak_bytes"] for m in measured if m.get("peak_bytes") is not None),
                              default=None),
            "losses": measured[0]["losses"],
        },
        "ranks": rows,
    }
    if not ok:
        entry["error"] = error or "a rank failed"
    return entry
