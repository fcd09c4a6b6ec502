"""pytorch_optimizer's SM3: one accumulator per dimension (``[1]*i + [s_i] + [1]*(r-1-i)``, a
0-d one for scalars) plus a full ``momentum_buffer`` that the implementation allocates even when
momentum is 0. Everything keeps the parameter's dtype."""

from __future__ import annotations

from typing import Any, Iterable

from ..shapes import ParamSpec
from .base import OptimizerLayout, StateTensor, param_dtype


class SM3Layout(OptimizerLayout):
    name = "sm3"
    summary = "SM3 (momentum 0.9): per-dimension accumulators plus a full momentum buffer"
    implementation = "pytorch_optimizer.SM3"
    requires = "pytorch-optimizer"
    options = {"momentum": (0.9, float)}

    def state(self, spec: ParamSpec) -> list[StateTensor]:
        pd = param_dtype(spec)
        s = spec.shape
        r = len(s)
        out = [StateTensor("momentum_buffer", s, pd)]
        if r == 0:
            out.append(StateTensor("accumulator_0", (), pd))
        else:
            for i, n in enumerate(s):
                out.append(StateTensor(f"accumulator_{i}", (1,) * i + (n,) + (1,) * (r - 1 - i), pd))
        return out

    def build(self, params: Iterable, **hyper: Any):
        from pytorch_optimizer import SM3

        kwargs = dict(lr=1e-1, momentum=self.opts["momentum"])
        kwargs.update(hyper)
        return SM3(params, **kwargs)
