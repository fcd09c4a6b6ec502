"""Estimate vs measured peak memory of real training steps, per allocator model.

Usage::

    python bench/bench_memory.py            # CPU: default glibc and glibc-mmap (this machine)
    python bench/bench_memory.py --cuda     # CUDA: on a GPU machine (max_memory_allocated/reserved)
    python bench/bench_memory.py --list [--cuda]   # the jobs, nothing run

Each run replaces its own section of ``reports/memory-accuracy.md`` (between
``<!-- bench:memory:cpu:start/end -->`` or ``<!-- bench:memory:cuda:start/end -->``) and keeps the
other, so a GPU run adds the CUDA section beside the committed CPU one.

**CPU.** Every configuration is stepped in fresh processes (``smmf_plan.peak``: 1 thread, the
third step measured, peak RSS growth over the post-import baseline via ``/proc/self/clear_refs``
and ``VmHWM``): ``--runs`` processes (default 3) with glibc as installed (``MALLOC_MMAP_THRESHOLD_``
unset; the median is reported with the range) and one with ``MALLOC_MMAP_THRESHOLD_=131072``
(deterministic; the tensor-level peak too). Each is compared with the ``glibc`` and the
``glibc-mmap`` estimate minus the estimate's import terms (the baseline is taken after imports).

**CUDA.** Each model × optimizer × recipe (fp32, AMP bf16, LoRA, gradient checkpointing) is
stepped on ``cuda:0`` in a fresh process (``smmf_plan.peak.measure_cuda_step``: three steps, peaks
reset before the third) and compared with the ``cuda`` estimate: ``allocated`` = its total minus
the allocator part, ``reserved`` = its total.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
REPORT = ROOT / "reports" / "memory-accuracy.md"
MiB = 1 << 20
CKPT = "checkpointing"

GPT2 = {"config_class": "GPT2Config", "model_class": "GPT2LMHeadModel",
        "config": {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 256}}
LLAMA = {"config_class": "LlamaConfig", "model_class": "LlamaForCausalLM",
         "config": {"vocab_size": 32000, "hidden_size": 256, "intermediate_size": 688,
                    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
                    "max_position_embeddings": 256}}
BERT = {"config_class": "BertConfig", "model_class": "BertForMaskedLM",
        "config": {"vocab_size": 30522, "hidden_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 2, "intermediate_size": 512}}

#: CPU configurations: name -> (recipe model, input size, seq len, [(batch, optimizer[, recipe]),
#: ...]); the recipe is "fp32" (the default) or "checkpointing" (gradient checkpointing, switched on
#: as a training script does). The first three are the models the test suite measures
#: (tests/test_memory.py).
CPU_CASES = {
    "resnet18": ({"timm": "resnet18"}, [3, 96, 96], None,
                 [(2, "adam"), (8, "adam"), (8, "smmf"), (8, "adam", CKPT)]),
    "vit_tiny": ({"timm": "vit_tiny_patch16_224", "kwargs": {"img_size": 96}}, None, None,
                 [(2, "adam"), (8, "adam"), (8, "adam", CKPT)]),
    "gpt2_tiny": ({"transformers": GPT2}, None, 64,
                  [(2, "adam"), (4, "adam"), (8, "adam"), (4, "adam", CKPT), (8, "adam", CKPT)]),
    "resnet50": ({"timm": "resnet50"}, None, None, [(1, "adam"), (8, "adam"), (8, "adam", CKPT)]),
    "mobilenetv2_100": ({"timm": "mobilenetv2_100"}, [3, 128, 128], None,
                        [(8, "adam"), (8, "adam", CKPT)]),
    "llama_tiny": ({"transformers": LLAMA}, None, 128, [(8, "adafactor"), (8, "adafactor", CKPT)]),
    "bert_tiny": ({"transformers": BERT}, None, 128, [(8, "adam"), (8, "adam", CKPT)]),
}

#: CUDA jobs: (model, batch, input size, seq len, optimizer, recipe) - five models, four recipes.
CUDA_JOBS = [
    ("resnet50", 64, None, None, "adam", "fp32"),
    ("resnet50", 64, None, None, "smmf", "fp32"),
    ("resnet50", 64, None, None, "adam", "amp-bf16"),
    ("resnet50", 64, None, None, "adam", "checkpointing"),
    ("vit_base_patch16_224", 32, None, None, "adam", "fp32"),
    ("vit_base_patch16_224", 32, None, None, "adafactor", "amp-bf16"),
    ("gpt2", 8, None, 512, "adam", "fp32"),
    ("gpt2", 8, None, 512, "smmf", "fp32"),
    ("gpt2", 8, None, 512, "adam", "amp-bf16"),
    ("gpt2", 8, None, 512, "adam", "lora"),
    ("gpt2", 8, None, 512, "adam", "checkpointing"),
    ("bert-base-uncased", 32, None, 128, "adam", "fp32"),
    ("bert-base-uncased", 32, None, 128, "came", "amp-bf16"),
    ("t5-small", 16, None, 256, "adam", "fp32"),
    ("t5-small", 16, None, 256, "sm3", "fp32"),
    ("llama-2-7b", 1, None, 512, "adam", "lora"),
]
LORA_TARGETS = {"gpt2": ["c_attn"], "llama-2-7b": ["q_proj", "v_proj"]}


def machine() -> str:
    """One line: CPU, cores, memory, kernel, glibc, Python, torch, load."""
    import torch

    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(next(ln for ln in open("/proc/meminfo") if ln.startswith("MemTotal")).split()[1])
        mem = f", {kib / (1 << 20):.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    libc = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else "libc ?"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores{mem}; Linux {platform.release()}; {libc}; "
            f"Python {platform.python_version()}; torch {torch.__version__}; load average {load}")


def replace_section(name: str, body: str) -> None:
    start, end = f"<!-- bench:memory:{name}:start -->", f"<!-- bench:memory:{name}:end -->"
    text = REPORT.read_text() if REPORT.exists() else ""
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + block + "\n"
    header = "# Training-step memory: estimate vs measured\n"
    if not text.startswith(header):
        text = header + "\n" + text
    REPORT.write_text(text)


# --------------------------------------------------------------------------- CPU

def cpu_jobs():
    for name, (model, size, seq, runs) in CPU_CASES.items():
        for batch, opt, *recipe in runs:
            yield name, model, size, seq, batch, opt, (recipe or ["fp32"])[0]


def estimate_cpu(name, model, size, seq, batch, opt, recipe, allocator) -> tuple[int, int]:
    """(the estimate without its import terms, its allocator part) under ``allocator``."""
    from smmf_plan.memory import estimate, spec_of_module
    from smmf_plan.optimizers import parse_many
    from smmf_plan.recipe import Recipe
    from test_memory import _meta_factory

    make = _meta_factory(model)
    est = estimate(spec_of_module(make(), name), parse_many(opt), batch_size=batch,
                   input_size=size, seq_len=seq, module_factory=make, allocator=allocator,
                   recipe=Recipe(grad_checkpointing=recipe == CKPT))
    bd, rp = est.breakdowns[opt], est.runtime_parts
    return bd.total_bytes - rp["pytorch"] - rp.get("library", 0), bd["allocator"]


def run_cpu(runs: int, workers: int) -> str:
    from concurrent.futures import ThreadPoolExecutor

    from smmf_plan.peak import measure_in_subprocess

    began = machine()
    jobs = list(cpu_jobs())

    def measure(job):
        name, model, size, seq, batch, opt, how = job
        recipe = {"model": model, "batch_size": batch, "optimizer": opt, "threads": 1,
                  "grad_checkpointing": how == CKPT}
        if size:
            recipe["input_size"] = size
        if seq:
            recipe["seq_len"] = seq
        # one process per measurement, each stepping one batch, as a user's run does
        default = [measure_in_subprocess(recipe, env={}).rss_growth for _ in range(runs)]
        return default, measure_in_subprocess({**recipe, "tensor_level": True})

    rows = []
    with ThreadPoolExecutor(workers) as pool:  # fresh processes: RSS is per process
        for job, (default, mmap) in zip(jobs, pool.map(measure, jobs)):
            name, model, size, seq, batch, opt, how = job
            est, slack = estimate_cpu(*job, "glibc")
            est_mmap, _ = estimate_cpu(*job, "glibc-mmap")
            med = statistics.median(default)
            rows.append((name, batch, opt, how, med, min(default), max(default), est, slack,
                         mmap.rss_growth, est_mmap, mmap.tensor_peak_bytes))
            print(name, batch, opt, how, f"default {med / MiB:.1f} ({min(default) / MiB:.1f}-"
                  f"{max(default) / MiB:.1f}) est {est / MiB:.1f}; mmap {mmap.rss_growth / MiB:.1f}"
                  f" est {est_mmap / MiB:.1f}", flush=True)
            # written after every row: an interrupted run keeps what it measured, and says so
            replace_section("cpu", cpu_section(began, runs, rows, len(jobs)))
    return cpu_section(began, runs, rows, len(jobs))


def reestimate() -> None:
    """Recompute the estimate columns of the committed CPU section with the current model, keeping
    every measured figure (for a model change without a new hour of measurements) and every
    paragraph written by hand (notes on rows measured later); the section says so."""
    import re

    text = REPORT.read_text()
    start, end = "<!-- bench:memory:cpu:start -->", "<!-- bench:memory:cpu:end -->"
    old = text[text.index(start) + len(start):text.index(end)]
    began = re.search(r"Machine: (.*?) \(at the start\)", old).group(1)
    runs = int(re.search(r"median of (\d+) processes", old).group(1))
    jobs = {(n, b, o, r): (n, m, size, seq, b, o, r) for n, m, size, seq, b, o, r in cpu_jobs()}
    rows = []
    for line in old.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) not in (10, 11) or not cells[1].isdigit():
            continue
        if len(cells) == 10:  # written before the recipe column: fp32
            cells.insert(3, "fp32")
        name, b, opt, how = cells[0], int(cells[1]), cells[2], cells[3]
        med, lo, hi = (float(x) * MiB for x in re.match(r"([\d.]+) \(([\d.]+)-([\d.]+)\)", cells[4]).groups())
        mm, tensor = float(cells[7]) * MiB, float(cells[10]) * MiB
        job = jobs[(name, b, opt, how)]
        est, slack = estimate_cpu(*job, "glibc")
        est_mmap, _ = estimate_cpu(*job, "glibc-mmap")
        rows.append((name, b, opt, how, med, lo, hi, est, slack, mm, est_mmap, tensor))
    order = list(jobs)
    rows.sort(key=lambda r: order.index(r[:4]))
    generated = ("## CPU", "Machine:", "Measured:", "|", "glibc estimate / measured median",
                 "The estimate columns were recomputed")
    notes = [p.strip() for p in old.split("\n\n") if p.strip() and not p.strip().startswith(generated)]
    section = cpu_section(began, runs, rows, len(jobs), machine_now=re.search(
        r"\(at the start\); (.*?) when written", old).group(1))
    replace_section("cpu", "\n\n".join([section, *notes, (
        "The estimate columns were recomputed with the current model after the measurements "
        "(`bench_memory.py --reestimate`); every measured figure is the run's.")]))


def cpu_section(began: str, runs: int, rows: list, total: int, machine_now: str | None = None) -> str:
    lines = [
        "## CPU", "",
        f"Machine: {began} (at the start); {machine_now or machine().rsplit('; ', 1)[-1]} when "
        "written."
        + ("" if len(rows) == total else f" **{len(rows)} of {total} configurations measured.**"),
        "",
        f"Measured: peak RSS growth of the third training step over the post-import baseline, 1 "
        f"thread, in fresh processes (`smmf_plan.peak`), one batch per process: **glibc** = glibc "
        f"as installed (`MALLOC_MMAP_THRESHOLD_` unset), median of {runs} processes (range in "
        "brackets); **glibc-mmap** = `MALLOC_MMAP_THRESHOLD_=131072`, one process "
        "(deterministic). Recipe `checkpointing`: gradient checkpointing switched on as a training "
        "script does (transformers' `gradient_checkpointing_enable`, timm's "
        "`set_grad_checkpointing`). Estimated: `smmf_plan.memory.estimate` with "
        "`allocator=\"glibc\"` / `\"glibc-mmap\"`, minus its import terms (PyTorch and the model "
        "library: the baseline is taken after them). The glibc estimate's allocator part is in "
        "brackets.", "",
        "| model | batch | optimizer | recipe | glibc measured MiB "
        "| glibc estimate MiB (allocator part) | estimate / median | glibc-mmap measured MiB "
        "| glibc-mmap estimate MiB | error | tensor-level peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (name, b, opt, how, med, lo, hi, est, slack, mm, est_mm, tensor) in rows:
        lines.append(
            f"| {name} | {b} | {opt} | {how} | {med / MiB:.1f} ({lo / MiB:.1f}-{hi / MiB:.1f}) "
            f"| {est / MiB:.1f} ({slack / MiB:.1f}) | {est / med:.2f} | {mm / MiB:.1f} "
            f"| {est_mm / MiB:.1f} | {(est_mm / mm - 1) * 100:+.1f}% | {tensor / MiB:.1f} |")
    ratios = [r[7] / r[4] for r in rows]
    lines += ["", f"glibc estimate / measured median: {min(ratios):.2f} to {max(ratios):.2f} over "
              f"{len(rows)} configurations (the model's claim: at or above the median, at most "
              "1.25x it). The coefficients in `smmf_plan/allocators/glibc.py` were fitted on all of "
              "these rows (none held out). The widest spreads are the tiny GPT-2's: at batch 2 its "
              "logits are exactly as large as its vocabulary matrix (nine 24.5 MiB blocks of one "
              "size per step), and how many of its vocabulary-sized blocks stay resident differs "
              "from process to process (see the ranges)."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- CUDA

def not_measured() -> str:
    """The CUDA section until a GPU run replaces it: what would be measured, and that it was not."""
    jobs = "\n".join(f"| {m} | {b} | {o} | {r} |" for m, b, _, _, o, r in CUDA_JOBS)
    return ("## CUDA\n\nCUDA: not measured, no GPU was available. The `cuda` and `unified` "
            "allocator models (the caching allocator replayed on the traced allocation sequence, "
            "cuBLAS workspaces) are derived from `c10/cuda/CUDACachingAllocator.cpp`, not from "
            "measurements. `python bench/bench_memory.py --cuda` on a GPU machine measures "
            "`torch.cuda.max_memory_allocated()` and `max_memory_reserved()` for these runs "
            "against the estimate and replaces this section:\n\n"
            "| model | batch | optimizer | recipe |\n|---|---|---|---|\n" + jobs + "\n")


def cuda_recipe(model, batch, size, seq, opt, recipe) -> dict:
    r = {"device": "cuda", "source": model, "optimizer": opt, "batch_size": batch, "steps": 3}
    if size:
        r["input_size"] = size
    if seq:
        r["seq_len"] = seq
    if recipe == "amp-bf16":
        r["amp"] = "bf16"
    elif recipe == "checkpointing":
        r["grad_checkpointing"] = True
    elif recipe == "lora":
        r["lora_rank"], r["lora_targets"] = 8, LORA_TARGETS[model]
    return r


def estimate_cuda(r: dict) -> tuple[int, int]:
    """(allocated, reserved) the ``cuda`` estimate predicts for a CUDA recipe."""
    from smmf_plan.memory import estimate
    from smmf_plan.options import ModelOptions

    m = ModelOptions(model=r["source"], optimizers=(r["optimizer"],), dtype=r.get("dtype"),
                     lora_rank=r.get("lora_rank"), lora_targets=tuple(r.get("lora_targets", ())))
    est = estimate(m.load(), m.layouts(), batch_size=r["batch_size"], input_size=r.get("input_size"),
                   seq_len=r.get("seq_len"), dtype=r.get("dtype"), amp=r.get("amp"),
                   grad_checkpointing=bool(r.get("grad_checkpointing")), allocator="cuda")
    bd = est.breakdowns[r["optimizer"]]
    return bd.total_bytes - bd["allocator"], bd.total_bytes


def run_cuda() -> str:
    from smmf_plan.peak import measure_in_subprocess

    began = machine()
    rows, device = [], "?"
    for model, batch, size, seq, opt, recipe in CUDA_JOBS:
        r = cuda_recipe(model, batch, size, seq, opt, recipe)
        t0 = time.perf_counter()
        try:
            m = measure_in_subprocess(r, env={}, timeout=1800)
        except RuntimeError as e:
            rows.append((model, batch, opt, recipe, None, None, None, None, str(e).splitlines()[-1][:80]))
            print(model, opt, recipe, "failed:", rows[-1][-1], flush=True)
            continue
        device = f"{m.device_name}, torch {m.torch_version}"
        alloc, reserved = estimate_cuda(r)
        rows.append((model, batch, opt, recipe, m.peak_allocated - m.baseline_allocated,
                     m.peak_reserved, alloc, reserved, ""))
        print(model, opt, recipe, f"allocated {rows[-1][4] / MiB:.0f} vs {alloc / MiB:.0f}; reserved "
              f"{m.peak_reserved / MiB:.0f} vs {reserved / MiB:.0f} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    lines = [
        "## CUDA", "",
        f"Device: {device}. Host: {began}.", "",
        "Measured on `cuda:0`, one fresh process per row: `torch.cuda.max_memory_allocated()` (minus "
        "what was allocated before the model existed) and `max_memory_reserved()` over the third "
        "step (`reset_peak_memory_stats()` before it). Estimated: `allocator=\"cuda\"`, "
        "allocated = total minus the allocator part, reserved = total (the CUDA context is in "
        "neither).", "",
        "| model | batch | optimizer | recipe | allocated MiB | estimate | error | reserved MiB "
        "| estimate | error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, b, opt, recipe, ma, mr, ea, er, err in rows:
        if ma is None:
            lines.append(f"| {model} | {b} | {opt} | {recipe} | failed: {err} | | | | | |")
            continue
        lines.append(f"| {model} | {b} | {opt} | {recipe} | {ma / MiB:.0f} | {ea / MiB:.0f} "
                     f"| {(ea / ma - 1) * 100:+.1f}% | {mr / MiB:.0f} | {er / MiB:.0f} "
                     f"| {(er / mr - 1) * 100:+.1f}% |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cuda", action="store_true", help="measure on cuda:0 (the CUDA section)")
    ap.add_argument("--runs", type=int, default=3, help="default-glibc processes per CPU configuration")
    ap.add_argument("--workers", type=int, default=2, help="CPU processes measured at once")
    ap.add_argument("--list", action="store_true", help="print the jobs and exit")
    ap.add_argument("--reestimate", action="store_true",
                    help="recompute the CPU section's estimates, keeping its measurements")
    args = ap.parse_args()
    if args.list:
        for job in (CUDA_JOBS if args.cuda else cpu_jobs()):
            print(*job)
        return
    if args.cuda:
        replace_section("cuda", run_cuda())
        return
    if args.reestimate:
        reestimate()
        print(REPORT.read_text())
        return
    run_cpu(args.runs, args.workers)
    text = REPORT.read_text()
    if "<!-- bench:memory:cuda:start -->" not in text or "CUDA: not measured" in text:
        replace_section("cuda", not_measured())
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
