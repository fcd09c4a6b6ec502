"""Benchmark ``optimizer.step()`` of the bundled SMMF against AdamW (fused), Adam (foreach) and the
paper's reference code, on CPU and (``--gpu``) on CUDA.

Usage::

    python bench/bench_optim.py [--threads 2] [--reps 11] [--models resnet50,gpt2] [--no-write]
    python bench/bench_optim.py --gpu [--reps 21] [--models resnet50,gpt2,llama7b-layer]

CPU (default). For each parameter set (the shapes of timm ``resnet50`` and transformers
``GPT2LMHeadModel(GPT2Config())``, built on the meta device, then materialised with random
gradients) it times ``step()`` of ``torch.optim.Adam(foreach=True)``, ``torch.optim.AdamW(fused=True)``,
the reference SMMF transcribed from the paper's Appendix M (``tests/reference_smmf.py``),
``SMMF(fused=False)`` (eager kernels) and ``SMMF()`` (the default: the fused C++ kernel), in fp32,
and AdamW (fused) and SMMF (fused) again on bf16 copies of the parameters.

* After two warm-up steps each, the optimizers are stepped round-robin for ``--reps`` rounds (a
  burst of load on the machine hits all of them alike); the report gives the median wall time per
  step and the ratio to AdamW (fused) of the same dtype, all from this one run.
* **Bytes per element** is a traffic model: what one step must move between memory and the
  cores. A single-sweep kernel (AdamW fused: read W, G, m, v, write W, m, v = 28 B in fp32; SMMF
  fused: read G and W, write W, one sign bit each way = 12.25 B) moves exactly that; for multi-pass
  kernels (Adam foreach: 72 B counting its seven passes; SMMF eager and the reference) the
  figure given is a floor, so their GB/s is a lower bound. **GB/s** = bytes per element × elements
  / median time, set beside the machine's **copy bandwidth** measured in the same run
  (``dst.copy_(src)`` on 256 MiB, 8 B per element moved, same threads), which is the practical
  limit of a streaming kernel.
* Peak temporary memory of a step is measured in a separate step with a ``TorchDispatchMode``
  (:class:`_LiveBytes`) that follows every storage an operator allocates until its last tensor is
  garbage-collected; for smmf_plan's SMMF the scratch it keeps between steps is added.
* ``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` (set before torch loads; override it in the
  environment): with torch's spinning default, other load on a small shared machine made every
  row several times slower and noisier. The load average before and after the run is reported.

GPU (``--gpu``): the same comparison on CUDA for ResNet-50, GPT-2 and one LLaMA-7B decoder layer
(SMMF picks its Triton kernel; step times from CUDA events, median of ``--reps``; peak
temporaries = ``max_memory_allocated`` during a step minus the memory allocated before it; copy
bandwidth from a 1 GiB device copy). Without a CUDA device it writes "not run" rather than numbers.

Results replace the sections between ``<!-- bench:optimizer:start -->`` / ``...:end -->`` and
``<!-- bench:optimizer-gpu:start -->`` / ``...:end -->`` of ``reports/benchmarks.md``.
"""

from __future__ import annotations

import os

# Idle OpenMP workers sleep instead of spinning. On a shared 2-core machine torch's default
# (spinning) made every optimizer 3-10x slower and noisier; it applies to all rows alike.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

SECTIONS = {
    "cpu": ("<!-- bench:optimizer:start -->", "<!-- bench:optimizer:end -->"),
    "gpu": ("<!-- bench:optimizer-gpu:start -->", "<!-- bench:optimizer-gpu:end -->"),
}

ADAM, ADAMW, REF = "Adam (foreach)", "AdamW (fused)", "SMMF reference (Appendix M)"
EAGER, FUSED = "SMMF eager (`fused=False`)", "SMMF fused (default)"
ADAMW16, FUSED16 = "AdamW (fused), bf16 params", "SMMF fused (default), bf16 params"
#: bytes moved per element by one step (see the module docstring); None: not modelled
TRAFFIC = {ADAM: (72, "≥"), ADAMW: (28, ""), REF: (12.25, "≥"), EAGER: (12.25, "≥"), FUSED: (12.25, ""),
           ADAMW16: (14, ""), FUSED16: (6.25, "")}


def model_shapes(name: str) -> list[tuple[int, ...]]:
    if name == "resnet50":
        import timm

        with torch.device("meta"):
            model = timm.create_model("resnet50")
    elif name == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        with torch.device("meta"):
            model = GPT2LMHeadModel(GPT2Config())
    elif name == "llama7b-layer":  # one LLaMA-2-7B decoder layer
        d, f = 4096, 11008
        return [(d, d)] * 4 + [(f, d), (f, d), (d, f), (d,), (d,)]
    else:
        raise SystemExit(f"unknown model {name!r}: use resnet50, gpt2 or llama7b-layer")
    return [tuple(p.shape) for p in model.parameters()]  # tied weights appear once


