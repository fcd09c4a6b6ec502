"""SMMF (Park & Lee, AAAI 2025) as the bundled :class:`smmf_plan.optim.SMMF` stores it.

This is the one definition of SMMF's state: the optimizer allocates exactly the tensors
:func:`smmf_state` returns, so planner and optimizer cannot drift apart.

Factorized path (every parameter when ``vector_reshape`` is true, the paper's default): with
``(n̂, m̂) = square_matricize(shape)``, the first moment keeps ``row_m (n̂,)``, ``col_m (m̂,)`` and a
sign matrix, the second ``row_v (n̂,)``, ``col_v (m̂,)``. The sign is bit-packed into ``⌈n̂m̂/8⌉``
``uint8`` (``sign="packed"``, what the paper's tables count) or one ``bool`` per element
(``sign="bool"``, what the paper's reference code stores). Without a first moment (``beta=None``)
only ``row_v``/``col_v`` remain. Vectors are fp32 for half-precision parameters.

Dense path (``vector_reshape=False`` and a parameter whose squeezed rank is 1): Adam-like
``exp_avg``/``exp_avg_sq`` of the parameter's shape, fp32 for half-precision parameters.
"""

from __future__ import annotations

from typing import Any, Iterable

from .. import dtypes
from ..shapes import ParamSpec, Shape, square_matricize
from .base import OptimizerLayout, StateTensor, parse_bool, parse_optional_float

SIGN_STORAGES = ("packed", "bool")


def parse_sign(text: str) -> str:
    t = text.strip().lower()
    if t not in SIGN_STORAGES:
        raise ValueError(f"sign must be one of {', '.join(SIGN_STORAGES)}, got {text!r}")
    return t


def is_factorized(shape: Shape, vector_reshape: bool) -> bool:
    """The reference's routing: only a squeezed-rank-1 tensor with ``vector_reshape=False`` takes
    the dense path (``(1, 768)`` and ``(C, 1, 1, 1)`` count as vectors)."""
    squeezed_rank = sum(1 for s in shape if s != 1)
    return vector_reshape or squeezed_rank != 1


#: elements per row block of the eager kernel (``smmf_plan.optim._kernels``): a parameter is
#: updated block by block, and the scratch buffers the optimizer keeps between steps are sized to
#: the largest block. Defined here so that the planner's temporaries rule and the kernel agree.
BLOCK_NUMEL = 1 << 20


def block_rows(m: int) -> int:
    """Rows of an ``(n̂, m̂)`` matrix per block: a multiple of 8 (blocks start on a sign byte)."""
    return max(8, (BLOCK_NUMEL // max(m, 1)) // 8 * 8)


def packed_sign_bytes(numel: int) -> int:
    return -(-numel // 8)


def smmf_state(
    shape: Shape, dtype: str, *, first_moment: bool = True, sign: str = "packed",
    vector_reshape: bool = True,
) -> list[StateTensor]:
    """The state tensors SMMF keeps for one parameter of ``shape`` and ``dtype``."""
    if sign not in SIGN_STORAGES:
        raise ValueError(f"sign must be one of {SIGN_STORAGES}, got {sign!r}")
    vec = dtypes.upcast(dtypes.canonical(dtype))
    if not is_factorized(shape, vector_reshape):
        out = [StateTensor("exp_avg", shape, vec)] if first_moment else []
        return out + [StateTensor("exp_avg_sq", shape, vec)]
    n, m = square_matricize(shape)
    out = []
    if first_moment:
        out += [StateTensor("row_m", (n,), vec), StateTensor("col_m", (m,), vec)]
        if sign == "packed":
            out.append(StateTensor("sign", (packed_sign_bytes(n * m),), "uint8"))
        else:
            out.append(StateTensor("sign", (n, m), "bool"))
    return out + [StateTensor("row_v", (n,), vec), StateTensor("col_v", (m,), vec)]


class SMMFLayout(OptimizerLayout):
    name = "smmf"
    summary = "SMMF: square-matricized rank-1 factors for both moments + a sign matrix"
    implementation = "smmf_plan.optim.SMMF"
    options = {
        "sign": ("packed", parse_sign),
        "beta": (0.9, parse_optional_float),
        "vector_reshape": (True, parse_bool),
    }

    def state(self, spec: ParamSpec) -> list[StateTensor]:
        return smmf_state(
            spec.shape, spec.dtype, first_moment=self.opts["beta"] is not None,
            sign=self.opts["sign"], vector_reshape=self.opts["vector_reshape"],
        )

    def build(self, params: Iterable, **hyper: Any):
        from ..optim import SMMF

        kwargs = dict(beta=self.opts["beta"], sign=self.opts["sign"],
                      vector_reshape=self.opts["vector_reshape"])
        kwargs.update(hyper)
        return SMMF(params, **kwargs)
