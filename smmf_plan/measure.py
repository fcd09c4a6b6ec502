"""Measure what a real optimizer holds: the bytes of the tensors in ``optimizer.state[p]``.

Two rules make the measure match what memory really holds (and what the registry plans):

* a wrapper tensor subclass (``__tensor_flatten__``: torchao's low-bit states, DTensor) is its inner
  tensors, named ``STATE.INNER`` (``exp_avg.codes``, ``exp_avg.scale``), not its nominal dtype;
* one tensor object several parameters' states point at (bitsandbytes' quantile maps) counts once
  in an optimizer's total, and in full in each parameter's own state.
"""

from __future__ import annotations

from typing import Any, Iterator


def flat_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(name, plain tensor)`` for every tensor in ``obj`` (a tensor, or nested tuples, lists and
    dicts of them); Python scalars and other objects are skipped."""
    import torch

    if isinstance(obj, torch.Tensor):
        inner = getattr(obj, "__tensor_flatten__", None)
        if inner is None:
            yield prefix, obj
            return
        names, _ = inner()
        for n in names:
            yield from flat_tensors(getattr(obj, n), f"{prefix}.{n}" if prefix else n)
        return
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (tuple, list)) else ()
    for k, v in items:
        yield from flat_tensors(v, f"{prefix}.{k}" if prefix else str(k))


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


def tensor_bytes(obj) -> int:
    """Bytes of every tensor in ``obj`` (see :func:`flat_tensors`)."""
    return sum(_nbytes(t) for _, t in flat_tensors(obj))


def state_tensors(optimizer, param) -> dict[str, Any]:
    """The plain tensors of ``optimizer.state[param]`` by name (subclasses flattened)."""
    return dict(flat_tensors(optimizer.state.get(param, {})))


def state_bytes(optimizer, param) -> int:
    """Bytes of one parameter's state, shared tensors included."""
    return tensor_bytes(optimizer.state.get(param, {}))


def total_state_bytes(optimizer) -> int:
    """Bytes of every parameter's state, each tensor object counted once."""
    seen: dict[int, int] = {}
    for s in optimizer.state.values():
        for _, t in flat_tensors(s):
            seen.setdefault(id(t), _nbytes(t))
    return sum(seen.values())
