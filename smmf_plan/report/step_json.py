"""JSON of training-step estimates, shared by the ``plan``, ``size`` and ``check`` documents (schema
in the README).

Every step estimate of one optimizer is the same object, wherever it appears::

    {"state_bytes": int,          # logical optimizer state (numel × itemsize of its tensors)
     "breakdown": {PART: int},    # smmf_plan.breakdown.PARTS, as the allocator allocates them
     "total_bytes": int,          # == sum(breakdown.values()), exactly
     "device_bytes": int,         # the device's parts (what the fit checks)
     "host_bytes": int}           # the host's parts (offload; 0 otherwise)

with the fit fields (``fits`` / ``headroom_bytes`` / ``max_batch_size``, null without a device)
added where a device is judged. Activations that are not known are ``null`` in the breakdown, the
entry says ``"complete": false`` and its sums are lower bounds.
"""

from __future__ import annotations

from typing import Mapping

from ..breakdown import StepMemory
from ..devices import Device
from ..fit import NO_DEVICE, Fit, recommendation
from ..model import ModelSpec
from . import SCHEMA_VERSION


def device_json(device: Device | None) -> dict | None:
    return None if device is None else device.reference()


def fit_json(f: Fit | None) -> dict:
    return dict(NO_DEVICE) if f is None else f.to_dict()


def optimizer_json(step: StepMemory, f: Fit | None) -> dict:
    """One optimizer's step estimate and its verdict fields."""
    return {**step.to_dict(), **fit_json(f)}


def training_json(estimate) -> dict:
    """How a :class:`~smmf_plan.memory.MemoryEstimate` was made: batch (the micro-batch, and the
    effective batch of gradient accumulation), input, allocator, the distributed layout
    (``sharding``, null for one process), the recipe, whether the activations are known, and
    every assumption."""
    info = estimate.recipe_info
    sharding = getattr(estimate, "sharding", None)
    return {"batch_size": estimate.batch_size,
            "grad_accum": info.get("grad_accum", 1),
            "effective_batch_size": info.get("effective_batch_size", estimate.batch_size),
            "input": estimate.input,
            "allocator": estimate.allocator,
            "sharding": sharding.to_dict() if sharding is not None else None,
            "recipe": dict(info),
            "complete": estimate.complete,
            "incomplete_reason": estimate.incomplete_reason,
            "assumptions": list(estimate.assumptions)}


def add_training(doc: dict, estimate, device: Device | None,
                 fits: Mapping[str, Fit] | None, would_fit: Mapping | None = None) -> dict:
    """Add a step estimate to a ``plan`` document: ``device``, ``training``, per optimizer its step
    entry and verdict (beside its state plan) and, with a device, ``would_fit`` (null where the
    optimizer fits) and the one-line recommendation."""
    steps = estimate.steps()
    doc["device"] = device_json(device)
    doc["training"] = training_json(estimate)
    for oid, step in steps.items():
        entry = doc["optimizers"][oid]
        if step.ranks:
            # the state plan's figures describe the whole model (one process); the step's
            # state_bytes below is the largest rank's
            entry["model_state_bytes"] = entry.get("state_bytes")
        entry.update(optimizer_json(step, None if fits is None else fits[oid]))
        if device is not None:
            w = (would_fit or {}).get(oid)
            entry["would_fit"] = None if w is None else w.to_dict()
    if device is not None:
        doc["recommendation"] = recommendation(device, fits, batch_known=estimate.complete,
                                               would_fit=would_fit)
    return doc


def size_document(spec: ModelSpec, batch_size: int, result: dict) -> dict:
    """The ``size`` document from :func:`smmf_plan.cli.size.size_model`'s result: per optimizer
    its step entry under each allocator and the smallest device that fits; per device the verdict
    of every optimizer."""
    steps, grid = result["steps"], result["grid"]
    optimizers = {}
    for oid in result["order"]:
        runs, anywhere = result["smallest"][oid]
        optimizers[oid] = {
            "by_allocator": {a: per[oid].to_dict() for a, per in steps.items()},
            "smallest_device": device_json(runs),
            "smallest_device_memory_only": device_json(anywhere),
        }
    rows = []
    for d in result["devices"]:
        cells = {oid: {"total_bytes": grid[d.id][oid].total_bytes, **grid[d.id][oid].to_dict()}
                 for oid in result["order"]}
        rows.append({"device": device_json(d), "allocator": result["allocators"][d.id],
                     "optimizers": cells,
                     "recommendation": recommendation(d, grid[d.id], batch_known=result["complete"])})
    recipe = result.get("recipe") or {}
    return {
        "schema_version": SCHEMA_VERSION,
        "model": spec.summary(),  # its dtype is the one planned (--dtype applied to the params)
        "batch_size": batch_size,
        "grad_accum": recipe.get("grad_accum", 1),
        "effective_batch_size": recipe.get("effective_batch_size", batch_size),
        "recipe": recipe,
        "estimate": "end-to-end" if result["complete"] else "lower bound: activations not known",
        "sharding": result["sharding"].to_dict() if result.get("sharding") else None,
        "optimizers": optimizers,
        "devices": rows,
    }


def size_search_document(spec: ModelSpec, batch_size: int, search, devices, order) -> dict:
    """The ``size --dist`` document without ``--world``: per device and optimizer the smallest
    world size that fits and the largest rank's step there (:class:`smmf_plan.dist.search.Answer`),
    and per optimizer the answer on every device."""
    return {
        "schema_version": SCHEMA_VERSION,
        "model": spec.summary(),
        "batch_size": batch_size,
        "sharding": {"scheme": search.scheme, "shard_group": search.shard_group},
        "estimate": "end-to-end" if search.complete else "weights+grads+state",
        "optimizers": {oid: {"smallest_world": {d.id: search.answers[d.id][oid].world
                                                for d in devices}} for oid in order},
        "devices": [{"device": device_json(d),
                     "optimizers": {oid: search.answers[d.id][oid].to_dict() for oid in order}}
                    for d in devices],
        "assumptions": list(search.assumptions),
    }
