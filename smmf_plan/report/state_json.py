"""JSON documents for ``smmf-plan plan`` and ``smmf-plan shapes`` (schema in the README)."""

from __future__ import annotations

from typing import Sequence

from ..model import ModelSpec
from ..optimizers import OptimizerVariant, Unsupported
from ..plan import StatePlan
from ..shapes import square_matricize
from . import SCHEMA_VERSION
from .step_json import add_training


def plan_document(model: ModelSpec, plans: dict[str, StatePlan], adam_bytes: int,
                  *, estimate=None, device=None, fits=None, would_fit=None) -> dict:
    """The ``plan`` document: each optimizer's state plan and, given the step ``estimate`` (a
    :class:`~smmf_plan.memory.MemoryEstimate`), its step entry, the device and the verdicts
    (:func:`smmf_plan.report.step_json.add_training`), with ``would_fit`` (optimizer id →
    :class:`~smmf_plan.alternatives.WouldFit`) the smallest change that makes each optimizer that
    does not fit do so. ``model.dtype`` is the dtype planned (``--dtype`` already applied to
    ``model.params``)."""
    doc = {
        "schema_version": SCHEMA_VERSION,
        "model": model.summary(),
        "optimizers": {oid: p.to_dict(adam_bytes) for oid, p in plans.items()},
    }
    if estimate is not None:
        add_training(doc, estimate, device, fits, would_fit)
    return doc


def shapes_document(model: ModelSpec, layouts: Sequence[OptimizerVariant]) -> dict:
    rows = []
    for spec in model.params:
        rows.append({
            "name": spec.name,
            "shape": list(spec.shape),
            "dtype": spec.dtype,
            "numel": spec.numel,
            "trainable": spec.trainable,
            "smmf_shape": list(square_matricize(spec.shape)),
            "state_bytes": {v.id: _param_bytes(v, spec) for v in layouts},
        })
    return {"schema_version": SCHEMA_VERSION, "model": model.summary(), "params": rows}


def _param_bytes(layout: OptimizerVariant, spec) -> int | None:
    """One parameter's state bytes (0 when frozen, ``None`` where the implementation cannot
    train it)."""
    if not spec.trainable:
        return 0
    try:
        return layout.state_bytes(spec)
    except Unsupported:
        return None
