"""transformers' Adafactor. Factored (rank ≥ 2, size-1 dims included): a row vector over
``shape[:-1]`` and a column vector over ``shape[:-2] + shape[-1:]``; otherwise a full
``exp_avg_sq``. ``exp_avg`` only with ``beta1``; a 0-d ``RMS`` tensor always. Half-precision
parameters get fp32 state (the implementation up-casts the gradient first)."""

from __future__ import annotations

from typing import Any, Iterable

from .. import dtypes
from ..shapes import ParamSpec
from .base import OptimizerLayout, StateTensor, param_dtype, parse_optional_float


def factored_second_moment(spec: ParamSpec, dtype: str, prefix: str) -> list[StateTensor]:
    """Adafactor-style factorization of a second-moment-like statistic (shared with CAME)."""
    s = spec.shape
    if len(s) >= 2:
        return [
            StateTensor(f"{prefix}_row", s[:-1], dtype),
            StateTensor(f"{prefix}_col", s[:-2] + s[-1:], dtype),
        ]
    return [StateTensor(prefix, s, dtype)]


class AdafactorLayout(OptimizerLayout):
    name = "adafactor"
    summary = "Adafactor (beta1=0.9 as the SMMF paper ran it; beta1=none is the library default)"
    implementation = "transformers.optimization.Adafactor"
    requires = "transformers"
    options = {"beta1": (0.9, parse_optional_float)}

    def state(self, spec: ParamSpec) -> list[StateTensor]:
        up = dtypes.upcast(param_dtype(spec))
        out = []
        if self.opts["beta1"] is not None:
            out.append(StateTensor("exp_avg", spec.shape, up))
        if len(spec.shape) >= 2:
            out += factored_second_moment(spec, up, "exp_avg_sq")
        else:
            out.append(StateTensor("exp_avg_sq", spec.shape, up))
        out.append(StateTensor("RMS", (), up))
        return out

    def build(self, params: Iterable, **hyper: Any):
        from transformers.optimization import Adafactor

        kwargs = dict(
            lr=1e-3, relative_step=False, scale_parameter=False, warmup_init=False,
            beta1=self.opts["beta1"],
        )
        kwargs.update(hyper)
        return Adafactor(params, **kwargs)
