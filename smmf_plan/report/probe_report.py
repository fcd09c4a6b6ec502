"""Renderers for the probe document (:func:`smmf_plan.probe.runner.run_probe`): a rich table of
predicted vs measured with the error in percent, and a Markdown report.

Statuses are written in words and symbols (✓ ok / ✗ OOM / ! error) as well as colour, so the table
reads in monochrome. The measured peak is compared with the predicted total minus the predicted
runtime (the measurement subtracts the runtime baseline taken before the model exists).
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from ..units import format_bytes
from .breakdown_md import breakdown_table, legend, mib

METHOD_NOTES = (
    "Each optimizer ran in a fresh subprocess (`python -m smmf_plan.probe.worker`) on the same "
    "random-initialised model and the same synthetic batch (fixed seeds), so peaks do not mix.",
    "**State** is the exact byte count of every tensor in `optimizer.state` after the last step.",
    "**Peak** (CPU) is the peak resident-set growth over a baseline taken after imports and a "
    "warm-up op, before the model is created: `/proc/self/clear_refs` ← `5` resets `VmHWM`, which "
    "is read after model creation and after every step; the largest growth is reported. It counts "
    "every resident page (tensors, allocator slack, glibc arenas), so it is what the machine must "
    "provide beyond the runtime. On CUDA it is `torch.cuda.max_memory_allocated` over the same "
    "window.",
    "**Predicted peak** is the estimate's total minus the runtime that exists before the "
    "baseline (PyTorch and the model library; on CUDA the cuBLAS workspaces); its step-overhead "
    "term stays in. **Error** is 100 × (measured − predicted) / predicted.",
    "**Totals** add the runtime: measured, this process's RSS after imports (on this machine a "
    "CUDA build of torch, far larger than a CPU-only one); predicted, the estimate's stated "
    "CPU-only runtime. The peak columns are the like-for-like comparison.",
    "CPU runs use `MALLOC_MMAP_THRESHOLD_=131072` (what the estimate assumes; `--glibc-default` "
    "measures glibc's default instead, which keeps freed memory resident).",
    "**fwd+bwd** and **opt.step** are medians over steps 2..N; step 1 is a warm-up (lazy state "
    "allocation, first-touch page faults) and is excluded.",
)


def _mib(n) -> str:
    return format_bytes(n, unit="MiB", suffix=False)


def _pct(x) -> str:
    return "–" if x is None else f"{x:+.1f}%"


def _ms(x) -> str:
    return "–" if x is None else (f"{x:,.0f}" if x >= 100 else f"{x:.1f}")


def status_text(entry: dict) -> str:
    st = entry.get("status")
    if st == "ok":
        return "✓ " + ("fits" if entry.get("verdict") == "fits" else "ok")
    if st == "oom":
        step = entry.get("at_step")
        return f"✗ OOM at step {step}" if step else "✗ OOM at setup"
    return "! error"


def _losses(m: dict | None) -> str:
    if not m or not m.get("losses"):
        return "–"
    ls = m["losses"]
    return f"{ls[0]:.3g} → {ls[-1]:.3g}"


def header_line(doc: dict) -> str:
    mo, inp, st = doc["model"], doc["input"], doc["settings"]
    shape = ("×".join(str(x) for x in inp["input_size"]) if inp.get("input_size")
             else f"{inp.get('seq_len')} tokens")
    cap = ""
    if st.get("cap_bytes") is not None:
        dev = st.get("device") or {}
        cap = f" · cap {format_bytes(st['cap_bytes'])} ({st.get('cap_method')}" + \
              (f", {dev.get('id')}" if dev.get("id") else "") + ")"
    return (f"{mo['name']} ({mo.get('library') or mo.get('source')}) · "
            f"{mo['num_params'] / 1e6:.2f} M params · {inp['task']} · batch {inp['batch_size']} · "
            f"{shape} · {st['steps']} steps on {st['device_type']}{cap}")


def rows(doc: dict) -> list[list[str]]:
    out = []
    for oid, e in doc["optimizers"].items():
        p, m, err = e.get("predicted") or {}, e.get("measured") or {}, e.get("error_pct") or {}
        out.append([
            oid, status_text(e),
            mib(p.get("state_bytes")), mib(m.get("state_bytes")), _pct(err.get("state_bytes")),
            mib(p.get("peak_bytes")), mib(m.get("peak_bytes")), _pct(err.get("peak_bytes")),
            _ms(m.get("step_ms")), _ms(m.get("optimizer_step_ms")), _losses(m),
        ])
    return out


COLUMNS = ["optimizer", "status", "state pred. MiB", "state meas. MiB", "state err",
           "peak pred. MiB", "peak meas. MiB", "peak err", "fwd+bwd ms", "opt.step ms",
           "loss first → last"]


#: the terminal table's columns (indices into :func:`rows`) and their two-line headers; the
#: planned state is left out there (its error column says whether it matched) to fit 100 columns.
TERMINAL = [(0, "optimizer"), (1, "status"), (3, "state\nMiB"), (4, "state\nerr"),
            (5, "peak\nplan"), (6, "peak\nmeas."), (7, "peak\nerr"), (8, "fwd+bwd\nms"),
            (9, "opt.step\nms"), (10, "loss\nfirst → last")]


def probe_table(doc: dict):
    """A rich table: one row per optimizer (sizes in MiB)."""
    t = Table(title=header_line(doc), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table_rows = rows(doc)
    for i, head in TERMINAL:
        # numbers never shrink below their width (the loss column wraps instead)
        widest = max((len(r[i]) for r in table_rows), default=1) if i != 10 else None
        t.add_column(head, justify="left" if i in (0, 1, 10) else "right", no_wrap=i != 10,
                     min_width=widest)
    for row, e in zip(table_rows, doc["optimizers"].values()):
        style = {"ok": "green", "oom": "red"}.get(e.get("status"), "yellow")
        cells = [row[i] for i, _ in TERMINAL]
        t.add_row(cells[0], Text(cells[1], style=style), *cells[2:])
    t.caption = ("sizes in MiB · ✓ ran · ✗ out of memory · ! error · peak = growth over the "
                 "runtime baseline · times: medians, warm-up step 1 excluded")
    return t


def rank_table(doc: dict):
    """A rich table for ``probe --dist``: one row per optimizer and rank (state in bytes, exact;
    the step peak in MiB, planned beside measured)."""
    st, mo = doc["settings"], doc["model"]
    title = (f"{mo['name']} · {mo['num_params'] / 1e6:.2f} M params · {st['dist']} over "
             f"{st['world']} ranks ({st['backend']}) · batch {doc['input']['batch_size']} per rank · "
             f"{st['steps']} steps")
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
              padding=(0, 0))
    rows_ = []
    for oid, e in doc["optimizers"].items():
        for row in e["ranks"]:
            m, p, err = row.get("measured") or {}, row["predicted"], row["error_pct"]
            state = m.get("state_bytes")
            rows_.append((row["status"] == "ok", [
                oid, str(row["rank"]), "✓ ok" if row["status"] == "ok" else "! error",
                "–" if state is None else f"{state:,}", _pct(err.get("state_bytes")),
                mib(p.get("peak_bytes")), mib(m.get("peak_bytes")), _pct(err.get("peak_bytes")),
                _ms(m.get("optimizer_step_ms")), _losses(m)]))
    # the planned state is left out (its error column says whether it matched) to fit 80 columns
    heads = ("optimizer", "rank", "status", "state\nmeas. B", "state\nerr", "peak\nplan",
             "peak\nmeas.", "peak\nerr", "opt.step\nms", "loss\nfirst → last")
    for i, head in enumerate(heads):
        last = i == len(heads) - 1
        widest = None if last else max((len(cells[i]) for _, cells in rows_), default=1)
        t.add_column(head, justify="left" if i in (0, 2) or last else "right", no_wrap=not last,
                     min_width=widest)
    for ok, cells in rows_:
        t.add_row(*cells[:2], Text(cells[2], style="green" if ok else "yellow"), *cells[3:])
    t.caption = ("state: bytes of optimizer.state on the rank (DTensor state by its local shard) · "
                 "peak (MiB): RSS growth over the rank's baseline, planned as the rank's step "
                 f"under {st.get('allocator', 'glibc')} minus the imports · losses: the mean over "
                 "ranks")
    return t


def rank_verdicts(doc: dict) -> list[str]:
    """One line per optimizer of ``probe --dist``: does each rank's state equal its plan, and is
    each rank's measured step peak within its planned one?"""
    out = []
    for oid, e in doc["optimizers"].items():
        if e["status"] != "ok":
            continue
        ranks = e["ranks"]
        off = [r for r in ranks if r["measured"]["state_bytes"] != r["predicted"]["state_bytes"]]
        if not off:
            line = (f"{oid}: optimizer state equals the plan on all {len(ranks)} ranks "
                    f"(largest {format_bytes(e['measured']['state_bytes'])})")
        else:
            line = (f"{oid}: optimizer state differs from the plan on rank(s) "
                    + ", ".join(str(r["rank"]) for r in off))
        pairs = [(r["rank"], r["measured"].get("peak_bytes"), r["predicted"].get("peak_bytes"))
                 for r in ranks]
        if all(m is not None and p for _, m, p in pairs):
            over = [str(r) for r, m, p in pairs if m > p]
            ratios = [p / m for _, m, p in pairs if m]
            line += ("; step peak " + ("within the plan on every rank" if not over else
                                       f"above the plan on rank(s) {', '.join(over)}")
                     + f" (planned / measured {min(ratios):.2f}-{max(ratios):.2f})")
        out.append(line)
    return out


