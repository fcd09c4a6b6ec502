"""``smmf-plan check`` evaluation: each check's model loaded (no weights) and its metrics measured."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import PlanError
from .config import BUDGET_KEYS, Check, CheckConfig


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
        from .. import memory  # type: ignore[attr-defined]
    except ImportError:
        return None
    return getattr(memory, "estimate", None)


def _resolve_device(text: str, where: str, search_from: str | Path | None = None):
    from ..devices import get_device

    try:
        return get_device(text, search_from=search_from)
    except PlanError as e:
        raise PlanError(f"{where}: device: {e}") from None


def _load_spec(check: Check, use_cache: bool, memo: dict | None):
    """The check's ModelSpec; ``memo`` shares one load between checks of the same model."""
    import copy

    from ..sources import load_model

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
    from ..optimizers import parse
    from ..plan import plan_state, with_dtype

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

