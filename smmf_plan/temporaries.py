"""Peak temporary bytes of one ``optimizer.step()`` (beyond weights, gradients and state).

Rules read from the implementations and checked against a real step measured with a storage
tracker (``tests/test_memory_temporaries.py``, tolerance -2% / +10%):

* Per-parameter loops (torch Adam/AdamW without ``foreach``, the CPU default; Adafactor; CAME; SM3;
  the bundled SMMF) allocate temporaries for one parameter at a time, so the peak is the largest
  over parameters of ``a·nbytes(p_i) + v·vec_bytes(p_i) + b·nbytes(p_{i-1})``: ``a`` full-size
  temporaries alive at once, the factored row/column vectors, and ``b`` full-size results of the
  previous parameter still bound to a loop variable (Python keeps the last iteration's ``denom``
  until it is reassigned). Per family:

  ===================  ====  ====  ==============================================================
  family               a     b     why
  ===================  ====  ====  ==============================================================
  adam / adamw         2     1     ``exp_avg_sq.sqrt()`` and ``/ bias_correction2_sqrt`` alive
                                   together; ``denom`` of the previous parameter; Adam (not
                                   AdamW) with weight decay adds ``grad.add(param)``: a = 3
  adafactor            2     0     ``grad**2`` then ``+ eps``; the factored product; ``-update``
  adafactor beta1=none 2     1     the last ``update`` is not state, so it stays bound
  came                 3     0     update, residual ``(update - exp_avg)**2``, their product;
                                   plus 1.5× the row+column vectors of the last factored parameter
                                   (still bound while later vectors are stepped)
  sm3                  1     0     one full-size update at a time
  ===================  ====  ====  ==============================================================

* The bundled SMMF (eager kernels) updates a parameter in row blocks of at most
  ``layouts.smmf.BLOCK_NUMEL`` elements through scratch buffers it **keeps between steps** (page
  faults of fresh multi-MiB buffers cost more than the arithmetic): the decompressed first moment
  and the second-moment matrix (2 × block, state dtype), a state-dtype scratch for the sign compare
  (1 × block) and, for packed signs, a byte per element plus a 4-B index per sign byte
  (3/8 × block), and a few factor-sized vectors.
  Without a first moment only the second-moment matrix. Because the buffers persist, SMMF's
  temporaries are not netted against the activations (:func:`persists`).

* ``foreach`` Adam/AdamW (torch's default on CUDA) builds ``exp_avg_sq_sqrt`` for every parameter
  of a (device, dtype) group at once: one full copy of the group's parameters; the largest group
  counts.

Half-precision parameters: Adafactor, CAME and SMMF up-cast the gradient and parameter to fp32
first, so each temporary is counted at fp32 size plus two fp32 copies (approximate; the checks
are fp32). Each temporary is rounded as the allocator rounds (64 B CPU, 512 B CUDA).
"""

from __future__ import annotations

from typing import Iterable, Sequence

from . import dtypes
from .allocators import QUANTUM as _QUANTUM, round_up
from .layouts.base import OptimizerLayout
from .shapes import ParamSpec, square_matricize

HALF = ("float16", "bfloat16")


def default_foreach(allocator: str) -> bool:
    """torch picks the foreach Adam on CUDA and the for-loop on CPU when neither is asked for."""
    return allocator == "cuda"


def _coeffs(layout: OptimizerLayout, spec: ParamSpec) -> tuple[int, int, int]:
    """(a, v, b): full-size temporaries, factored-vector temporaries, previous-parameter leftovers."""
    family = type(layout).name
    rank2 = sum(1 for s in spec.shape if s != 1) >= 2 or len(spec.shape) >= 2
    if family in ("adam", "adamw"):
        wd = float(layout.opts.get("weight_decay", 0) or 0)
        return (3 if family == "adam" and wd else 2), 0, 1
    if family == "adafactor":
        return 2, (1 if rank2 else 0), (1 if layout.opts.get("beta1") is None else 0)
    if family == "came":
        return 3, (2 if rank2 else 0), 0
    if family == "sm3":
        return 1, 0, 0
    raise ValueError(f"no step-temporaries rule for optimizer family {family!r}")


