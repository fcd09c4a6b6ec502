"""Benchmark ``optimizer.step()`` of the bundled SMMF against Adam/AdamW and the paper's reference.

Usage::

    python bench/bench_optim.py [--threads 2] [--reps 7] [--models resnet50,gpt2] [--no-write]

For each parameter set (the shapes of timm ``resnet50`` and transformers ``GPT2LMHeadModel(GPT2Config())``,
built on the meta device, then materialised as fp32 tensors with random gradients) it times
``step()`` of: ``torch.optim.Adam(foreach=True)``, ``torch.optim.AdamW(fused=True)``, the reference
SMMF transcribed from the paper's Appendix M (``tests/reference_smmf.py``), and
``smmf_plan.optim.SMMF`` with packed and with bool signs.

* All optimizers share one set of parameters and gradients. After two warm-up steps each, the
  optimizers are stepped round-robin for ``--reps`` rounds (so a burst of load on the machine hits
  all of them alike); the report gives the median wall time per step and ratios to Adam (foreach)
  and to the reference, all from this one run.
* Peak temporary memory of a step is measured in a separate step (tracking slows steps down) with
  a ``TorchDispatchMode`` (:class:`_LiveBytes`) that follows every storage an operator allocates
  until its last tensor is garbage-collected; the peak of the live sum is reported. It counts what
  a step allocates beyond what was live before it (persistent state is allocated during warm-up).
* ``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` (set before torch loads; override it in the
  environment): with torch's spinning default, other load on a small shared machine made every
  row several times slower and noisier.
* The results replace the section between ``<!-- bench:optimizer:start -->`` and
  ``<!-- bench:optimizer:end -->`` of ``reports/benchmarks.md`` (the file is created if missing).
"""

from __future__ import annotations

import os

# Idle OpenMP workers sleep instead of spinning. On a shared 2-core machine torch's default
# (spinning) made every optimizer 3-10x slower and noisier; it applies to all rows alike.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

START, END = "<!-- bench:optimizer:start -->", "<!-- bench:optimizer:end -->"


def model_shapes(name: str) -> list[tuple[int, ...]]:
    if name == "resnet50":
        import timm

        with torch.device("meta"):
            model = timm.create_model("resnet50")
    elif name == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        with torch.device("meta"):
            model = GPT2LMHeadModel(GPT2Config())
    else:
        raise SystemExit(f"unknown model {name!r}: use resnet50 or gpt2")
    return [tuple(p.shape) for p in model.parameters()]  # tied weights appear once


CPP = "SMMF packed, fused C++ (default with a compiler)"


def optimizers(params, with_cpp: bool):
    from reference_smmf import SMMF as ReferenceSMMF
    from smmf_plan.optim import SMMF

    extra = {CPP: SMMF(params, lr=1e-3, sign="packed")} if with_cpp else {}
    return {
        "Adam (foreach)": torch.optim.Adam(params, lr=1e-3, foreach=True),
        "AdamW (fused)": torch.optim.AdamW(params, lr=1e-3, fused=True),
        "SMMF reference (Appendix M)": ReferenceSMMF(params, lr=1e-3),
        "SMMF packed, eager (no compiler)": SMMF(params, lr=1e-3, sign="packed"),
        "SMMF bool, eager (no compiler)": SMMF(params, lr=1e-3, sign="bool"),
    } | extra


class _LiveBytes:
    """A ``TorchDispatchMode`` that tracks the bytes of storages allocated by operators while it is
    active and not yet freed, and their peak.

    An operator output whose storage is not one of its inputs' storages is a new allocation; every
    tensor object that refers to a tracked storage holds a reference, and the storage counts as freed
    when the last such object is garbage-collected (``weakref.finalize``). Storages that existed
    before the mode (parameters, gradients, optimizer state) are never counted, and in-place
    writes into them cost nothing, so this is exactly the *temporary* memory of the step.
    """

    def __init__(self) -> None:
        import weakref

        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self
        self.live: dict[int, list] = {}  # storage ptr -> [nbytes, referencing objects]
        self.current = self.peak = 0
        self._objs: set[int] = set()

        def release(ptr: int, oid: int) -> None:
            tracker._objs.discard(oid)
            entry = tracker.live.get(ptr)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                tracker.current -= entry[0]
                del tracker.live[ptr]

        def hold(t: torch.Tensor, ptr: int) -> None:
            if id(t) in tracker._objs:
                return
            tracker._objs.add(id(t))
            tracker.live[ptr][1] += 1
            weakref.finalize(t, release, ptr, id(t))

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                ins = {x.untyped_storage().data_ptr() for x in tree_flatten((args, kwargs))[0]
                       if isinstance(x, torch.Tensor)}
                for t in tree_flatten(out)[0]:
                    if not isinstance(t, torch.Tensor):
                        continue
                    st = t.untyped_storage()
                    ptr = st.data_ptr()
                    if ptr not in ins and ptr not in tracker.live and st.nbytes() > 0:
                        tracker.live[ptr] = [st.nbytes(), 0]
                        tracker.current += st.nbytes()
                        tracker.peak = max(tracker.peak, tracker.current)
                    if ptr in tracker.live:
                        hold(t, ptr)
                return out

        self.mode = Mode()


