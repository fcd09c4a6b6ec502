"""came-pytorch's CAME: Adafactor's factored second moment plus a factored residual
(``exp_avg_res_row/col``), a full ``exp_avg`` and a 0-d ``RMS`` that keeps the parameter's dtype
(every other state is up-cast to fp32 for half-precision parameters)."""

from __future__ import annotations

from typing import Any, Iterable

from .. import dtypes
from ..shapes import ParamSpec
from .adafactor import factored_second_moment
from .base import OptimizerLayout, StateTensor, param_dtype


class CAMELayout(OptimizerLayout):
    name = "came"
    summary = "CAME: confidence-guided Adafactor with a full first moment"
    implementation = "came_pytorch.CAME"
    requires = "came-pytorch"

    def state(self, spec: ParamSpec) -> list[StateTensor]:
        pd = param_dtype(spec)
        up = dtypes.upcast(pd)
        out = [StateTensor("exp_avg", spec.shape, up)]
        out += factored_second_moment(spec, up, "exp_avg_sq")
        if len(spec.shape) >= 2:
            out += factored_second_moment(spec, up, "exp_avg_res")
        out.append(StateTensor("RMS", (), pd))
        return out

    def build(self, params: Iterable, **hyper: Any):
        from came_pytorch import CAME

        kwargs = dict(lr=2e-4)
        kwargs.update(hyper)
        return CAME(params, **kwargs)
