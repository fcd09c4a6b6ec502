"""Parent side of the probe: one fresh subprocess per optimizer, a progress bar, and the document
that sets measured beside predicted.

Each optimizer runs in its own ``python -m smmf_plan.probe.worker`` so that peaks do not mix (a
process never gives all freed memory back to the OS) and an out-of-memory in one run cannot take
the others down. The child reports progress as JSON lines; if it dies (e.g. ``SIGKILL`` from the
kernel's OOM killer) the last step it reported tells where.

Document (``schema_version`` 2, :data:`smmf_plan.report.SCHEMA_VERSION`)::

    {"schema_version": 2,
     "model": {"name", "source", "library", "architecture", "task", "num_params", ...},
     "input": {"task", "batch_size", "input_size" | "seq_len"},
     "settings": {"steps", "device_type", "cap_bytes", "cap_method", "device", "allocator",
                  "malloc_env", "num_threads", "timing"},
     "host": {"cpu", "cores", "python", "torch"},
     "assumptions": [the estimate's stated assumptions],
     "optimizers": {ID: {
         "predicted": {the estimate's step entry: "state_bytes" (exact logical bytes, what is
                       measured), "breakdown": {part: bytes} (smmf_plan.breakdown.PARTS, state
                       as allocated), "total_bytes" (their sum); and "peak_bytes" = total_bytes
                       minus the runtime present before the baseline, the figure the measured
                       peak is compared with, and "allocator"},
         "measured": {"state_bytes", "peak_bytes", "step_ms", "optimizer_step_ms", "losses",
                      "runtime_bytes", "total_bytes" = runtime_bytes + peak_bytes, ...},
         "error_pct": {"state_bytes", "peak_bytes", "total_bytes"}: 100 * (measured - predicted)
                      / predicted, null where either side is unknown,
         "status": "ok" | "oom" | "error", "at_step": k (oom/error), "verdict": one line,
         "error": message (oom/error), "lr": learning rate used}}}
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from typing import Any, Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import PlanError
from ..fit import check_batch_size
from ..memory import estimate
from ..model import ModelSpec
from ..plan import plan_state
from ..recipe import Recipe
from ..report import SCHEMA_VERSION
from ..report.console import console
from .inputs import resolve_input
from .job import ProbeJob
from .limits import killed_by_oom

#: the environment the estimate's CPU figures assume (see :mod:`smmf_plan.peak`).
DETERMINISTIC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _pct(measured, predicted) -> float | None:
    if measured is None or not predicted:
        return None
    return 100.0 * (measured - predicted) / predicted


#: runtime parts of the estimate that already exist when the probe takes its baseline (the
#: interpreter with torch and the model library imported; on CUDA the cuBLAS workspaces, which the
#: warm-up op allocates): the measured peak excludes them, so the predicted peak does too.
BASELINE_PARTS = ("pytorch", "library", "cublas_workspace")
#: what the probe's worker trains: the architecture as ``build_module`` builds it, in float32
#: (``from_config`` / ``timm.create_model``), whatever dtype a checkpoint or config states; the
#: command line loads and the prediction plans with this recipe, so both describe that run.
PROBE_RECIPE = Recipe(dtype="float32")


def probe_allocator(device_type: str, deterministic_malloc: bool = True) -> str:
    """The allocator model a probe child runs under: ``cuda`` on a GPU; on CPU ``glibc-mmap``
    (the child gets ``MALLOC_MMAP_THRESHOLD_=131072``) or ``glibc`` (the default malloc)."""
    if device_type == "cuda":
        return "cuda"
    return "glibc-mmap" if deterministic_malloc else "glibc"


def predict(spec: ModelSpec, layouts: Sequence, inp: dict, device_type: str,
            allocator: str | None = None) -> dict[str, dict]:
    """The plan for each layout, as the dict the probe sets beside the measurement.

    ``state_bytes`` is the planner's exact logical figure (what ``optimizer.state`` holds, the
    same quantity the probe measures); ``breakdown`` the estimate's parts (its ``state_allocated``
    is the allocator-rounded state) and ``total_bytes`` their sum; ``peak_bytes`` =
    ``total_bytes`` minus the runtime parts present before the baseline (:data:`BASELINE_PARTS`)."""
    allocator = allocator or probe_allocator(device_type)
    est = estimate(spec, list(layouts), batch_size=inp["batch_size"], recipe=PROBE_RECIPE,
                   input_size=inp.get("input_size"), seq_len=inp.get("seq_len"), allocator=allocator)
    before = sum(v for k, v in est.runtime_parts.items() if k in BASELINE_PARTS)
    out: dict[str, dict] = {}
    for oid, step in est.steps().items():
        d: dict[str, Any] = step.to_dict()
        d["peak_bytes"] = step.total_bytes - before
        d["allocator"] = allocator
        out[oid] = d
    return out, est.assumptions


def _state_only(spec: ModelSpec, layouts) -> dict[str, dict]:
    return {lay.id: {"state_bytes": plan_state(spec.params, lay.bind(spec.facts)).state_bytes,
                     "breakdown": None, "total_bytes": None, "peak_bytes": None} for lay in layouts}


def _verdict(status: str, at_step: int | None, cap: bool, error: str | None) -> str:
    if status == "ok":
        return "fits" if cap else "ran"
    if status == "oom":
        where = f"at step {at_step}" if at_step else "while building the model and optimizer"
        return f"does not fit (OOM {where})"
    return f"error: {error}" if error else "error"


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_job_subprocess(job: ProbeJob, on_event=None, timeout_s: float | None = None,
                       env: dict[str, str] | None = None) -> dict:
    """Run ``job`` in a fresh ``python -m smmf_plan.probe.worker`` and return its result; a child
    that dies or hangs becomes a result with status ``"oom"`` (killed by ``SIGKILL``, or by any
    signal under a cap) or ``"error"``."""
    on_event = on_event or (lambda ev: None)
    last_step, phase, result = 0, "start", None
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "smmf_plan.probe.worker"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                text=True, env={**_worker_env(), **(env or {})})
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(job.to_dict()))
            proc.stdin.close()
            for line in proc.stdout:
                try:
                    ev = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if ev.get("event") == "step":
                    last_step = ev["step"]
                elif ev.get("event") == "phase":
                    phase = ev["phase"]
                elif ev.get("event") == "result":
                    result = ev
                on_event(ev)
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = "timeout"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err.seek(0)
        tail = [ln for ln in err.read().splitlines() if ln.strip()][-3:]
    if result is not None:
        result.pop("event", None)
        return result
    at = last_step + 1 if phase == "train" else 0
    if rc == "timeout":
        return {"optimizer": job.optimizer, "status": "error", "at_step": at,
                "error": f"timed out after {timeout_s:g} s"}
    signalled = isinstance(rc, int) and rc < 0
    oom = killed_by_oom(rc) or (signalled and job.cap_bytes is not None)
    why = f"killed by signal {-rc}" if signalled else f"exited with code {rc}"
    detail = f"; stderr: {tail[-1][:300]}" if tail else ""
    return {"optimizer": job.optimizer, "status": "oom" if oom else "error", "at_step": at,
            "error": f"worker {why}{detail}"}


def run_probe(spec: ModelSpec, layouts: Sequence, *, steps: int = 10, batch_size: int = 1,
              input_size: Sequence[int] | None = None, seq_len: int | None = None,
              device_type: str = "cpu", cap_bytes: int | None = None, device=None,
              lr: float | None = None, progress: bool = True, timeout_s: float | None = None,
              seed: int = 0, num_threads: int | None = None,
              deterministic_malloc: bool = True) -> dict[str, Any]:
    """Probe ``spec`` with every layout, each in a fresh subprocess; returns the JSON document
    described in the module docstring. ``device`` (a :class:`~smmf_plan.devices.Device`) sets
    the cap to its usable bytes unless ``cap_bytes`` is given. ``deterministic_malloc`` runs the
    CPU children with ``MALLOC_MMAP_THRESHOLD_=131072`` and compares them with the ``glibc-mmap``
    estimate (RSS then equals the tensor-level peak plus a few tens of MiB, run to run); without
    it the children run glibc's default, which keeps freed heap blocks resident, and the
    comparison is with the ``glibc`` estimate."""
    if steps < 1:
        raise PlanError(f"--steps must be at least 1, got {steps}")
    batch_size = check_batch_size(batch_size)
    if device_type not in ("cpu", "cuda"):
        raise PlanError(f"--device-type {device_type!r}: use cpu or cuda")
    if lr is not None and not lr > 0:
        raise PlanError(f"--lr must be positive, got {lr}")
    if device is not None and cap_bytes is None:
        cap_bytes = int(device.usable_bytes)
    inp = resolve_input(spec, batch_size=batch_size, input_size=input_size, seq_len=seq_len)
    try:
        predicted, assumptions = predict(spec, layouts, inp, device_type,
                                         probe_allocator(device_type, deterministic_malloc))
    except Exception as e:  # noqa: BLE001 - the measurement is still worth having
        predicted = _state_only(spec, layouts)
        assumptions = [f"end-to-end estimate failed ({type(e).__name__}: {e}); state only"]
    env = dict(DETERMINISTIC_ENV) if deterministic_malloc and device_type == "cpu" else {}
    model_dict = spec.to_dict()
    results: dict[str, dict] = {}
    jobs = [ProbeJob(model=model_dict, optimizer=lay.id, steps=steps, batch_size=batch_size,
                     input_size=inp.get("input_size"), seq_len=inp.get("seq_len"),
                     device_type=device_type, cap_bytes=cap_bytes, lr=lr, seed=seed,
                     num_threads=num_threads)
            for lay in layouts]
    with _progress(progress) as bar:
        for job in jobs:
            task = bar.add_task(job.optimizer, total=steps, note="starting") if bar else None

            def on_event(ev, task=task):
                if bar is None:
                    return
                if ev.get("event") == "phase":
                    bar.update(task, note=ev["phase"])
                elif ev.get("event") == "step":
                    bar.update(task, completed=ev["step"], note=f"loss {ev['loss']:.4g}")

            res = run_job_subprocess(job, on_event, timeout_s, env)
            results[job.optimizer] = res
            if bar is not None:
                bar.update(task, note=res["status"] if res["status"] != "ok" else "done")
    host = {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": next((r.get("torch") for r in results.values() if r.get("torch")), None)}
    doc = {
        "schema_version": SCHEMA_VERSION,
        "model": _model_summary(spec),
        "input": inp,
        "settings": {"steps": steps, "device_type": device_type,
                     "cap_bytes": cap_bytes,
                     "cap_method": None if cap_bytes is None else
                     ("cuda_memory_fraction" if device_type == "cuda" else "rlimit_as"),
                     "device": device.reference() if device is not None else None,
                     "allocator": probe_allocator(device_type, deterministic_malloc),
                     "malloc_env": env,
                     "num_threads": num_threads,
                     "timing": "median over steps 2..N (step 1 is a warm-up and excluded)"},
        "host": host,
        "assumptions": assumptions,
        "optimizers": {job.optimizer: _entry(predicted[job.optimizer], results[job.optimizer],
                                             cap_bytes is not None) for job in jobs},
    }
    return doc


def _model_summary(spec: ModelSpec) -> dict:
    meta = spec.meta or {}
    d = spec.summary()
    d.update({k: meta.get(k) for k in ("library", "architecture", "task")})
    d["param_bytes"] = sum(p.nbytes for p in spec.params)
    return d


def _entry(pred: dict, res: dict, capped: bool) -> dict:
    status = res.get("status", "error")
    m = res.get("measured")
    measured = None
    if m is not None:
        measured = dict(m)
        if m.get("peak_bytes") is not None and m.get("runtime_bytes") is not None:
            measured["total_bytes"] = m["runtime_bytes"] + m["peak_bytes"]
        else:
            measured["total_bytes"] = None
    err = {k: _pct((measured or {}).get(k), pred.get(k)) for k in ("state_bytes", "peak_bytes", "total_bytes")}
    entry = {"predicted": pred, "measured": measured, "error_pct": err, "status": status,
             "verdict": _verdict(status, res.get("at_step"), capped, res.get("error")),
             "lr": res.get("lr")}
    if status != "ok":
        entry["at_step"] = res.get("at_step")
        entry["error"] = res.get("error")
    if res.get("cap"):
        entry["cap"] = res["cap"]
    return entry


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _progress(enabled: bool):
    if not enabled:
        return _NoBar()

    # descriptions and notes are user text (ids, error messages): no markup
    return Progress(TextColumn("{task.description:<22}", markup=False), BarColumn(),
                    MofNCompleteColumn(), TextColumn("steps"), TimeElapsedColumn(),
                    TextColumn("{task.fields[note]}", markup=False), console=console(stderr=True))