def peak_temporary_bytes(opt) -> int:
    import gc

    gc.collect()
    tracker = _LiveBytes()
    with tracker.mode:
        opt.step()
    gc.collect()
    return tracker.peak


def _step(name: str, opt) -> None:
    from smmf_plan.optim import _cpp

    _cpp.enable(name == CPP)
    opt.step()


def bench_model(name: str, reps: int, with_cpp: bool) -> dict:
    shapes = model_shapes(name)
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opts = optimizers(params, with_cpp)
    for k, opt in opts.items():
        _step(k, opt)
        _step(k, opt)
    times = {k: [] for k in opts}
    cpu = {k: [] for k in opts}
    for _ in range(reps):
        for k, opt in opts.items():
            c0, t0 = time.process_time(), time.perf_counter()
            _step(k, opt)
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    peaks = {}
    for k, opt in opts.items():
        from smmf_plan.optim import _cpp

        _cpp.enable(k == CPP)
        # SMMF keeps its row-block scratch buffers between steps: count them as temporaries
        peaks[k] = peak_temporary_bytes(opt) + getattr(opt, "workspace_bytes", lambda: 0)()
    _cpp.enable(False)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"name": name, "numel": sum(p.numel() for p in params), "tensors": len(params),
            "median": med, "times": times, "peak": peaks,
            "cpu": {k: statistics.median(v) for k, v in cpu.items()}}


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def render(results: list[dict], threads: int, reps: int) -> str:
    lines = [
        START,
        "## Optimizer step time (`bench/bench_optim.py`)",
        "",
        f"Machine: {cpu_model()}, {torch.get_num_threads()} torch threads (requested {threads}), "
        f"torch {torch.__version__}, Python {platform.python_version()}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}. fp32 parameters with random "
        f"gradients; median of {reps} round-robin steps after 2 warm-up steps; all numbers from one run. "
        "Peak temporary memory: peak of the bytes allocated by operators during one step and not yet "
        "freed (a TorchDispatchMode tracking storages; state allocated in warm-up is not counted; for "
        "smmf_plan's SMMF the row-block workspace it keeps between steps is added). CPU time is the process's CPU seconds per step (both "
        "threads), less sensitive than wall time to other load on a shared machine; "
        f"load average when the run ended: {_loadavg()}.",
        "",
    ]
    for r in results:
        adam = r["median"]["Adam (foreach)"]
        ref = r["median"]["SMMF reference (Appendix M)"]
        lines += [
            f"### {r['name']} ({r['tensors']} tensors, {r['numel']:,} parameters)",
            "",
            "| optimizer | median step (ms) | min (ms) | × Adam (foreach) | reference ÷ this "
            "| CPU time (ms) | CPU × Adam | peak temporary (MiB) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for k, v in r["median"].items():
            lines.append(
                f"| {k} | {v * 1e3:.1f} | {min(r['times'][k]) * 1e3:.1f} | {v / adam:.2f} | "
                f"{ref / v:.2f} | {r['cpu'][k] * 1e3:.1f} | "
                f"{r['cpu'][k] / r['cpu']['Adam (foreach)']:.2f} | {r['peak'][k] / 2**20:.1f} |"
            )
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def write_section(text: str, path: Path) -> None:
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if START in old and END in old:
        head, _, rest = old.partition(START)
        _, _, tail = rest.partition(END)
        new = head + text + tail
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--models", default="resnet50,gpt2")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--cpp", action="store_true",
                    help="also time the fused C++ kernel (builds it; needs a compiler)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    with_cpp = False
    if args.cpp:
        from smmf_plan.optim import _cpp

        with_cpp = _cpp.enable(True)
        _cpp.enable(False)
        print("fused C++ kernel:", "built" if with_cpp else "could not be built, row omitted")
    for name in args.models.split(","):
        r = bench_model(name.strip(), args.reps, with_cpp)
        results.append(r)
        for k, v in r["median"].items():
            print(f"{name:9s} {k:30s} {v * 1e3:9.1f} ms  x{v / r['median']['Adam (foreach)']:.2f}"
                  f"  peak tmp {r['peak'][k] / 2**20:8.1f} MiB", flush=True)
    text = render(results, args.threads, args.reps)
    if not args.no_write:
        write_section(text, ROOT / "reports" / "benchmarks.md")
    print(text)


if __name__ == "__main__":
    main()