def _problem(oid: str, e: dict) -> str:
    msg = e.get("error") or ""
    return f"{oid}: {e.get('verdict')}" + (f" — {msg}" if msg and e["status"] == "oom" else "")


def problems(doc: dict) -> list[str]:
    """One line per optimizer that did not finish (its verdict and message)."""
    return [_problem(oid, e) for oid, e in doc["optimizers"].items() if e.get("status") != "ok"]


def failed(doc: dict, entry: dict) -> bool:
    """Whether an optimizer could not run: an error, or an out-of-memory without a ``--device``
    cap (the host itself ran out). An OOM under a cap is the verdict asked for ("does not fit")."""
    capped = (doc.get("settings") or {}).get("cap_bytes") is not None
    return entry.get("status") == "error" or (entry.get("status") == "oom" and not capped)


def failures(doc: dict) -> list[str]:
    """The :func:`problems` that make ``smmf-plan probe`` exit 1."""
    return [_problem(oid, e) for oid, e in doc["optimizers"].items() if failed(doc, e)]


def verdicts(doc: dict) -> list[str]:
    """The :func:`problems` that are answers, not failures (OOM under a cap)."""
    return [_problem(oid, e) for oid, e in doc["optimizers"].items()
            if e.get("status") not in ("ok", None) and not failed(doc, e)]


