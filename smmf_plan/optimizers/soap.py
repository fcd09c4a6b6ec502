"""SOAP (Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam", 2024) as
``pytorch_optimizer.SOAP``.

State: full ``exp_avg`` and ``exp_avg_sq`` in the gradient's dtype and, for every dimension ``d``
of a parameter of rank ≥ 2 (of a vector too with ``precondition_1d``) that is at most
``max_precondition_dim``, a Kronecker factor ``GG.i`` (d×d, the gradient's dtype) and its
eigenbasis ``Q.i`` (d×d; computed in fp64 and cast back where ``eigh`` lacks the dtype).
Dimensions above the limit get neither. A 0-d parameter keeps only the moments.

Step temporaries, measured per parameter (``F`` its size, ``D_i`` the d×d squares of its
preconditioned dimensions). A regular step keeps the projected gradient, the denominator, the
projected first moment and the update alive while the ``GG`` outer products are formed:
``(2 + ndim)·F + Σ D_i`` (2·F for a vector without preconditioner). Every 10th step
(``precondition_frequency``) refreshes the eigenbases by one power iteration and QR per
dimension, the step's peak: ``5·F + 4·D_max + 2·Σ D_other`` (``5·D_max`` when the largest
dimension is the last one refreshed; a vector with ``precondition_1d``: ``4·D + 8·F``). The rule
is the larger of the two; ``peak_step`` 11 is the
first refresh. The first step only initialises the preconditioner.

Probe learning rate 3e-3, the implementation's default.
"""

from __future__ import annotations

from typing import Sequence

from .. import dtypes
from ..allocators import round_up
from ..shapes import ParamSpec
from .base import LOOP_ONLY, VERIFIED_BY_TESTS, Interval, OptimizerInfo, Option, Options, StateTensor, param_dtype
from .signum import PYTORCH_OPTIMIZER


def _preconditioned_dims(o: Options, shape) -> list[int]:
    if len(shape) == 0:
        return []
    if len(shape) == 1:
        return [shape[0]] if o["precondition_1d"] and shape[0] <= o["max_precondition_dim"] else []
    return [d for d in shape if d <= o["max_precondition_dim"]]


def state(o: Options, spec: ParamSpec, group: str) -> list[StateTensor]:
    pd = param_dtype(spec)
    out = [StateTensor("exp_avg", spec.shape, pd), StateTensor("exp_avg_sq", spec.shape, pd)]
    dims = list(spec.shape) if len(spec.shape) != 1 else [spec.shape[0]]
    kept = _preconditioned_dims(o, spec.shape)
    for i, d in enumerate(dims):
        if kept and d in kept and (len(spec.shape) >= 2 or o["precondition_1d"]) \
                and d <= o["max_precondition_dim"]:
            out += [StateTensor(f"GG.{i}", (d, d), pd), StateTensor(f"Q.{i}", (d, d), pd)]
    return out


def _loop(o: Options, specs: Sequence[ParamSpec], quantum: int) -> int:
    peak = 0
    for s in specs:
        item = dtypes.itemsize(s.dtype)
        full = round_up(s.numel * item, quantum)
        dims = _preconditioned_dims(o, s.shape)
        squares = [round_up(d * d * item, quantum) for d in dims]
        if not squares:
            peak = max(peak, 2 * full)
            continue
        if len(s.shape) == 1:  # precondition_1d: one d×d pair; its refresh holds 4 of them
            peak = max(peak, 4 * squares[0] + 8 * full)
            continue
        regular = (2 + len(s.shape)) * full + sum(squares)
        biggest = max(range(len(squares)), key=lambda i: (squares[i], i))
        refresh = (5 * full + (5 if biggest == len(squares) - 1 else 4) * squares[biggest]
                   + 2 * (sum(squares) - squares[biggest]))
        peak = max(peak, regular, refresh)
    return peak


INFO = OptimizerInfo(
    id="soap", display_name="SOAP",
    summary="SOAP: Adam in Shampoo's eigenbasis; moments plus two d×d matrices per dimension",
    implementation="pytorch_optimizer:SOAP", requires=PYTORCH_OPTIMIZER,
    reproduces="pytorch_optimizer.SOAP, pytorch-optimizer 4.1.0", verified=VERIFIED_BY_TESTS,
    options={
        "max_precondition_dim": Option(10000, "int", "dimensions above this get no "
                                       "preconditioner", Interval(1, None)),
        "precondition_1d": Option(False, "bool", "precondition vectors too (a d×d pair each)"),
    },
    state=state,
    temporaries={"for-loop": _loop},
    paths=LOOP_ONLY,
    probe_lr=3e-3, peak_step=lambda o: 11,
    constructor=lambda o: dict(lr=3e-3, max_precondition_dim=o["max_precondition_dim"],
                               precondition_1d=o["precondition_1d"]),
)
