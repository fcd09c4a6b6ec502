"""Measure what a real optimizer holds: the bytes of the tensors in ``optimizer.state[p]``.

Four rules make the measure match what memory really holds (and what the registry plans):

* a wrapper tensor subclass (``__tensor_flatten__``: torchao's low-bit states, DTensor) is its inner
  tensors, named ``STATE.INNER`` (``exp_avg.codes``, ``exp_avg.scale``), not its nominal dtype;
  the other objects it names there are metadata, not state (torch 2.14's DTensor names its
  ``device_mesh``, whose ``_rank_map`` — one int32 per rank of the mesh — every DTensor on that
  mesh shares);
* a plain object in the state (GaLore's and APOLLO's projector) is its tensor attributes, named
  ``STATE.ATTRIBUTE`` (``projector.ortho_matrix``), and a state tensor's ``.grad`` is held too
  (``projector.ortho_matrix.grad``: COAP optimizes its projection with autograd);
* a tensor is the bytes of its whole storage: a view keeps the tensor it was cut from alive
  (GaLore keeps ``Vh[:rank]`` of a full SVD factor);
* one storage several tensors or parameters' states point at (bitsandbytes' quantile maps) counts
  once in an optimizer's total, and in full in each parameter's own state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Iterator

#: how deep :func:`flat_tensors` looks into plain objects' attributes.
_MAX_DEPTH = 4


def flat_tensors(obj: Any, prefix: str = "", _depth: int = 0) -> Iterator[tuple[str, Any]]:
    """``(name, plain tensor)`` for every tensor in ``obj`` (a tensor, nested tuples, lists and
    dicts of them, or an object holding them as attributes); Python scalars and other values are
    skipped."""
    import torch

    if _depth > _MAX_DEPTH:
        return
    if isinstance(obj, torch.Tensor):
        inner = getattr(obj, "__tensor_flatten__", None)
        if inner is None:
            yield prefix, obj
            if obj.grad is not None:  # a state tensor that was a leaf of autograd keeps its grad
                yield from flat_tensors(obj.grad, f"{prefix}.grad", _depth + 1)
            return
        names, _ = inner()
        for n in names:
            value = getattr(obj, n)
            if isinstance(value, torch.Tensor):  # not the opaque metadata some subclasses name
                yield from flat_tensors(value, f"{prefix}.{n}" if prefix else n, _depth + 1)
        return
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (tuple, list)):
        items = enumerate(obj)
    elif isinstance(obj, (str, bytes, int, float, bool, type(None), torch.dtype, torch.device)):
        return
    else:
        items = getattr(obj, "__dict__", {}).items()
    for k, v in items:
        yield from flat_tensors(v, f"{prefix}.{k}" if prefix else str(k), _depth + 1)


def _storage(t) -> tuple[int, int]:
    """``(key, bytes)`` of the storage behind ``t`` (meta and fake tensors: their own bytes)."""
    st = t.untyped_storage()
    ptr = st.data_ptr()
    if ptr == 0:  # meta, fake or empty: no shared memory to find
        return id(t), t.numel() * t.element_size()
    return ptr, st.nbytes()


def tensor_bytes(obj) -> int:
    """Bytes of the storages of every tensor in ``obj`` (see :func:`flat_tensors`), each storage
    once."""
    seen: dict[int, int] = {}
    for _, t in flat_tensors(obj):
        key, n = _storage(t)
        seen.setdefault(key, n)
    return sum(seen.values())


def state_tensors(optimizer, param) -> dict[str, Any]:
    """The plain tensors of ``optimizer.state[param]`` by name (subclasses flattened)."""
    return dict(flat_tensors(optimizer.state.get(param, {})))


def state_bytes(optimizer, param) -> int:
    """Bytes of one parameter's state, shared tensors included."""
    return tensor_bytes(optimizer.state.get(param, {}))


def total_state_bytes(optimizer) -> int:
    """Bytes of every parameter's state, each storage counted once."""
    return tensor_bytes(list(optimizer.state.values()))


_RSS_STEP = r"""
import gc, json, sys, warnings
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(1)
from smmf_plan.optimizers import parse
from smmf_plan.probe import rss
from smmf_plan.shapes import ParamSpec
oid, shape, dtype, steps = sys.argv[1], tuple(json.loads(sys.argv[2])), sys.argv[3], int(sys.argv[4])
torch.manual_seed(0)
p = torch.nn.Parameter(torch.randn(shape, dtype=getattr(torch, dtype)))
spec = ParamSpec("weight", shape, dtype, linear=len(shape) == 2)
opt = parse(oid).build([(spec, p)])
for _ in range(steps - 1):
    p.grad = torch.randn_like(p)
    opt.step()
p.grad = torch.randn_like(p)
gc.collect()
base = rss.rss_bytes()
rss.reset_peak()
opt.step()
print(json.dumps(rss.hwm_bytes() - base))
"""


def step_rss_extra(oid: str, shape, dtype: str = "float32", steps: int = 3,
                   timeout: float = 600) -> int:
    """Peak RSS growth of the ``steps``-th optimizer step over one parameter of ``shape`` in a
    fresh process (glibc's mmap threshold at 128 KiB, so freed buffers leave the RSS): how the
    temporaries of steps that run inside custom operators or compiled kernels are measured, where
    a dispatch-level tracker sees nothing. Linux only (``/proc/self/status``)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", _RSS_STEP, oid, json.dumps(list(shape)), dtype,
                          str(steps)], capture_output=True, text=True, env=env, timeout=timeout,
                         check=True)
    return int(out.stdout.strip().splitlines()[-1])
