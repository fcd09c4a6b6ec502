"""``smmf-plan check`` evaluation: each check's model loaded (no weights) and its metrics measured."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from ..devices import get_device
from ..dist import Context, plan_ranks
from ..dist.estimate import step_estimate
from ..errors import PlanError
from ..optimizers import Unsupported
from ..options import ModelOptions
from ..plan import plan_state
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
    #: budget for ``host`` taken from the device's host memory when no max-host is set.
    host_budget: int | None = None
    model_summary: dict = field(default_factory=dict)
    #: the step estimate behind the ``total`` metric (a MemoryEstimate), or None.
    estimate: Any = None
    #: what the model source had to guess (e.g. the head of a config without architectures).
    notes: list[str] = field(default_factory=list)

    def budget(self, metric: str) -> tuple[int | None, str | None]:
        """``(bytes, source)``: source is ``"max-state"``, ``"max-total"``, ``"max-host"``,
        ``"device"``, ``"host"`` or None."""
        b = self.check.budget(metric)
        if b is not None:
            return b, BUDGET_KEYS[metric]
        if metric == "total" and self.device_budget is not None:
            return self.device_budget, "device"
        if metric == "host" and self.host_budget is not None:
            return self.host_budget, "host"
        return None, None


def _resolve_device(text: str, where: str, search_from: str | Path | None = None):
    try:
        return get_device(text, search_from=search_from)
    except PlanError as e:
        raise PlanError(f"{where}: device: {e}") from None


def _load_spec(check: Check, options: ModelOptions, recipe, memo: dict | None):
    """The check's ModelSpec as ``recipe`` stores it; ``memo`` shares one load between checks of
    the same model and recipe."""
    key = (options, recipe)
    if memo is not None and key in memo:
        return copy.deepcopy(memo[key])
    try:
        spec = options.load(recipe)
    except PlanError as e:
        raise PlanError(f"{check.where}: model {check.model!r}: {e}") from None
    if memo is not None:
        memo[key] = copy.deepcopy(spec)
    return spec


def state_bytes(spec, layout, sharding) -> int:
    """The ``state`` metric: the optimizer state of one process, or of the largest rank."""
    if sharding is None:
        return plan_state(spec.params, layout).state_bytes
    return max(c.figures.state_bytes for c in plan_ranks(Context(tuple(spec.params)), sharding, layout))


def evaluate_check(check: Check, *, default_device: str | None = None, use_cache: bool = True,
                   search_from: str | Path | None = None, memo: dict | None = None) -> Evaluated:
    """Load the check's model (no weights) and measure every metric for each of its optimizers.

    Device ids are looked up in the catalog and in the ``[tool.smmf-plan.devices]`` of the
    pyproject.toml nearest ``search_from`` (the configuration file's directory)."""
    device_text = check.device or default_device
    device = _resolve_device(device_text, check.where, search_from) if device_text else None
    options = replace(check.options, use_cache=use_cache)
    try:
        device = check.step.device(device)
        if device is None and check.step.offload is not None:
            raise PlanError(f"offload = \"{check.step.offload}\" moves the optimizer to a GPU's host: "
                            "set device = \"<a GPU id>\"")
    except PlanError as e:
        raise PlanError(f"{check.where}: {e}") from None
    recipe = options.recipe(check.step)
    spec = _load_spec(check, options, recipe, memo)
    layouts = options.layouts(spec)
    sharding = check.dist.sharding() if check.dist.given else None
    values: dict[str, dict[str, int]] = {}
    for layout in layouts:
        try:
            values[layout.id] = {"state": state_bytes(spec, layout, sharding)}
        except Unsupported as e:
            raise PlanError(f"{check.where or check.id}: {layout.id} cannot train {spec.name}: "
                            f"{e}; drop it from the check's optimizers") from None
        except PlanError as e:
            raise PlanError(f"{check.where}: {e}") from None
    est = None
    if check.max_total is not None or check.max_host is not None or device is not None:
        try:
            est = step_estimate(spec, layouts, sharding, batch_size=check.step.batch,
                                allocator=check.step.allocator_for(device),
                                **check.step.estimate_kwargs(options))
        except PlanError as e:
            raise PlanError(f"{check.where}: {e}") from None
        for oid, step in est.steps().items():
            values[oid]["total"] = step.device_bytes  # what the device holds (offload: host apart)
            if recipe.offload is not None:
                values[oid]["host"] = step.host_bytes
    return Evaluated(
        check=check,
        measurements=[Measurement(check.id, lid, v) for lid, v in values.items()],
        device=device.reference() if device is not None else None,
        device_budget=device.usable_bytes if device is not None else None,
        host_budget=device.host_memory if device is not None and recipe.offload else None,
        model_summary=spec.summary(),
        estimate=est,
        notes=list((spec.meta or {}).get("warnings") or ()),
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
