"""Parent side of ``smmf-plan probe MODEL --dist fsdp2|ddp --world N``: one ``torch.distributed.run``
per optimizer (N ranks on this host, gloo on CPU), each rank's measurement beside the plan.

Each run is ``python -m torch.distributed.run --standalone --nproc-per-node N -m
smmf_plan.probe.dist_worker ...`` (:func:`local_command`); :func:`cluster_command` is the same
run for a real cluster (NCCL, ``--nnodes`` and a c10d rendezvous), printed by ``--launcher``.

Predicted, per rank: the per-rank plan (:func:`smmf_plan.dist.estimate`, what ``plan --dist``
prints) for the very :class:`~smmf_plan.dist.Sharding` the ranks run, at their micro-batch, under
the allocator model of the ranks' malloc (:func:`rank_allocator`): the optimizer state (FSDP2's
dim-0 ``torch.chunk`` shards with each optimizer's ``shard_state`` rule; SMMF: the factors of the
full matrix and the local sign), exact; and the step peak, the rank's planned total minus the
runtime already present at the worker's baseline (:data:`~.runner.BASELINE_PARTS`: PyTorch and the
model library; the baseline is taken after ``init_process_group``, the optimizer and modeling
imports and a warm-up op, so the process group's threads and buffers are in it too).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from typing import Any, Mapping, Sequence

from ..dist import estimate as dist_estimate
from ..errors import PlanError
from ..model import ModelSpec
from ..report import SCHEMA_VERSION
from .dist_worker import SCHEMES
from .inputs import resolve_input
from .runner import BASELINE_PARTS, DETERMINISTIC_ENV, PROBE_RECIPE, _cpu_name, _model_summary, _pct


def probe_sharding(dist):
    """The :class:`~smmf_plan.dist.Sharding` a probe runs, from the validated ``--dist`` options
    (``DistOptions``): a world is required and only fsdp2/ddp run here (one-line ``PlanError``)."""
    if dist.scheme not in SCHEMES:
        raise PlanError(f"probe --dist {dist.scheme}: the probe runs {' or '.join(SCHEMES)} "
                        "(DeepSpeed ZeRO is planned by smmf-plan plan --dist, not probed)")
    if dist.world is None:
        raise PlanError(f"probe --dist {dist.scheme} needs --world N: the number of ranks to launch")
    return dist.sharding()


def rank_allocator(env: Mapping[str, str] | None = None) -> str:
    """The allocator model of the ranks, which inherit this environment: ``glibc-mmap`` where it
    sets ``MALLOC_MMAP_THRESHOLD_=131072``, else ``glibc`` (the default malloc)."""
    env = os.environ if env is None else env
    return "glibc-mmap" if env.get("MALLOC_MMAP_THRESHOLD_") == DETERMINISTIC_ENV[
        "MALLOC_MMAP_THRESHOLD_"] else "glibc"


def rank_plans(spec: ModelSpec, layouts: Sequence, sharding, inp: dict, allocator: str
               ) -> tuple[dict[str, list[dict]], list[str]]:
    """Per optimizer, each rank's prediction (rank 0 first): ``state_bytes`` (logical, exact),
    ``breakdown`` and ``total_bytes`` (the rank's planned step) and ``peak_bytes`` (the total minus
    the runtime present at the baseline; ``None`` where the activations are not known); and the
    plan's assumptions."""
    est = dist_estimate(spec, list(layouts), sharding, batch_size=inp["batch_size"],
                   recipe=PROBE_RECIPE, input_size=inp.get("input_size"),
                   seq_len=inp.get("seq_len"), allocator=allocator)
    before = sum(v for k, v in est.runtime_parts.items() if k in BASELINE_PARTS)
    out: dict[str, list[dict]] = {}
    for oid in est.classes:
        rows: list[dict] = [{}] * sharding.world
        for step in est.rank_steps(oid):
            row = {"state_bytes": step.state_bytes, "breakdown": step.breakdown.to_dict(),
                   "total_bytes": step.total_bytes,
                   "peak_bytes": step.total_bytes - before if est.complete else None}
            for first, last in step.ranges:
                for r in range(first, last + 1):
                    rows[r] = row
        out[oid] = rows
    return out, est.assumptions


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
    allocator = rank_allocator()
    planned, plan_assumptions = rank_plans(spec, layouts, sharding, inp, allocator)
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
        none = {"state_bytes": None, "breakdown": None, "total_bytes": None, "peak_bytes": None}
        optimizers[layout.id] = _entry(ranks, planned.get(layout.id, [none] * world), error)
        versions.update(r.get("torch") for r in ranks if r.get("torch"))
    return {
        "schema_version": SCHEMA_VERSION,
        "model": _model_summary(spec),
        "input": {**inp, "per_rank": True},
        "settings": {"steps": steps, "device_type": "cpu", "dist": sharding.scheme, "world": world,
                     "shard_group": sharding.shards,
                     "backend": "gloo", "allocator": allocator,
                     "launcher": f"python -m torch.distributed.run --standalone --nproc-per-node {world}",
                     "timing": "median over steps 2..N (step 1 is a warm-up and excluded)"},
        "host": {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch": sorted(versions)[0] if versions else None},
        "assumptions": [
            "every rank trains its own synthetic micro-batch of --batch-size samples (seed + rank)",
            "fsdp2: fully_shard on every module that owns parameters, then on the root; fp32",
            f"predicted: each rank's plan (smmf-plan plan --dist {sharding.scheme} --world "
            f"{world}) under the {allocator} allocator model; peak_bytes = its total minus the "
            "PyTorch and model-library imports, which precede the ranks' baseline",
            *plan_assumptions,
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


def _errors(measured: dict | None, predicted: dict) -> dict:
    return {k: _pct((measured or {}).get(k), predicted.get(k)) for k in ("state_bytes", "peak_bytes")}


def _entry(ranks: list[dict], predicted: list[dict], error: str | None) -> dict:
    rows = []
    for r, (res, pred) in enumerate(zip(ranks, predicted)):
        m = res.get("measured")
        rows.append({"rank": r, "status": res.get("status", "error"), "predicted": pred,
                     "measured": m, "error_pct": _errors(m, pred)})
    ok = error is None and all(row["status"] == "ok" for row in rows)
    measured = [row["measured"] for row in rows if row["measured"]]
    # the top-level figures describe the largest rank, as in the per-rank plans
    largest = max(range(len(predicted)), key=lambda r: (predicted[r]["total_bytes"] or 0, -r))
    top = {k: predicted[largest][k] for k in ("state_bytes", "peak_bytes")}
    m_top = None if not ok else {
        "state_bytes": max(m["state_bytes"] for m in measured),
        "peak_bytes": max((m["peak_bytes"] for m in measured if m.get("peak_bytes") is not None),
                          default=None),
        "losses": measured[0]["losses"],
    }
    entry = {
        "status": "ok" if ok else "error",
        "verdict": "ran" if ok else f"error: {error}",
        "lr": next((res.get("lr") for res in ranks if res.get("lr") is not None), None),
        "predicted": top, "measured": m_top, "error_pct": _errors(m_top, top),
        "ranks": rows,
    }
    if not ok:
        entry["error"] = error or "a rank failed"
    return entry
