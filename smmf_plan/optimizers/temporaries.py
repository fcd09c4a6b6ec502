"""Building blocks of the step-temporaries rules (peak bytes one ``optimizer.step()`` allocates
beyond weights, gradients and state). Each family's module states its own coefficients and why;
every rule is checked against a real step measured with a storage tracker
(``tests/test_memory_temporaries.py``, tolerance -2% / +10%).

* **for-loop** (one parameter at a time: torch Adam/AdamW without ``foreach``, the CPU default;
  Adafactor; CAME; SM3): the peak is the largest over parameters of
  ``a·full(p_i) + v·vec(p_i) + b·full(p_{i-1})``: ``a`` full-size temporaries alive at once,
  ``v`` copies of the factored row + column vectors (rank ≥ 2 only), and ``b`` full-size results
  of the previous parameter still bound to a loop variable (Python keeps the last iteration's
  ``denom`` until it is reassigned). Implementations that up-cast half-precision parameters to
  fp32 count every temporary at fp32 size plus two fp32 copies (gradient and parameter;
  approximate, the checks are fp32).
* **foreach** (torch's default on CUDA): one full copy of every parameter of a (device, dtype)
  group at once; the largest group counts.
* **fused**: one kernel per group writes in place: no tensor-sized temporaries.

Each temporary is rounded as the allocator rounds (``quantum``: 64 B CPU, 512 B CUDA, 1 raw).
"""

from __future__ import annotations

import math
from typing import Sequence

from .. import dtypes
from ..allocators import round_up
from ..shapes import ParamSpec


def factored_vector_elems(spec: ParamSpec) -> int:
    """Elements of Adafactor-style row + column vectors of ``spec`` (0 below rank 2)."""
    s = spec.shape
    if len(s) < 2:
        return 0
    return math.prod(s[:-1]) + math.prod(s[:-2] + s[-1:])


def loop_peak(specs: Sequence[ParamSpec], quantum: int, *, full: int, vectors: int = 0,
              previous: int = 0, last_vectors: float = 0.0, upcast_half: bool = False) -> int:
    """Peak of a for-loop step (see the module docstring): ``full`` = a, ``vectors`` = v,
    ``previous`` = b; ``last_vectors``: multiples of the last factored parameter's vectors still
    bound while later parameters are stepped (CAME); ``upcast_half``: half-precision parameters
    are stepped in fp32."""
    peak, prev, prev_vec = 0, 0, 0
    for spec in specs:
        pd = dtypes.canonical(spec.dtype)
        upcast = upcast_half and pd in dtypes.HALF
        item = 4 if upcast else dtypes.itemsize(pd)
        size = round_up(spec.numel * item, quantum)
        vec = round_up(factored_vector_elems(spec) * item, quantum) if vectors else 0
        here = full * size + vectors * vec + previous * prev + (2 * size if upcast else 0)
        if last_vectors:
            here += int(last_vectors * prev_vec)
            if vec:
                prev_vec = vec
        peak = max(peak, here)
        prev = size
    return peak


def foreach_peak(specs: Sequence[ParamSpec], quantum: int, *, copies: int = 1) -> int:
    """Peak of a foreach step: ``copies`` full copies of the largest same-dtype group."""
    groups: dict[str, int] = {}
    for s in specs:
        groups[s.dtype] = groups.get(s.dtype, 0) + round_up(s.nbytes, quantum)
    return copies * max(groups.values(), default=0)


def no_temporaries(opts, specs: Sequence[ParamSpec], quantum: int) -> int:
    """A fused kernel's rule: it updates in place."""
    return 0
