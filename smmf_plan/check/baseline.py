"""``smmf-plan check`` baseline: the committed JSON file of every check's measurements, read and
validated, and rewritten atomically (readers see the old file or the new one, never half)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import __version__
from ..atomic import write_json_atomic
from ..errors import PlanError
from .evaluate import Evaluated

#: version of the baseline file format (and of the JSON report); bump on incompatible changes.
BASELINE_SCHEMA_VERSION = 1
BASELINE_KIND = "smmf-plan check baseline"


@dataclass(frozen=True)
class Baseline:
    path: str
    #: check id → optimizer id → metric → bytes.
    entries: Mapping[str, Mapping[str, Mapping[str, int]]]

    def get(self, check: str, optimizer: str, metric: str) -> int | None:
        return self.entries.get(check, {}).get(optimizer, {}).get(metric)

    def keys(self) -> set[tuple[str, str, str]]:
        return {(c, o, m) for c, opts in self.entries.items() for o, ms in opts.items() for m in ms}


def load_baseline(path: str | Path) -> Baseline:
    """Read and validate a baseline file; anything wrong with it is a :class:`PlanError`."""
    p = str(path)
    try:
        with open(p, "rb") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise PlanError(f"baseline {p} does not exist: record the current numbers with "
                        "'smmf-plan check --update-baseline' and commit the file") from None
    except OSError as e:
        raise PlanError(f"baseline {p}: cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PlanError(f"baseline {p}: not valid JSON ({str(e).splitlines()[0]}); restore it from "
                        "version control or rewrite it with --update-baseline") from None
    if not isinstance(doc, dict) or doc.get("schema_version") != BASELINE_SCHEMA_VERSION:
        got = doc.get("schema_version") if isinstance(doc, dict) else None
        raise PlanError(f"baseline {p}: schema_version {got!r} is not {BASELINE_SCHEMA_VERSION}; "
                        "rewrite it with --update-baseline")
    checks = doc.get("checks")
    if not isinstance(checks, dict):
        raise PlanError(f"baseline {p}: 'checks' must be an object; rewrite it with --update-baseline")
    entries: dict[str, dict[str, dict[str, int]]] = {}
    for cid, entry in checks.items():
        opts = entry.get("optimizers") if isinstance(entry, dict) else None
        if not isinstance(opts, dict):
            raise PlanError(f"baseline {p}: checks.{cid}.optimizers must be an object")
        entries[cid] = {}
        for oid, metrics in opts.items():
            if not isinstance(metrics, dict) or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in metrics.values()):
                raise PlanError(f"baseline {p}: checks.{cid}.optimizers.{oid} must map metric names "
                                "to byte counts (non-negative integers)")
            entries[cid][oid] = {m.removesuffix("_bytes"): v for m, v in metrics.items()}
    return Baseline(p, entries)


def baseline_document(evaluated: Sequence[Evaluated]) -> dict:
    """The baseline file's content for these results: sorted, without timestamps, so that an
    unchanged result rewrites the identical file."""
    checks: dict[str, Any] = {}
    for ev in evaluated:
        checks[ev.check.id] = {
            "model": ev.check.model,
            "optimizers": {m.optimizer: {f"{k}_bytes": v for k, v in sorted(m.values.items())}
                           for m in ev.measurements},
        }
    return {"schema_version": BASELINE_SCHEMA_VERSION, "kind": BASELINE_KIND,
            "generator": f"smmf-plan {__version__}", "checks": checks}



def missing_parents(path: str | Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet, outermost first; a file in the way is a
    :class:`PlanError`."""
    path = Path(path)
    missing = []
    for folder in [*path.parents][::-1]:
        if folder.is_dir():
            continue
        if folder.exists():
            raise PlanError(f"baseline {path}: {folder} is a file, not a directory; choose another "
                            "baseline path")
        missing.append(folder)
    return missing


def write_baseline(path: str | Path, evaluated: Sequence[Evaluated]) -> dict:
    """Atomically (re)write the baseline for ``evaluated``; returns the document written. Missing
    parent folders (``reports/`` in a fresh project) are created, and removed again if the write
    fails, so a failure leaves nothing behind."""
    doc = baseline_document(evaluated)
    created = missing_parents(path)
    try:
        for folder in created:
            folder.mkdir()
        write_json_atomic(path, doc)
    except OSError as e:
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                pass
        raise PlanError(f"baseline {path}: cannot write ({e.strerror or e})") from None
    return doc