def optimizers(params32, params16):
    from reference_smmf import SMMF as ReferenceSMMF
    from smmf_plan.optim import SMMF

    opts = {
        ADAM: torch.optim.Adam(params32, lr=1e-3, foreach=True),
        ADAMW: torch.optim.AdamW(params32, lr=1e-3, fused=True),
        REF: ReferenceSMMF(params32, lr=1e-3),
        EAGER: SMMF(params32, lr=1e-3, fused=False),
        FUSED: SMMF(params32, lr=1e-3),
    }
    if params16 is not None:
        opts[ADAMW16] = torch.optim.AdamW(params16, lr=1e-3, fused=True)
        opts[FUSED16] = SMMF(params16, lr=1e-3)
    return opts


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
    # smmf_plan's SMMF keeps its step scratch between steps: count it as temporary
    return tracker.peak + getattr(opt, "workspace_bytes", lambda: 0)()


def copy_bandwidth(device: str, nbytes: int, reps: int = 9) -> float:
    """GB/s of ``dst.copy_(src)`` (bytes read + bytes written), median of ``reps``."""
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(reps + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / statistics.median(times[2:]) / 1e9


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


def _materialise(shapes, device="cpu", dtype=torch.float32, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, device=device) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, device=device)
    if dtype == torch.float32:
        return params
    out = [torch.nn.Parameter(p.detach().to(dtype)) for p in params]
    for q, p in zip(out, params):
        q.grad = p.grad.to(dtype)
    return out


# ---------------------------------------------------------------------------------------- CPU
def bench_cpu_model(name: str, reps: int, bf16: bool) -> dict:
    shapes = model_shapes(name)
    params = _materialise(shapes)
    params16 = _materialise(shapes, dtype=torch.bfloat16) if bf16 else None
    opts = optimizers(params, params16)
    for opt in opts.values():
        opt.step()
        opt.step()
    times = {k: [] for k in opts}
    for _ in range(reps):
        for k, opt in opts.items():
            t0 = time.perf_counter()
            opt.step()
            times[k].append(time.perf_counter() - t0)
    peaks = {k: peak_temporary_bytes(opt) for k, opt in opts.items()}
    return {"name": name, "numel": sum(p.numel() for p in params), "tensors": len(params),
            "median": {k: statistics.median(v) for k, v in times.items()}, "times": times,
            "peak": peaks}


def _baseline_of(key: str) -> str:
    return ADAMW16 if "bf16" in key else ADAMW


