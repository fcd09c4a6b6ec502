"""Measure what a real optimizer holds: the bytes of the tensors in ``optimizer.state[p]``."""

from __future__ import annotations


def tensor_bytes(obj) -> int:
    """Bytes of every tensor in ``obj`` (a tensor, or nested tuples/lists/dicts of them);
    Python scalars and other objects count zero."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(tensor_bytes(x) for x in obj)
    if isinstance(obj, dict):
        return sum(tensor_bytes(x) for x in obj.values())
    return 0


def state_bytes(optimizer, param) -> int:
    return tensor_bytes(optimizer.state.get(param, {}))


def total_state_bytes(optimizer) -> int:
    return sum(tensor_bytes(s) for s in optimizer.state.values())
