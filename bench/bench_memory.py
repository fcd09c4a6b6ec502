"""Estimate vs measured peak memory of one real CPU training step (Adam, fp32), and estimate time.

Writes reports/memory-accuracy.md. Measured: RSS growth over the post-import baseline in a fresh
process with MALLOC_MMAP_THRESHOLD_=131072 (and the tensor-level peak from the storage tracker).
Estimated: smmf_plan.memory.estimate(...) total minus its import terms (pytorch + library)."""

import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_memory import CASES, _meta_factory  # noqa: E402

from smmf_plan.optimizers import parse_many  # noqa: E402
from smmf_plan.memory import estimate, spec_of_module  # noqa: E402
from smmf_plan.peak import measure_in_subprocess  # noqa: E402

MiB = 1 << 20
cases = dict(CASES)
cases["resnet50"] = ({"timm": "resnet50"}, None, None, (1, 8))
rows = []
for name, (model, size, seq, batches) in cases.items():
    recipe = {"model": model, "batch_sizes": list(batches), "optimizer": "adam", "tensor_level": True}
    if size:
        recipe["input_size"] = size
    if seq:
        recipe["seq_len"] = seq
    got = measure_in_subprocess(recipe)
    make = _meta_factory(model)
    spec = spec_of_module(make(), name)
    for b, m in zip(batches, got):
        t0 = time.perf_counter()
        est = estimate(spec, parse_many("adam"), batch_size=b, input_size=size, seq_len=seq,
                       module_factory=make)
        secs = time.perf_counter() - t0
        rp = est.runtime_parts
        bd = est.breakdowns["adam"]
        pred = bd.total_bytes - rp["pytorch"] - rp.get("library", 0)
        tensor_pred = pred - rp["step_overhead"]
        rows.append((name, b, m.rss_growth / MiB, pred / MiB, (pred / m.rss_growth - 1) * 100,
                     m.tensor_peak_bytes / MiB, tensor_pred / MiB, secs))
        print(rows[-1], flush=True)
lines = ["# Training-step memory: estimate vs measured (CPU, Adam, fp32)", "",
         f"torch {torch.__version__}; measured RSS with MALLOC_MMAP_THRESHOLD_=131072, 1 thread, "
         "3rd step; estimate excludes the import terms of the runtime baseline.", "",
         "| model | batch | measured RSS growth MiB | estimate MiB | error | measured tensor peak MiB "
         "| estimated tensor peak MiB | estimate s |", "|---|---|---|---|---|---|---|---|"]
for r in rows:
    lines.append(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:+.1f}% | {r[5]:.1f} | {r[6]:.1f} | {r[7]:.2f} |")
out = os.path.join(os.path.dirname(__file__), "..", "reports", "memory-accuracy.md")
with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))