def persists(layout: OptimizerLayout) -> bool:
    """True when the optimizer keeps its step scratch between steps (so it is alive during the
    next forward and backward too)."""
    return type(layout).name == "smmf"


def _smmf_temp(layout: OptimizerLayout, specs: Sequence[ParamSpec], q: int) -> int:
    from .layouts.smmf import block_rows, is_factorized

    first = layout.opts["beta"] is not None
    # in units of one state-dtype element: decompressed M, V, a float scratch for the sign
    # compare, and for packed signs a bool per element plus a 4-B index per sign byte
    per_elem = 1.0 if not first else (3 + (3 / 8 if layout.opts["sign"] == "packed" else 0))
    peak = 0
    dense = 0
    for spec in specs:
        item = 4 if dtypes.canonical(spec.dtype) in HALF else dtypes.itemsize(spec.dtype)
        if not is_factorized(spec.shape, layout.opts["vector_reshape"]):
            dense += 2 * round_up(spec.numel * item, q)  # foreach g·g and sqrt(V) + eps
            continue
        n, m = square_matricize(spec.shape)
        block = min(n, block_rows(m)) * m
        here = round_up(int(per_elem * block * item), q) + 3 * round_up((n + m) * item, q)
        peak = max(peak, here)
    return peak + dense


def _vec_elems(layout: OptimizerLayout, spec: ParamSpec) -> int:
    s = spec.shape
    if len(s) >= 2:
        import math

        return math.prod(s[:-1]) + math.prod(s[:-2] + s[-1:])
    return 0


def step_temp_bytes(layout: OptimizerLayout, specs: Sequence[ParamSpec], *,
                    allocator: str = "raw", foreach: bool | None = None) -> int:
    """Peak bytes ``layout``'s optimizer allocates during one ``step()`` over the trainable
    ``specs`` (in the order the optimizer sees them), beyond its state (see the module docstring).
    ``foreach`` (Adam/AdamW only) defaults to what torch picks for ``allocator``."""
    q = _QUANTUM[allocator]
    trainable = [s for s in specs if s.trainable and s.numel > 0]
    if not trainable:
        return 0
    family = type(layout).name
    if family == "smmf":
        return _smmf_temp(layout, trainable, q)
    if family in ("adam", "adamw"):
        use_foreach = default_foreach(allocator) if foreach is None else foreach
        if layout.opts.get("fused"):
            return 0
        if use_foreach:
            groups: dict[str, int] = {}
            for s in trainable:
                groups[s.dtype] = groups.get(s.dtype, 0) + round_up(s.nbytes, q)
            return max(groups.values())
    peak, prev, prev_vec = 0, 0, 0
    for spec in trainable:
        pd = dtypes.canonical(spec.dtype)
        upcast = family in ("adafactor", "came") and pd in HALF
        item = 4 if upcast else dtypes.itemsize(pd)
        full = round_up(spec.numel * item, q)
        a, v, b = _coeffs(layout, spec)
        vec = round_up(_vec_elems(layout, spec) * item, q) if v else 0
        here = a * full + v * vec + b * prev + (2 * full if upcast else 0)
        if family == "came":  # the last factored parameter's vector results stay bound
            here += 3 * prev_vec // 2
            if vec:
                prev_vec = vec
        peak = max(peak, here)
        prev = full
    return peak


def temp_bytes_by_layout(layouts: Iterable[OptimizerLayout], specs: Sequence[ParamSpec], *,
                         allocator: str = "raw") -> dict[str, int]:
    return {layout.id: step_temp_bytes(layout, specs, allocator=allocator) for layout in layouts}