def render_cpu(results: list[dict], threads: int, reps: int, copy_gbs: float, load: tuple) -> str:
    start, end = SECTIONS["cpu"]
    lines = [
        start,
        "## Optimizer step time on CPU (`bench/bench_optim.py`)",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs shared with other jobs, "
        f"{torch.get_num_threads()} torch threads (requested {threads}), torch {torch.__version__}, "
        f"Python {platform.python_version()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}; "
        f"{datetime.date.today().isoformat()}. Load average (1, 5, 15 min) before the run: {load[0]}; "
        f"after: {load[1]}. Median of {reps} round-robin steps after 2 warm-up steps, all from this "
        f"one run; random gradients. **Copy bandwidth measured in this run: {copy_gbs:.1f} GB/s** "
        "(`copy_` of 256 MiB, read + written). Bytes per element: the traffic model of the module "
        "docstring (≥: a floor for a multi-pass kernel, so its GB/s is a lower bound). Peak "
        "temporaries: bytes allocated during a step and not yet freed (a TorchDispatchMode), plus "
        "the scratch SMMF keeps between steps.",
        "",
    ]
    for r in results:
        lines += [
            f"### {r['name']} ({r['tensors']} tensors, {r['numel']:,} parameters)",
            "",
            "| optimizer | median step (ms) | × AdamW (fused) | bytes / element | GB/s | % of copy "
            "bandwidth | peak temporaries (MiB) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for k, v in r["median"].items():
            base = r["median"][_baseline_of(k)]
            nbytes, floor = TRAFFIC[k]
            gbs = nbytes * r["numel"] / v / 1e9
            lines.append(
                f"| {k} | {v * 1e3:.1f} | {v / base:.2f} | {floor}{nbytes:g} | {floor}{gbs:.1f} | "
                f"{floor}{100 * gbs / copy_gbs:.0f}% | {r['peak'][k] / 2**20:.1f} |")
        lines.append("")
    lines.append(end)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- GPU
GPU_ROWS = [ADAMW, ADAM, REF, FUSED]


def bench_gpu_model(name: str, reps: int) -> dict:
    from reference_smmf import SMMF as ReferenceSMMF
    from smmf_plan.optim import SMMF

    shapes = model_shapes(name)
    params = _materialise(shapes, device="cuda")
    opts = {ADAMW: torch.optim.AdamW(params, lr=1e-3, fused=True),
            ADAM: torch.optim.Adam(params, lr=1e-3, foreach=True),
            REF: ReferenceSMMF(params, lr=1e-3), FUSED: SMMF(params, lr=1e-3)}
    for opt in opts.values():
        opt.step()
        opt.step()
    torch.cuda.synchronize()
    times = {k: [] for k in opts}
    for _ in range(reps):
        for k, opt in opts.items():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            opt.step()
            b.record()
            torch.cuda.synchronize()
            times[k].append(a.elapsed_time(b) / 1e3)
    peaks = {}
    for k, opt in opts.items():
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        opt.step()
        torch.cuda.synchronize()
        peaks[k] = torch.cuda.max_memory_allocated() - before + getattr(opt, "workspace_bytes", lambda: 0)()
    return {"name": name, "numel": sum(p.numel() for p in params), "tensors": len(params),
            "median": {k: statistics.median(v) for k, v in times.items()}, "peak": peaks}


def render_gpu(results: list[dict] | None, reps: int, copy_gbs: float | None) -> str:
    start, end = SECTIONS["gpu"]
    head = [start, "## Optimizer step time on a GPU (`bench/bench_optim.py --gpu`)", ""]
    if results is None:
        return "\n".join(head + [
            f"**Not run: no GPU was available** on the machine that produced this report ({cpu_model()}, "
            f"{datetime.date.today().isoformat()}). On a CUDA machine, `python bench/bench_optim.py "
            "--gpu` fills this section: SMMF (its fused Triton kernel) against AdamW (fused), Adam "
            "(foreach) and the reference code on ResNet-50, GPT-2 and one LLaMA-7B layer — step "
            "time, peak temporaries, achieved bandwidth beside the device's copy bandwidth. Goal: "
            "SMMF ≤ 0.6× AdamW (fused); the traffic bound is 12.25 / 28 = 0.44×.",
            "", end])
    lines = head + [
        f"Device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"{datetime.date.today().isoformat()}; median of {reps} round-robin steps (CUDA events) after "
        f"2 warm-up steps. **Copy bandwidth measured in this run: {copy_gbs:.0f} GB/s**. Bytes per "
        "element and GB/s as in the CPU section; peak temporaries: `max_memory_allocated` during a "
        "step minus what was allocated before it, plus SMMF's kept scratch.",
        "",
    ]
    for r in results:
        lines += [
            f"### {r['name']} ({r['tensors']} tensors, {r['numel']:,} parameters)",
            "",
            "| optimizer | median step (ms) | × AdamW (fused) | bytes / element | GB/s | % of copy "
            "bandwidth | peak temporaries (MiB) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for k, v in r["median"].items():
            nbytes, floor = TRAFFIC[k]
            gbs = nbytes * r["numel"] / v / 1e9
            lines.append(
                f"| {k} | {v * 1e3:.3f} | {v / r['median'][ADAMW]:.2f} | {floor}{nbytes:g} | "
                f"{floor}{gbs:.0f} | {floor}{100 * gbs / copy_gbs:.0f}% | {r['peak'][k] / 2**20:.1f} |")
        lines.append("")
    lines.append(end)
    return "\n".join(lines)


def write_section(text: str, which: str, path: Path) -> None:
    start, end = SECTIONS[which]
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in old and end in old:
        head, _, rest = old.partition(start)
        _, _, tail = rest.partition(end)
        new = head + text + tail
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--models", default=None, help="default: resnet50,gpt2 (CPU); + llama7b-layer (GPU)")
    ap.add_argument("--gpu", action="store_true", help="the GPU section (needs CUDA)")
    ap.add_argument("--no-bf16", action="store_true", help="CPU: skip the bf16 rows")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    report = ROOT / "reports" / "benchmarks.md"
    if args.gpu:
        models = (args.models or "resnet50,gpt2,llama7b-layer").split(",")
        if not torch.cuda.is_available():
            text = render_gpu(None, args.reps, None)
        else:
            copy_gbs = copy_bandwidth("cuda", 1 << 30)
            results = []
            for name in models:
                results.append(bench_gpu_model(name.strip(), args.reps))
                print(name, {k: f"{v * 1e3:.3f} ms" for k, v in results[-1]["median"].items()}, flush=True)
            text = render_gpu(results, args.reps, copy_gbs)
        if not args.no_write:
            write_section(text, "gpu", report)
        print(text)
        return
    torch.set_num_threads(args.threads)
    load_before = _loadavg()
    from smmf_plan.optim import _cpp

    why = _cpp.load_error()  # build the fused kernel before timing anything
    if why:
        raise SystemExit(f"the fused CPU kernel cannot be built here: {why}")
    copy_gbs = copy_bandwidth("cpu", 256 << 20)
    results = []
    for name in (args.models or "resnet50,gpt2").split(","):
        r = bench_cpu_model(name.strip(), args.reps, bf16=not args.no_bf16)
        results.append(r)
        for k, v in r["median"].items():
            print(f"{name:9s} {k:36s} {v * 1e3:9.1f} ms  x{v / r['median'][_baseline_of(k)]:.2f}", flush=True)
    copy_after = copy_bandwidth("cpu", 256 << 20)
    text = render_cpu(results, args.threads, args.reps, max(copy_gbs, copy_after), (load_before, _loadavg()))
    if not args.no_write:
        write_section(text, "cpu", report)
        if SECTIONS["gpu"][0] not in report.read_text():
            write_section(render_gpu(None, args.reps, None), "gpu", report)
    print(text)


if __name__ == "__main__":
    main()
