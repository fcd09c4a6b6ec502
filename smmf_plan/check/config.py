"""``smmf-plan check`` configuration: the ``[tool.smmf-plan]`` table of a pyproject.toml (or the same
keys in any TOML file), read and validated into :class:`CheckConfig` (see :mod:`smmf_plan.check`)."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .. import dtypes
from ..allocators.models import get_model
from ..errors import PlanError
from ..fit import check_batch_size
from ..optimizers import UnknownOptimizer, parse_many
from ..options import DistOptions, ModelOptions, StepOptions
from ..recipe import OFFLOADS, QUANTIZATIONS
from ..tasks import check_task
from ..tomlfile import find_pyproject, read_toml, tool_table
from ..trace import parse_input_size
from ..units import config_size, parse_size

#: keys of one ``[[tool.smmf-plan.checks]]`` table.
CHECK_KEYS = (
    "name", "model", "optimizer", "device", "batch-size", "input-size", "seq-len", "dtype",
    "num-classes", "task", "trainable", "freeze", "lora-rank", "lora-targets", "target",
    "quantize-base", "double-quant", "grad-checkpointing", "amp", "grad-accum", "offload",
    "host-memory", "allocator", "dist", "world", "nodes", "shard-group", "bucket-cap-mb",
    "reshard-after-forward", "max-state", "max-total", "max-host",
)
#: keys of ``[tool.smmf-plan]`` itself. ``devices`` belongs to :mod:`smmf_plan.devices` (user
#: device tables) and is accepted here without being read.
TOP_KEYS = ("device", "baseline", "tolerance", "checks", "devices")

#: ``state``: logical optimizer state; ``total``: the device's bytes of the step; ``host``: what an
#: offloading recipe keeps on the host (measured only with ``offload``).
METRICS = ("state", "total", "host")
BUDGET_KEYS = {"state": "max-state", "total": "max-total", "host": "max-host"}


@dataclass(frozen=True)
class Check:
    """One ``[[tool.smmf-plan.checks]]`` entry, validated: the model options and the training
    step (the same records the command line builds), the device and the budgets."""

    id: str
    #: the model, how it is trained, and the optimizer ids (a tuple, in the configured order).
    options: ModelOptions
    #: the step the ``total`` metric estimates (batch 1 unless configured).
    step: StepOptions = StepOptions()
    #: distributed training (``dist``/``world``/``nodes``/``shard-group``): both metrics are then
    #: the largest rank's.
    dist: DistOptions = DistOptions()
    device: str | None = None
    max_state: int | None = None
    max_total: int | None = None
    max_host: int | None = None
    #: "pyproject.toml: check 2" — where error messages point.
    where: str = ""

    @property
    def model(self) -> str:
        return self.options.model

    @property
    def optimizers(self) -> tuple[str, ...]:
        return tuple(self.options.optimizers or ())

    def budget(self, metric: str) -> int | None:
        return {"state": self.max_state, "total": self.max_total, "host": self.max_host}[metric]

    def to_dict(self) -> dict:
        m, s = self.options, self.step
        return {
            "id": self.id, "model": self.model, "optimizers": list(self.optimizers),
            "device": self.device, "batch_size": s.batch,
            "input_size": list(s.input_size) if s.input_size else None,
            "seq_len": s.seq_len, "dtype": m.dtype, "num_classes": m.num_classes, "task": m.task,
            "grad_checkpointing": s.grad_checkpointing, "amp": s.amp, "allocator": s.allocator,
            "dist": self.dist.sharding().to_dict() if self.dist.given else None,
            "quantize_base": m.quantize_base, "double_quant": m.double_quant,
            "grad_accum": s.grad_accum or 1, "offload": s.offload,
            "host_memory_bytes": s.host_memory_bytes,
            "max_state_bytes": self.max_state, "max_total_bytes": self.max_total,
            "max_host_bytes": self.max_host,
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


def _task(value: Any, where: str) -> str:
    try:
        return check_task(_string(value, where, "task"))
    except PlanError as e:
        raise PlanError(f"{where}: task: {str(e).removeprefix('--task ')}") from None


def _positive_int(value: Any, where: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlanError(f"{where}: {key} = {value!r} must be a positive integer")
    return value


def _batch_size(value: Any, where: str) -> int:
    _positive_int(value, where, "batch-size")
    return check_batch_size(value, f"{where}: batch-size")


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


def _allocator(value: Any, where: str) -> str:
    try:
        return get_model(_string(value, where, "allocator")).id
    except PlanError as e:
        raise PlanError(f"{where}: allocator: {e}") from None


def _choice(value: Any, where: str, key: str, allowed: Sequence[str]) -> str:
    text = _string(value, where, key).lower()
    if text not in allowed:
        raise PlanError(f"{where}: {key} = {value!r} is not one of: "
                        + ", ".join(f'"{a}"' for a in allowed))
    return text


def _bool(value: Any, where: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise PlanError(f"{where}: {key} = {value!r} must be true or false")
    return value


def _optimizer_ids(value: Any, where: str) -> tuple[str, ...]:
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


def _dist(table: dict, label: str) -> DistOptions:
    """``dist``/``world``/``nodes``/``shard-group`` (and the engine settings ``bucket-cap-mb``,
    ``reshard-after-forward``) → a :class:`DistOptions` (a check plans one world: ``dist`` needs
    ``world``)."""
    scheme = _string(table["dist"], label, "dist") if "dist" in table else None
    world = _positive_int(table["world"], label, "world") if "world" in table else None
    nodes = _positive_int(table["nodes"], label, "nodes") if "nodes" in table else None
    group = table.get("shard-group")
    if group is not None and not (isinstance(group, str) or
                                  (isinstance(group, int) and not isinstance(group, bool))):
        raise PlanError(f"{label}: shard-group = {group!r} must be a number of ranks or \"node\"")
    cap = table.get("bucket-cap-mb")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float))):
        raise PlanError(f"{label}: bucket-cap-mb = {cap!r} must be a number of MiB")
    reshard = (_bool(table["reshard-after-forward"], label, "reshard-after-forward")
               if "reshard-after-forward" in table else None)
    try:
        dist = DistOptions(scheme=scheme, world=world, nodes=nodes, shard_group=group,
                           bucket_cap_mb=cap, reshard_after_forward=reshard)
        if dist.given:
            dist.sharding()
    except PlanError as e:
        raise PlanError(f"{label}: {str(e).replace('--', '')}") from None
    return dist


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
    options = ModelOptions(
        model=model,
        optimizers=_optimizer_ids(table.get("optimizer"), label),
        dtype=dtype,
        num_classes=_positive_int(table["num-classes"], label, "num-classes") if "num-classes" in table else None,
        task=_task(table["task"], label) if "task" in table else None,
        trainable=_strings(table["trainable"], label, "trainable") if "trainable" in table else (),
        freeze=_strings(table["freeze"], label, "freeze") if "freeze" in table else (),
        lora_rank=lora_rank,
        lora_targets=lora_targets,
        targets=_strings(table["target"], label, "target") if "target" in table else (),
        quantize_base=_choice(table["quantize-base"], label, "quantize-base", QUANTIZATIONS)
        if "quantize-base" in table else None,
        double_quant=_bool(table.get("double-quant", False), label, "double-quant"),
    )
    step = StepOptions(
        batch_size=_batch_size(table["batch-size"], label) if "batch-size" in table else 1,
        input_size=parse_input_size(table["input-size"], f"{label}: input-size =")
        if "input-size" in table else None,
        seq_len=_positive_int(table["seq-len"], label, "seq-len") if "seq-len" in table else None,
        amp=_amp(table["amp"], label) if "amp" in table else None,
        grad_checkpointing=_bool(table.get("grad-checkpointing", False), label, "grad-checkpointing"),
        allocator=_allocator(table["allocator"], label) if "allocator" in table else None,
        grad_accum=_positive_int(table["grad-accum"], label, "grad-accum") if "grad-accum" in table else None,
        offload=_choice(table["offload"], label, "offload", OFFLOADS) if "offload" in table else None,
        host_memory_bytes=config_size(table["host-memory"], f"{label}: host-memory")
        if "host-memory" in table else None,
    )
    dist = _dist(table, label)
    try:
        options.recipe(step)
    except PlanError as e:  # a contradictory recipe, named where it is configured
        raise PlanError(f"{label}: {e}") from None
    return Check(
        id=check_id,
        options=options,
        step=step,
        dist=dist,
        device=_string(table["device"], label, "device") if "device" in table else None,
        max_state=config_size(table["max-state"], f"{label}: max-state") if "max-state" in table else None,
        max_total=config_size(table["max-total"], f"{label}: max-total") if "max-total" in table else None,
        max_host=config_size(table["max-host"], f"{label}: max-host") if "max-host" in table else None,
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
    doc = read_toml(p, shown, option="--config")
    table = tool_table(doc)
    if table is None and p.name == "pyproject.toml":
        raise PlanError(f"{shown}: has no [tool.smmf-plan] section: add [[tool.smmf-plan.checks]] "
                        "tables (see the README), or pass --config FILE")
    if table is None:
        table = {k: v for k, v in doc.items() if k != "tool"}
    base = p.resolve().parent
    cwd = Path(os.getcwd()).resolve()
    return parse_config(table, shown, base_dir=Path(".") if base == cwd else base)

