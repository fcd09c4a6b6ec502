"""The CI memory-regression gate behind ``smmf-plan check``: configuration, evaluation, baseline.

A configuration is the ``[tool.smmf-plan]`` table of a ``pyproject.toml`` (or the same keys at the top
level of any TOML file given with ``--config``)::

    [tool.smmf-plan]
    device = "rpi-4-4gb"            # optional default device for every check
    baseline = "reports/check-baseline.json"   # optional default for --baseline
    tolerance = "1%"                # optional default for --tolerance

    [[tool.smmf-plan.checks]]
    name = "mobilenet-finetune"     # optional; defaults to the model string
    model = "mobilenetv2_100"       # anything the CLI takes as MODEL
    optimizer = ["adam", "smmf"]    # one id or a list (default: adam, adafactor, came, sm3, smmf)
    max-state = "5 MiB"             # budget for the optimizer state
    max-total = "1.5 GiB"           # budget for the end-to-end training-step estimate

Metrics (all in bytes, exact integers): ``state`` is the optimizer state the planner counts
(:func:`smmf_plan.plan.plan_state`, logical bytes, the number ``smmf-plan plan`` shows); ``total`` is
the end-to-end training-step estimate of :func:`smmf_plan.memory.estimate` (weights, gradients,
state, activations at ``batch-size``, runtime; rounded as the device's allocator rounds), measured
only for checks with a ``max-total`` or a ``device`` (it traces a forward and backward pass, so
state-only checks stay fast). A check with a ``device`` and no ``max-total`` uses the device's
usable memory as its ``total`` budget.

Outcome per metric: ``FAIL`` when it exceeds its budget or grew past the baseline by more than the
tolerance, ``IMPROVED`` when it shrank below the baseline, ``NEW`` when the baseline has no entry for
it, ``UPDATED`` when ``--update-baseline`` accepted a change, else ``PASS``. The exit code is 1 when
any metric FAILs, 0 otherwise; every configuration or usage problem raises
:class:`~smmf_plan.errors.PlanError` (exit 2).

This module imports no torch at import time; models are loaded only inside :func:`evaluate`.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .atomic import write_text_atomic  # noqa: F401  (part of check's API)
from .errors import PlanError
from .units import format_bytes, parse_size

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 needs the tomli backport
    import tomli as tomllib  # type: ignore[no-redef]

#: version of the baseline file format (and of the JSON report); bump on incompatible changes.
BASELINE_SCHEMA_VERSION = 1
BASELINE_KIND = "smmf-plan check baseline"

#: keys of one ``[[tool.smmf-plan.checks]]`` table.
CHECK_KEYS = (
    "name", "model", "optimizer", "device", "batch-size", "input-size", "seq-len", "dtype",
    "num-classes", "trainable", "freeze", "lora-rank", "lora-targets", "grad-checkpointing",
    "amp", "max-state", "max-total",
)
#: keys of ``[tool.smmf-plan]`` itself. ``devices`` belongs to :mod:`smmf_plan.devices` (user
#: device tables) and is accepted here without being read.
TOP_KEYS = ("device", "baseline", "tolerance", "checks", "devices")

METRICS = ("state", "total")
BUDGET_KEYS = {"state": "max-state", "total": "max-total"}

PASS, FAIL, IMPROVED, NEW, UPDATED = "PASS", "FAIL", "IMPROVED", "NEW", "UPDATED"
STATUSES = (PASS, FAIL, IMPROVED, NEW, UPDATED)


# --------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class Check:
    """One ``[[tool.smmf-plan.checks]]`` entry, validated."""

    id: str
    model: str
    optimizers: tuple[str, ...]
    device: str | None = None
    batch_size: int = 1
    input_size: tuple[int, ...] | None = None
    seq_len: int | None = None
    dtype: str | None = None
    num_classes: int | None = None
    trainable: tuple[str, ...] = ()
    freeze: tuple[str, ...] = ()
    lora_rank: int | None = None
    lora_targets: tuple[str, ...] = ()
    grad_checkpointing: bool = False
    #: mixed precision for the total estimate: "bf16" or "fp16" (fp32 master weights).
    amp: str | None = None
    max_state: int | None = None
    max_total: int | None = None
    #: "pyproject.toml: check 2" — where error messages point.
    where: str = ""

    def budget(self, metric: str) -> int | None:
        return self.max_state if metric == "state" else self.max_total

    def to_dict(self) -> dict:
        return {
            "id": self.id, "model": self.model, "optimizers": list(self.optimizers),
            "device": self.device, "batch_size": self.batch_size,
            "input_size": list(self.input_size) if self.input_size else None,
            "seq_len": self.seq_len, "dtype": self.dtype, "num_classes": self.num_classes,
            "grad_checkpointing": self.grad_checkpointing, "amp": self.amp,
            "max_state_bytes": self.max_state, "max_total_bytes": self.max_total,
        }


@dataclass(frozen=True)
class Tolerance:
    """How much a metric may grow over its baseline: a fraction of it, or a number of bytes."""

    text: str = "0"
    fraction: float | None = None
    nbytes: int | None = 0

    def allowed(self, baseline: int) -> int:
        """Bytes of growth over ``baseline`` still accepted."""
        if self.fraction is not None:
            return int(baseline * self.fraction)
        return int(self.nbytes or 0)

    def to_dict(self) -> dict:
        return {"text": self.text,
                "percent": None if self.fraction is None else self.fraction * 100,
                "bytes": self.nbytes}


@dataclass(frozen=True)
class CheckConfig:
    path: str
    checks: tuple[Check, ...]
    device: str | None = None
    baseline: str | None = None
    tolerance: Tolerance | None = None


def parse_tolerance(text: str | int, what: str = "--tolerance") -> Tolerance:
    """``"1%"``, ``"0.5 %"`` (of the baseline) or a size: ``"2MiB"``, ``"4096"`` (bytes)."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise PlanError(f"{what} {text!r} is not a tolerance: write a percentage such as 1% or a "
                        "size such as 2MiB")
    s = str(text).strip()
    if s.endswith("%"):
        try:
            pct = float(s[:-1])
        except ValueError:
            pct = -1.0
        if not pct >= 0 or pct != pct or pct == float("inf"):
            raise PlanError(f"{what} {text!r} is not a tolerance: write a percentage such as 1% "
                            "or a size such as 2MiB")
        return Tolerance(s, fraction=pct / 100.0, nbytes=None)
    try:
        n = parse_size(s, what)
    except PlanError:
        raise PlanError(f"{what} {text!r} is not a tolerance: write a percentage such as 1% or a "
                        "size such as 2MiB") from None
    return Tolerance(s, fraction=None, nbytes=n)