def markdown(doc: dict, *, command: str | None = None) -> str:
    """The probe's Markdown report."""
    mo, st, host = doc["model"], doc["settings"], doc.get("host") or {}
    lines = [f"# Probe: {mo['name']} on {st['device_type']}", ""]
    if command:
        lines += ["Generated by:", "", "```", command, "```", ""]
    lines += [f"- Model: {header_line(doc)}",
              f"- Host: {host.get('cpu')}, {host.get('cores')} cores, Python {host.get('python')}, "
              f"torch {host.get('torch')}"]
    if st.get("cap_bytes") is not None:
        lines.append(f"- Memory cap: {format_bytes(st['cap_bytes'])} via {st.get('cap_method')}")
    lrs = ", ".join(f"{k} {e.get('lr'):g}" for k, e in doc["optimizers"].items() if e.get("lr"))
    lines += [f"- Learning rates: {lrs}", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |",
              "|" + "|".join("---" if i in (0, 1, 10) else "---:" for i in range(len(COLUMNS))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows(doc)]
    lines.append("")
    for p in problems(doc):
        lines.append(f"- {p}")
    predicted = {oid: (e.get("predicted") or {}).get("breakdown") for oid, e in doc["optimizers"].items()}
    predicted = {oid: bd for oid, bd in predicted.items() if bd}
    if predicted:
        lines += ["", "## Predicted breakdown (MiB)", "", *breakdown_table(predicted), "",
                  *legend(predicted)]
    lines += ["", "## Measured per step", "",
              "| optimizer | step | loss | peak growth MiB |", "|---|---:|---:|---:|"]
    for oid, e in doc["optimizers"].items():
        m = e.get("measured") or {}
        peaks = m.get("step_peak_bytes") or []
        for i, loss in enumerate(m.get("losses") or []):
            lines.append(f"| {oid} | {i + 1} | {loss:.5g} | {_mib(peaks[i]) if i < len(peaks) else '–'} |")
    rt = next(((e.get("measured") or {}).get("runtime_bytes") for e in doc["optimizers"].values()
               if (e.get("measured") or {}).get("runtime_bytes")), None)
    lines += ["", "## Method", ""] + [f"- {n}" for n in METHOD_NOTES]
    if rt:
        lines.append(f"- Runtime baseline (VmRSS after imports, not part of the peak): {_mib(rt)} MiB.")
    return "\n".join(lines) + "\n"


def summary(doc: dict) -> dict[str, Any]:
    """Compact figures per optimizer (for logs and tests)."""
    return {oid: {"status": e.get("status"), "state": (e.get("measured") or {}).get("state_bytes"),
                  "peak": (e.get("measured") or {}).get("peak_bytes")}
            for oid, e in doc["optimizers"].items()}
