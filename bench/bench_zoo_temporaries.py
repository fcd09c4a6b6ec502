"""Step temporaries a dispatch-level tracker cannot see, measured by RSS; writes its section of
reports/benchmarks.md.

bitsandbytes' CPU step dequantizes inside a custom operator, and torchao compiles its step with
``torch.compile``: their buffers never pass a ``TorchDispatchMode``. Each is measured here as the
peak RSS growth of one real step (the third, after compilation) over a single parameter in a
fresh process with glibc's mmap threshold at 128 KiB (so freed buffers leave the RSS at once),
beside the registry's rule for the same parameter. The torchao rules
(``smmf_plan.optimizers.lowbit.COMPILED_BYTES_PER_ELEMENT``) come from these runs;
bitsandbytes' is re-measured by a test. Compiling takes minutes per optimizer on two cores.

Run: ``python bench/bench_zoo_temporaries.py``.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from smmf_plan.measure import step_rss_extra  # noqa: E402
from smmf_plan.optimizers import parse  # noqa: E402
from smmf_plan.shapes import ParamSpec  # noqa: E402

REPORT = ROOT / "reports" / "benchmarks.md"
START, END = "<!-- bench:zoo-temporaries:start -->", "<!-- bench:zoo-temporaries:end -->"
CASES = [(oid, shape, dtype)
         for oid in ("adamw8bit", "adamw8bit:impl=torchao", "adamw4bit", "adamwfp8")
         for shape, dtype in (((4096, 2048), "float32"), ((8192, 4096), "bfloat16"))]
MiB = 2 ** 20


def measure() -> list[dict]:
    rows = []
    for oid, shape, dtype in CASES:
        variant = parse(oid)
        path = variant.paths["cpu"][0]
        t = time.perf_counter()
        real = step_rss_extra(oid, shape, dtype, timeout=1800)
        rule = variant.step_temp_bytes([ParamSpec("weight", shape, dtype)], path=path)
        rows.append({"id": oid, "shape": shape, "dtype": dtype, "path": path, "real": real,
                     "rule": rule, "seconds": time.perf_counter() - t})
        print(rows[-1], flush=True)
    return rows


def render(rows: list[dict]) -> str:
    lines = [
        START, "## Step temporaries inside custom operators and compiled kernels "
        "(`bench/bench_zoo_temporaries.py`)", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}; {time.strftime('%Y-%m-%d')}; load average at the end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}. Peak RSS growth of the third step "
        "(after compilation) over one parameter in a fresh process, MALLOC_MMAP_THRESHOLD_=131072; "
        "the rule is the registry's for that parameter on the CPU path.", "",
        "| optimizer | parameter | path | measured | rule | rule ÷ measured | bytes / element "
        "(measured) | wall (incl. compile) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        n = r["shape"][0] * r["shape"][1]
        lines.append(
            f"| `{r['id']}` | {r['shape'][0]}×{r['shape'][1]} {r['dtype']} | {r['path']} | "
            f"{r['real'] / MiB:,.1f} MiB | {r['rule'] / MiB:,.1f} MiB | "
            f"{r['rule'] / r['real'] if r['real'] else float('nan'):.3f} | {r['real'] / n:.3f} | "
            f"{r['seconds']:.0f} s |")
    lines += ["", "bitsandbytes (CPU): both states dequantized to fp32, the fp32 gradient and the "
              "update's terms: 20 B per element (24 for bf16 parameters, which are up-cast). "
              "torchao's compiled step: 8-bit 8 B per element (the two dequantized moments), "
              "4-bit 26 B (its code search against the 16-entry map), FP8 only its two new "
              "per-block scales. On CUDA bitsandbytes runs one fused kernel in place (no "
              "temporaries); torchao's compiled CUDA kernels are assumed to hold what its CPU "
              "kernels hold (not measured here: no GPU).", "", END]
    return "\n".join(lines)


def write_section(section: str) -> None:
    text = REPORT.read_text() if REPORT.exists() else "# Benchmarks\n"
    pat = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    text = pat.sub(lambda _: section, text) if pat.search(text) else text.rstrip("\n") + "\n\n" + section + "\n"
    REPORT.write_text(text)


def main() -> None:
    section = render(measure())
    write_section(section)
    print(section)


if __name__ == "__main__":
    main()
