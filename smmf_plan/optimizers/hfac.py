"""H-Fac (Nguyen, Chen, Liu, Liu, "Memory-Efficient Optimization with Factorized Hamiltonian
Descent", arXiv 2406.09958 v3, AISTATS 2025) as the bundled :class:`smmf_plan.optim.HFac`: no
maintained implementation exists, so the layout is the paper's and the optimizer follows its
update equations (see :mod:`smmf_plan.optim.hfac`).

This module is the one definition of H-Fac's state: the optimizer allocates exactly the tensors
:func:`hfac_state` returns, on the matrix :func:`hfac_matrix` gives.

The paper factorizes matrices. A parameter of rank 2 is kept as its ``(m, n)``; any other rank is
square-matricized exactly as SMMF does (:func:`smmf_plan.shapes.square_matricize`, a vector of
768 becomes 32 × 24, a 0-d tensor 1 × 1): the update equations need a matrix, reshaping a tensor
is free, and the most square shape minimises the factors (Adafactor's alternative, keeping the
last two dimensions of a convolution, can leave a k×k kernel as a 3 × 3 matrix per channel pair).

State: ``u`` (m) and ``v`` (n), the row and column means of the momentum, and ``r`` (m) and ``s``
(n), the row and column sums of the second moment: ``2(m + n)`` values, fp32 for half-precision
parameters (the parameter's dtype otherwise). The step counter is a Python int.

Step temporaries (one parameter at a time): the scaled gradient ``G / √V̂`` being clipped (one
full-size tensor) while ``G² + ε`` is gone, plus the fp32 copy of a half-precision gradient and a
few factor-sized vectors.

Probe learning rate 1e-3.
"""

from __future__ import annotations

from typing import Sequence

from .. import dtypes
from ..allocators import round_up
from ..shapes import ParamSpec, Shape, square_matricize
from .base import LOOP_ONLY, Interval, OptimizerInfo, Option, Options, Requirement, StateTensor

FACTORS = ("u", "v", "r", "s")


def hfac_matrix(shape: Shape) -> tuple[int, int]:
    """The matrix H-Fac factorizes a parameter of ``shape`` as: itself for rank 2, else SMMF's
    most square matrix."""
    if len(shape) == 2:
        return int(shape[0]), int(shape[1])
    return square_matricize(shape)


def hfac_state(shape: Shape, dtype: str) -> list[StateTensor]:
    """The state tensors :class:`smmf_plan.optim.HFac` keeps for one parameter."""
    m, n = hfac_matrix(shape)
    vec = dtypes.upcast(dtypes.canonical(dtype))
    return [StateTensor("u", (m,), vec), StateTensor("v", (n,), vec),
            StateTensor("r", (m,), vec), StateTensor("s", (n,), vec)]


def state(o: Options, spec: ParamSpec, group: str) -> list[StateTensor]:
    return hfac_state(spec.shape, spec.dtype)


def _loop(o: Options, specs: Sequence[ParamSpec], quantum: int) -> int:
    peak = 0
    for s in specs:
        half = dtypes.canonical(s.dtype) in dtypes.HALF
        item = 4 if half else dtypes.itemsize(s.dtype)
        full = round_up(s.numel * item, quantum)
        m, n = hfac_matrix(s.shape)
        vectors = 4 * round_up((m + n) * item, quantum)
        peak = max(peak, (2 if half else 1) * full + vectors)
    return peak


INFO = OptimizerInfo(
    id="hfac", display_name="H-Fac",
    summary="H-Fac: rank-1 factors of both moments, Hamiltonian descent (from the paper)",
    implementation="smmf_plan.optim:HFac",
    requires=Requirement("smmf-plan", "smmf_plan.optim"),
    reproduces=("smmf_plan.optim.HFac (bundled; the update equations of arXiv 2406.09958 v3, no "
                "maintained implementation exists)"),
    verified=("from the paper; the bundled optimizer allocates exactly this state (one real step "
              "per parameter and a measured step's temporaries, in tests)"),
    options={"clip_threshold": Option(1.0, "float", "RMS clip threshold d (no memory effect)",
                                      Interval(0, None, low_closed=False))},
    state=state,
    temporaries={"for-loop": _loop},
    paths=LOOP_ONLY,
    probe_lr=1e-3, constructor=lambda o: dict(lr=1e-3, clip_threshold=o["clip_threshold"]),
)