def _suggest(key: str, valid: Sequence[str]) -> str:
    norm = key.strip().lower().replace("_", "-")
    if norm in valid:
        return f"; did you mean {norm!r}?"
    close = difflib.get_close_matches(norm, list(valid), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f" (valid keys: {', '.join(valid)})"


def _positive_int(value: Any, where: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlanError(f"{where}: {key} = {value!r} must be a positive integer")
    return value


def _string(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PlanError(f"{where}: {key} = {value!r} must be a non-empty string")
    return value.strip()


def _strings(value: Any, where: str, key: str) -> tuple[str, ...]:
    """A string or a list of strings; a string may be comma-separated."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise PlanError(f"{where}: {key} = {value!r} must be a string or a list of strings")
    items = [v for v in items if v]
    if not items:
        raise PlanError(f"{where}: {key} is empty")
    return tuple(items)


def _amp(value: Any, where: str) -> str:
    text = _string(value, where, "amp").lower()
    if text not in ("bf16", "bfloat16", "fp16", "float16"):
        raise PlanError(f"{where}: amp = {value!r} is not a mixed-precision dtype: use \"bf16\" or \"fp16\"")
    return text


def _bool(value: Any, where: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise PlanError(f"{where}: {key} = {value!r} must be true or false")
    return value


def _budget(value: Any, where: str, key: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise PlanError(f"{where}: {key} = {value!r} is not a size: write e.g. \"5 MiB\" or \"1.5 GiB\"")
    try:
        n = parse_size(value, key)
    except PlanError:
        raise PlanError(f"{where}: {key} = {value!r} is not a size: write e.g. \"5 MiB\" or "
                        "\"1.5 GiB\"") from None
    if n <= 0:
        raise PlanError(f"{where}: {key} = {value!r} must be a positive size")
    return n


def _input_size(value: Any, where: str) -> tuple[int, ...]:
    """``[3, 224, 224]``, ``"3x224x224"`` or ``224`` (a square RGB image)."""
    dims: list[Any]
    if isinstance(value, int) and not isinstance(value, bool):
        dims = [3, value, value]
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+(\s*[x×,]\s*\d+)*\s*", value):
        dims = [int(d) for d in re.split(r"[x×,]", value)]
        if len(dims) == 1:
            dims = [3, dims[0], dims[0]]
    elif isinstance(value, list):
        dims = value
    else:
        dims = []
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        raise PlanError(f"{where}: input-size = {value!r} must be e.g. [3, 224, 224], "
                        "\"3x224x224\" or 224")
    return tuple(dims)


def _optimizer_ids(value: Any, where: str) -> tuple[str, ...]:
    from .optimizers import UnknownOptimizer, parse_many

    if value is None:
        texts: list[str] = [""]
    elif isinstance(value, str):
        texts = [value]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        texts = value
    else:
        raise PlanError(f"{where}: optimizer = {value!r} must be an optimizer id or a list of ids")
    ids: list[str] = []
    for text in texts:
        try:
            layouts = parse_many(text or None)
        except UnknownOptimizer as e:
            raise PlanError(f"{where}: optimizer: {e}") from None
        ids += [layout.id for layout in layouts if layout.id not in ids]
    return tuple(ids)


def parse_check(table: Any, where: str, *, base_dir: Path | None = None) -> Check:
    """Validate one check table; ``where`` prefixes every message (``pyproject.toml: check 2``)."""
    if not isinstance(table, dict):
        raise PlanError(f"{where}: must be a table ([[tool.smmf-plan.checks]])")
    name = table.get("name")
    label = f"{where} ({name!r})" if isinstance(name, str) and name.strip() else where
    for key in table:
        if key not in CHECK_KEYS:
            raise PlanError(f"{label}: unknown key {key!r}{_suggest(key, CHECK_KEYS)}")
    if "model" not in table:
        raise PlanError(f"{label}: missing key 'model': add model = \"<timm name, bundled name, "
                        "path or hub id>\"")
    model = _string(table["model"], label, "model")
    if base_dir is not None and not os.path.isabs(os.path.expanduser(model)):
        beside = base_dir / model
        if beside.exists() and not Path(model).exists():
            model = str(beside)
    check_id = _string(name, where, "name") if name is not None else model
    label = f"{where} ({check_id!r})"
    dtype = None
    if "dtype" in table:
        from . import dtypes

        try:
            dtype = dtypes.canonical(_string(table["dtype"], label, "dtype"))
        except ValueError as e:
            raise PlanError(f"{label}: dtype: {e}") from None
        if dtype not in dtypes.FLOATING:
            raise PlanError(f"{label}: dtype = {table['dtype']!r} is not a floating-point dtype: "
                            "use fp32, bf16, fp16 or fp64")
    lora_rank = _positive_int(table["lora-rank"], label, "lora-rank") if "lora-rank" in table else None
    lora_targets = _strings(table["lora-targets"], label, "lora-targets") if "lora-targets" in table else ()
    if (lora_rank is None) != (not lora_targets):
        raise PlanError(f"{label}: lora-rank and lora-targets go together: set both or neither")
    return Check(
        id=check_id,
        model=model,
        optimizers=_optimizer_ids(table.get("optimizer"), label),
        device=_string(table["device"], label, "device") if "device" in table else None,
        batch_size=_positive_int(table["batch-size"], label, "batch-size") if "batch-size" in table else 1,
        input_size=_input_size(table["input-size"], label) if "input-size" in table else None,
        seq_len=_positive_int(table["seq-len"], label, "seq-len") if "seq-len" in table else None,
        dtype=dtype,
        num_classes=_positive_int(table["num-classes"], label, "num-classes") if "num-classes" in table else None,
        trainable=_strings(table["trainable"], label, "trainable") if "trainable" in table else (),
        freeze=_strings(table["freeze"], label, "freeze") if "freeze" in table else (),
        lora_rank=lora_rank,
        lora_targets=lora_targets,
        grad_checkpointing=_bool(table.get("grad-checkpointing", False), label, "grad-checkpointing"),
        amp=_amp(table["amp"], label) if "amp" in table else None,
        max_state=_budget(table["max-state"], label, "max-state") if "max-state" in table else None,
        max_total=_budget(table["max-total"], label, "max-total") if "max-total" in table else None,
        where=label,
    )


def parse_config(table: Any, path: str, *, base_dir: Path | None = None) -> CheckConfig:
    """Validate a ``[tool.smmf-plan]`` table read from ``path``."""
    section = "[tool.smmf-plan]" if os.path.basename(path) == "pyproject.toml" else path
    if not isinstance(table, dict):
        raise PlanError(f"{path}: {section} must be a table")
    for key in table:
        if key not in TOP_KEYS:
            raise PlanError(f"{path}: {section}: unknown key {key!r}{_suggest(key, TOP_KEYS)}")
    checks = table.get("checks")
    if not checks:
        raise PlanError(f"{path}: {section} has no checks: add a [[tool.smmf-plan.checks]] table "
                        "with at least model = \"...\"")
    if not isinstance(checks, list):
        raise PlanError(f"{path}: checks must be an array of tables ([[tool.smmf-plan.checks]])")
    device = _string(table["device"], f"{path}: {section}", "device") if "device" in table else None
    baseline = _string(table["baseline"], f"{path}: {section}", "baseline") if "baseline" in table else None
    if baseline is not None and base_dir is not None and not os.path.isabs(baseline):
        baseline = os.path.relpath(base_dir / baseline) if base_dir != Path(".") else baseline
    tolerance = (parse_tolerance(table["tolerance"], f"{path}: tolerance")
                 if "tolerance" in table else None)
    parsed: list[Check] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(checks, 1):
        check = parse_check(entry, f"{path}: check {i}", base_dir=base_dir)
        if check.id in seen:
            raise PlanError(f"{check.where}: duplicate check name {check.id!r} (also {seen[check.id]}): "
                            "give each check a distinct name = \"...\"")
        seen[check.id] = f"check {i}"
        parsed.append(check)
    return CheckConfig(path=path, checks=tuple(parsed), device=device, baseline=baseline,
                       tolerance=tolerance)


def _toml_error(path: str, e: Exception) -> PlanError:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    line = getattr(e, "lineno", None)
    col = getattr(e, "colno", None)
    m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
    if line is None and m:
        line, col = int(m.group(1)), int(m.group(2))
    msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg)
    msg = re.sub(r"\s*\(at end of document\)", "", msg) if line is None else msg
    loc = f"{path}:{line}:{col}" if line is not None else path
    return PlanError(f"{loc}: malformed TOML: {msg}; fix the syntax")


def read_toml(path: str | Path, shown: str | None = None) -> dict:
    """Parse a TOML file; syntax errors become one-line :class:`PlanError` with ``file:line``
    (the file named as ``shown``, default ``path``)."""
    p = shown or str(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise PlanError(f"{p}: no such file; check --config") from None
    except IsADirectoryError:
        raise PlanError(f"{p}: is a directory; --config takes a TOML file") from None
    except OSError as e:
        raise PlanError(f"{p}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise PlanError(f"{p}: not UTF-8 text; TOML files must be UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise _toml_error(p, e) from None


def find_pyproject(start: str | Path | None = None) -> Path | None:
    """The nearest ``pyproject.toml`` at or above ``start`` (default: the current directory)."""
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        if (d / "pyproject.toml").is_file():
            return d / "pyproject.toml"
    return None


def _display(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # pragma: no cover - other drive on Windows
        return str(path)


def load_config(path: str | Path | None = None) -> CheckConfig:
    """Read the checks from ``path`` or, when ``None``, from the nearest ``pyproject.toml``.

    A file named ``pyproject.toml`` is read from its ``[tool.smmf-plan]`` table; any other TOML file
    may hold the same keys at its top level or under ``[tool.smmf-plan]``. Relative model paths and
    the ``baseline`` path are taken relative to the configuration file's directory."""
    if path is None:
        found = find_pyproject()
        if found is None:
            raise PlanError("no pyproject.toml here or above: add [[tool.smmf-plan.checks]] to one, "
                            "or pass --config FILE")
        p = found
    else:
        p = Path(path)
    shown = _display(p) if path is None else str(path)
    doc = read_toml(p, shown)
    tool = doc.get("tool") if isinstance(doc.get("tool"), dict) else {}
    if "smmf-plan" in tool:
        table = tool["smmf-plan"]
    elif p.name == "pyproject.toml":
        raise PlanError(f"{shown}: has no [tool.smmf-plan] section: add [[tool.smmf-plan.checks]] "
                        "tables (see the README), or pass --config FILE")
    else:
        table = {k: v for k, v in doc.items() if k != "tool"}
    base = p.resolve().parent
    cwd = Path(os.getcwd()).resolve()
    return parse_config(table, shown, base_dir=Path(".") if base == cwd else base)


# --------------------------------------------------------------------------- evaluation

@dataclass(frozen=True)
class Measurement:
    """What one check measured for one optimizer: metric → bytes."""

    check: str
    optimizer: str
    values: Mapping[str, int]


@dataclass
class Evaluated:
    """One check's measurements, with what the budgets come from."""

    check: Check
    measurements: list[Measurement]
    #: ``Device.reference()`` of the check's device, or None.
    device: dict | None = None
    #: budget for ``total`` taken from the device (usable bytes) when no max-total is set.
    device_budget: int | None = None
    model_summary: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: the step estimate behind the ``total`` metric (a MemoryEstimate), or None.
    estimate: Any = None

    def budget(self, metric: str) -> tuple[int | None, str | None]:
        """``(bytes, source)``: source is ``"max-state"``, ``"max-total"``, ``"device"`` or None."""
        b = self.check.budget(metric)
        if b is not None:
            return b, BUDGET_KEYS[metric]
        if metric == "total" and self.device_budget is not None:
            return self.device_budget, "device"
        return None, None


def _memory_estimate() -> Callable | None:
    """:func:`smmf_plan.memory.estimate` when that module is installed, else None."""
    try:
        from . import memory  # type: ignore[attr-defined]
    except ImportError:
        return None
    return getattr(memory, "estimate", None)


def _resolve_device(text: str, where: str, search_from: str | Path | None = None):
    from .devices import get_device

    try:
        return get_device(text, search_from=search_from)
    except PlanError as e:
        raise PlanError(f"{where}: device: {e}") from None


def _load_spec(check: Check, use_cache: bool, memo: dict | None):
    """The check's ModelSpec; ``memo`` shares one load between checks of the same model."""
    import copy

    from .sources import load_model

    key = (check.model, check.num_classes, check.trainable, check.freeze, check.lora_rank,
           check.lora_targets)
    if memo is not None and key in memo:
        return copy.deepcopy(memo[key])
    try:
        spec = load_model(check.model, num_classes=check.num_classes, trainable=check.trainable,
                          freeze=check.freeze, lora_rank=check.lora_rank,
                          lora_targets=check.lora_targets, use_cache=use_cache)
    except PlanError as e:
        raise PlanError(f"{check.where}: model {check.model!r}: {e}") from None
    if memo is not None:
        memo[key] = copy.deepcopy(spec)
    return spec


def evaluate_check(check: Check, *, default_device: str | None = None, use_cache: bool = True,
                   search_from: str | Path | None = None, memo: dict | None = None) -> Evaluated:
    """Load the check's model (no weights) and measure every metric for each of its optimizers.

    Device ids are looked up in the catalog and in the ``[tool.smmf-plan.devices]`` of the
    pyproject.toml nearest ``search_from`` (the configuration file's directory)."""
    from .optimizers import parse
    from .plan import plan_state, with_dtype

    device_text = check.device or default_device
    device = _resolve_device(device_text, check.where, search_from) if device_text else None
    spec = _load_spec(check, use_cache, memo)
    spec.params = with_dtype(spec.params, check.dtype)
    layouts = [parse(i) for i in check.optimizers]
    values: dict[str, dict[str, int]] = {
        layout.id: {"state": plan_state(spec.params, layout).state_bytes} for layout in layouts}
    notes: list[str] = []
    est = None
    estimate = _memory_estimate() if check.max_total is not None or device is not None else None
    if estimate is not None:
        kwargs: dict[str, Any] = {"batch_size": check.batch_size, "input_size": check.input_size,
                                  "seq_len": check.seq_len, "dtype": check.dtype}
        if check.grad_checkpointing:
            kwargs["grad_checkpointing"] = True
        if check.amp is not None:
            kwargs["amp"] = check.amp
        if device is not None:
            kwargs["allocator"] = device.allocator
        try:
            est = estimate(spec, layouts, **kwargs)
        except PlanError as e:
            raise PlanError(f"{check.where}: {e}") from None
        for oid, step in est.steps().items():
            values[oid]["total"] = step.total_bytes
    elif check.max_total is not None or device is not None:
        raise PlanError(f"{check.where}: max-total/device need the end-to-end estimate "
                        "(smmf_plan.memory), which this installation lacks; use max-state only")
    return Evaluated(
        check=check,
        measurements=[Measurement(check.id, lid, v) for lid, v in values.items()],
        device=device.reference() if device is not None else None,
        device_budget=device.usable_bytes if device is not None else None,
        model_summary=spec.summary(),
        notes=notes,
        estimate=est,
    )


def evaluate(config: CheckConfig, *, use_cache: bool = True,
             progress: Callable[[Check], None] | None = None) -> list[Evaluated]:
    """Evaluate every check of ``config`` in order (a configuration error stops at the first)."""
    out: list[Evaluated] = []
    memo: dict = {}
    for check in config.checks:
        if progress is not None:
            progress(check)
        out.append(evaluate_check(check, default_device=config.device, use_cache=use_cache,
                                  search_from=Path(config.path).resolve().parent, memo=memo))
    return out


# --------------------------------------------------------------------------- baseline

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
        raise PlanError(f"baseline {p} does not exist: create it with --update-baseline") from None
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
    from . import __version__

    checks: dict[str, Any] = {}
    for ev in evaluated:
        checks[ev.check.id] = {
            "model": ev.check.model,
            "optimizers": {m.optimizer: {f"{k}_bytes": v for k, v in sorted(m.values.items())}
                           for m in ev.measurements},
        }
    return {"schema_version": BASELINE_SCHEMA_VERSION, "kind": BASELINE_KIND,
            "generator": f"smmf-plan {__version__}", "checks": checks}



def write_json_atomic(path: str | Path, document: Any) -> None:
    """Write ``document`` as JSON to ``path`` so that readers only ever see the old file or the
    complete new one: serialize into a temporary file in the same directory, flush and fsync it,
    then ``os.replace`` it over ``path`` (and fsync the directory where the OS allows). If anything
    fails before the rename, the temporary file is removed and ``path`` is untouched."""
    write_text_atomic(path, lambda f: (json.dump(document, f, indent=2, sort_keys=False), f.write("\n")))


def write_baseline(path: str | Path, evaluated: Sequence[Evaluated]) -> dict:
    """Atomically (re)write the baseline for ``evaluated``; returns the document written."""
    doc = baseline_document(evaluated)
    parent = Path(path).parent
    if str(parent) and not parent.is_dir():
        raise PlanError(f"baseline {path}: directory {parent} does not exist; create it first")
    try:
        write_json_atomic(path, doc)
    except OSError as e:
        raise PlanError(f"baseline {path}: cannot write ({e.strerror or e})") from None
    return doc


# --------------------------------------------------------------------------- comparison

def _pct(delta: int, ref: int) -> str:
    if ref <= 0:
        return "new" if delta else "±0%"
    p = 100.0 * delta / ref
    a = abs(p)
    if a >= 10 or a == 0:
        return f"{p:+.0f}%"
    if a >= 0.1:
        return f"{p:+.1f}%"
    return f"{p:+.2g}%"


def _signed_bytes(n: int) -> str:
    return ("+" if n >= 0 else "-") + format_bytes(abs(n))


@dataclass(frozen=True)
class Result:
    """One row: a check × optimizer × metric, judged against its budget and baseline."""

    check: str
    optimizer: str
    metric: str
    now: int
    budget: int | None
    budget_source: str | None
    baseline: int | None
    status: str
    #: why it failed / changed; "" for a plain PASS.
    message: str = ""
    #: "budget" or "regression" for a FAIL.
    failure: str | None = None

    @property
    def delta(self) -> int | None:
        return None if self.baseline is None else self.now - self.baseline

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def to_dict(self) -> dict:
        d = self.delta
        return {
            "check": self.check, "optimizer": self.optimizer, "metric": self.metric,
            "now_bytes": self.now, "budget_bytes": self.budget, "budget_source": self.budget_source,
            "baseline_bytes": self.baseline, "delta_bytes": d,
            "delta_ratio": (d / self.baseline) if d is not None and self.baseline else None,
            "status": self.status, "failure": self.failure, "message": self.message or None,
        }


@dataclass
class CheckReport:
    config: CheckConfig
    evaluated: list[Evaluated]
    results: list[Result]
    tolerance: Tolerance
    baseline_path: str | None = None
    baseline_updated: bool = False
    #: baseline entries no configured check produced: (check, optimizer, metric).
    stale: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def failures(self) -> list[Result]:
        return [r for r in self.results if r.failed]

    @property
    def exit_code(self) -> int:
        """1 when any metric is over budget or regressed beyond tolerance, else 0."""
        return 1 if self.failures else 0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def hints(self) -> list[str]:
        out = []
        if self.baseline_updated:
            out.append(f"baseline {self.baseline_path} rewritten with these results; commit it")
            return out
        where = f" --baseline {self.baseline_path}" if self.baseline_path else ""
        if self.count(IMPROVED):
            out.append(f"{self.count(IMPROVED)} metric(s) improved on the baseline: run "
                       f"smmf-plan check{where} --update-baseline and commit it to lock the gain in")
        if self.count(NEW):
            out.append(f"{self.count(NEW)} metric(s) have no baseline entry yet: run "
                       f"smmf-plan check{where} --update-baseline to record them")
        if self.stale:
            checks = sorted({c for c, _, _ in self.stale})
            out.append(f"the baseline has entries for no configured check/optimizer "
                       f"({', '.join(checks)}): --update-baseline drops them")
        return out

    def summary(self) -> str:
        n = len(self.results)
        if self.failures:
            return f"FAIL: {len(self.failures)} of {n} metric(s) over budget or regressed"
        extra = [f"{self.count(s)} {s.lower()}" for s in (IMPROVED, NEW, UPDATED) if self.count(s)]
        return f"PASS: {n} metric(s) within budget" + (
            " and baseline" if self.baseline_path and not self.baseline_updated else "") + (
            f" ({', '.join(extra)})" if extra else "")


def judge(check: str, optimizer: str, metric: str, now: int, budget: int | None,
          budget_source: str | None, baseline: int | None, tolerance: Tolerance, *,
          has_baseline: bool, updating: bool = False, budget_label: str | None = None) -> Result:
    """The status of one metric. Budget first (a budget failure is never waived by updating the
    baseline), then the baseline with its tolerance."""
    who = f"{check} [{optimizer}]"
    label = budget_label or (budget_source or "budget")
    if budget is not None and now > budget:
        over = now - budget
        msg = (f"{who}: {metric} {format_bytes(now)} > {label} {format_bytes(budget)} "
               f"({_signed_bytes(over)}, {_pct(over, budget)})")
        return Result(check, optimizer, metric, now, budget, budget_source, baseline, FAIL, msg, "budget")
    if not has_baseline:
        return Result(check, optimizer, metric, now, budget, budget_source, None, PASS)
    if baseline is None:
        if updating:
            return Result(check, optimizer, metric, now, budget, budget_source, None, UPDATED,
                          f"{who}: {metric} {format_bytes(now)} recorded in the baseline")
        return Result(check, optimizer, metric, now, budget, budget_source, None, NEW,
                      f"{who}: {metric} {format_bytes(now)} has no baseline entry")
    delta = now - baseline
    change = (f"{who}: {metric} {format_bytes(baseline)} → {format_bytes(now)} "
              f"({_signed_bytes(delta)}, {_pct(delta, baseline)})")
    if delta != 0 and updating:
        return Result(check, optimizer, metric, now, budget, budget_source, baseline, UPDATED,
                      change + "; baseline updated")
    if delta > tolerance.allowed(baseline):
        return Result(check, optimizer, metric, now, budget, budget_source, baseline, FAIL,
                      f"{change} grew beyond the tolerance of {tolerance.text} over the baseline",
                      "regression")
    if delta < 0:
        return Result(check, optimizer, metric, now, budget, budget_source, baseline, IMPROVED,
                      change + " improved on the baseline")
    msg = f"{change} within the tolerance of {tolerance.text}" if delta > 0 else ""
    return Result(check, optimizer, metric, now, budget, budget_source, baseline, PASS, msg)


def compare(config: CheckConfig, evaluated: Sequence[Evaluated], baseline: Baseline | None,
            tolerance: Tolerance, *, updating: bool = False) -> CheckReport:
    """Judge every measured metric against its budget and ``baseline`` (None: budgets only)."""
    results: list[Result] = []
    produced: set[tuple[str, str, str]] = set()
    for ev in evaluated:
        for m in ev.measurements:
            for metric in METRICS:
                if metric not in m.values:
                    continue
                produced.add((m.check, m.optimizer, metric))
                budget, source = ev.budget(metric)
                label = (f"usable memory of {ev.device['id']}" if source == "device" and ev.device
                         else source)
                results.append(judge(
                    m.check, m.optimizer, metric, m.values[metric], budget, source,
                    baseline.get(m.check, m.optimizer, metric) if baseline else None, tolerance,
                    has_baseline=baseline is not None or updating, updating=updating,
                    budget_label=label))
    stale = sorted(baseline.keys() - produced) if baseline is not None else []
    return CheckReport(config=config, evaluated=list(evaluated), results=results,
                       tolerance=tolerance,
                       baseline_path=baseline.path if baseline is not None else None,
                       baseline_updated=False, stale=stale)


def run(config: CheckConfig, *, baseline_path: str | None = None, tolerance: Tolerance | None = None,
        update_baseline: bool = False, use_cache: bool = True,
        progress: Callable[[Check], None] | None = None) -> CheckReport:
    """Evaluate ``config``, compare with the baseline (``baseline_path`` or the config's), and
    rewrite the baseline when ``update_baseline``. Budgets still decide the exit code when updating.
    Configuration problems (including a missing baseline without ``update_baseline``) raise
    :class:`PlanError` before anything is written."""
    path = baseline_path or config.baseline
    tol = tolerance or config.tolerance or Tolerance()
    if update_baseline and not path:
        raise PlanError("--update-baseline needs a baseline file: pass --baseline FILE or set "
                        "baseline = \"...\" under [tool.smmf-plan]")
    old: Baseline | None = None
    if path:
        parent = Path(path).parent
        if update_baseline and str(parent) and not parent.is_dir():
            raise PlanError(f"baseline {path}: directory {parent} does not exist; create it first")
        if not (update_baseline and not os.path.exists(path)):
            old = load_baseline(path)
    evaluated = evaluate(config, use_cache=use_cache, progress=progress)
    report = compare(config, evaluated, old, tol, updating=update_baseline)
    if update_baseline:
        assert path is not None
        write_baseline(path, evaluated)
        report.baseline_updated = True
        report.stale = []
    report.baseline_path = path
    return report
