"""Per-rank CUDA caching-allocator replay: how long ``smmf-plan size --dist`` spends replaying
(``smmf_plan.allocators.caching.replay``, called once per optimizer, rank class and traced batch,
and per device of the catalog), and the whole process, warm.

For each case, every round runs each tree's process once (round-robin, after one warm-up run that
fills a private shape cache), measuring the whole process (wall and CPU time of the child) and, in
a second process, the CPU time spent inside ``caching.replay`` and the events replayed. With
``--baseline DIR`` (a checkout of another commit: ``git worktree add /tmp/base COMMIT``), that
tree's code is measured side by side under the same load and its ``--json`` output compared with
this tree's byte for byte.

Run: ``python bench/bench_replay.py [--baseline DIR] [--rounds 3]``; writes its section of
reports/benchmarks.md. Timings are machine-dependent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "reports" / "benchmarks.md"
START, END = "<!-- bench:replay:start -->", "<!-- bench:replay:end -->"
CASES = [
    ["size", "llama-2-7b", "--dist", "fsdp2", "--world", "8", "--device", "h100-80gb"],
    ["size", "llama-2-7b", "--dist", "zero3", "--world", "8", "--device", "h100-80gb",
     "--grad-accum", "4"],
    ["size", "llama-2-7b", "--dist", "fsdp2", "--world", "8"],
]

#: run in the child: the CLI with ``caching.replay`` timed.
TIMED = """
import json, sys, time
from smmf_plan.allocators import caching
spent, calls, events = [0.0], [0], [0]
inner = caching.replay
def replay(seq, **kw):
    t = time.process_time()  # CPU time: what a shared machine's wall clock blurs
    try:
        return inner(seq, **kw)
    finally:
        spent[0] += time.process_time() - t
        calls[0] += 1
        events[0] += len(seq)
caching.replay = replay
fresh = [0, 0]  # replays not answered from the cache (a tree without one: every call)
if hasattr(caching, "_replay"):
    kernel = caching._replay
    def _replay(seq, reset_at):
        fresh[0] += 1
        fresh[1] += len(seq)
        return kernel(seq, reset_at)
    caching._replay = _replay
from smmf_plan.cli import main
try:
    main(sys.argv[1:] + ["--json"])
except SystemExit:
    pass
if not hasattr(caching, "_replay"):
    fresh = [calls[0], events[0]]
sys.stderr.write("REPLAY " + json.dumps([spent[0], calls[0], events[0], *fresh]) + "\\n")
"""


def _child_cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def _run(tree: Path, args: list[str], env: dict, timed: bool = False) -> dict:
    env = {**env, "PYTHONPATH": str(tree)}
    cmd = ([sys.executable, "-c", TIMED, *args] if timed else
           [sys.executable, "-m", "smmf_plan", *args, "--json"])
    t, c = time.perf_counter(), _child_cpu()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(),
                       timeout=900)
    wall, cpu = time.perf_counter() - t, _child_cpu() - c
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr[-1000:]}")
    out = {"wall": wall, "cpu": cpu, "stdout": r.stdout}
    if timed:
        line = next(x for x in r.stderr.splitlines() if x.startswith("REPLAY "))
        (out["replay"], out["calls"], out["events"], out["fresh"],
         out["fresh_events"]) = json.loads(line.removeprefix("REPLAY "))
    return out


def bench(trees: dict[str, Path], rounds: int) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "SMMF_PLAN_CACHE_DIR": cache}
        for args in CASES:
            name = " ".join(args)
            for tree in trees.values():
                _run(tree, args, env)  # warm-up: fills the shape cache
            runs = {k: [] for k in trees}
            timed = {k: [] for k in trees}
            for _ in range(rounds):
                for key, tree in trees.items():
                    runs[key].append(_run(tree, args, env))
                    timed[key].append(_run(tree, args, env, timed=True))
            row = {}
            for key in trees:
                row[key] = {"wall": statistics.median(r["wall"] for r in runs[key]),
                            "cpu": statistics.median(r["cpu"] for r in runs[key]),
                            "replay": statistics.median(r["replay"] for r in timed[key]),
                            **{k: timed[key][0][k] for k in ("calls", "events", "fresh",
                                                             "fresh_events")}}
            outputs = {r["stdout"] for key in trees for r in runs[key]}
            row["identical"] = len(outputs) == 1
            results[name] = row
    return results


def render(results: dict, baseline: str | None, load: tuple, rounds: int) -> str:
    lines = [START, "## Per-rank caching-allocator replay (`bench/bench_replay.py`)", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python "
             f"{platform.python_version()}; {time.strftime('%Y-%m-%d')}; load average before: "
             f"{' '.join(f'{x:.2f}' for x in load[0])}, after: "
             f"{' '.join(f'{x:.2f}' for x in load[1])}. Warm (shape cache filled), median of "
             f"{rounds} fresh processes per tree, round-robin."
             + (f" Baseline: {baseline}." if baseline else ""), ""]
    keys = ["this"] + (["baseline"] if baseline else [])
    head = "| command | " + " | ".join(
        f"{k}: wall / CPU | {k}: CPU in replay (calls, of them replayed, events replayed)"
        for k in keys)
    lines += [head + (" | JSON identical |" if baseline else " |"),
              "|" + "---|" * (1 + 2 * len(keys) + (1 if baseline else 0))]
    for name, row in results.items():
        cells = []
        for k in keys:
            r = row[k]
            cells += [f"{r['wall']:.2f} s / {r['cpu']:.2f} s",
                      f"{r['replay']:.2f} s ({r['calls']}, {r['fresh']}, {r['fresh_events']:,})"]
        if baseline:
            cells.append("yes" if row["identical"] else "**no**")
        lines.append(f"| `smmf-plan {name}` | " + " | ".join(cells) + " |")
    if baseline:
        lines.append("")
        for name, row in results.items():
            this, base = row["this"], row["baseline"]
            lines.append(
                f"- `{name}`: replay {base['replay'] / this['replay']:.1f}x faster "
                f"({base['replay'] / base['fresh_events'] * 1e6:.1f} → "
                f"{this['replay'] / this['fresh_events'] * 1e6:.1f} µs an event replayed, "
                f"{base['fresh']} → {this['fresh']} replays); the process's CPU time "
                f"{base['cpu']:.2f} → {this['cpu']:.2f} s ({base['cpu'] / this['cpu']:.2f}x), "
                f"of which replay is now {100 * this['replay'] / this['cpu']:.0f}%.")
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        lines += ["", "The machine was shared (load above the core count): wall times include "
                  "waiting for a core; the CPU times are the figures to compare."]
    lines += ["", END]
    return "\n".join(lines)


def write(section: str) -> None:
    text = REPORT.read_text() if REPORT.exists() else "# Benchmarks\n"
    if START in text:
        a, b = text.index(START), text.index(END) + len(END)
        text = text[:a] + section + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    REPORT.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, help="a checkout of another commit to compare with")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    trees = {"this": ROOT}
    if args.baseline:
        trees["baseline"] = args.baseline.resolve()
    before = os.getloadavg()
    results = bench(trees, args.rounds)
    section = render(results, str(args.baseline) if args.baseline else None,
                     (before, os.getloadavg()), args.rounds)
    write(section)
    print(section)


if __name__ == "__main__":
    main()
