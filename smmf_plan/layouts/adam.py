"""torch.optim.Adam / AdamW: ``step`` (0-d fp32, on the host unless fused/capturable) plus
``exp_avg`` and ``exp_avg_sq`` (and ``max_exp_avg_sq`` with amsgrad) in the parameter's dtype."""

from __future__ import annotations

from typing import Any, Iterable

from ..shapes import ParamSpec
from .base import OptimizerLayout, StateTensor, param_dtype, parse_bool


class AdamLayout(OptimizerLayout):
    name = "adam"
    summary = "Adam: two full-size moments per parameter"
    implementation = "torch.optim.Adam"
    options = {
        "amsgrad": (False, parse_bool),
        "fused": (False, parse_bool),
        "capturable": (False, parse_bool),
    }
    torch_class = "Adam"

    def state(self, spec: ParamSpec) -> list[StateTensor]:
        pd = param_dtype(spec)
        on_device = self.opts["fused"] or self.opts["capturable"]
        out = [
            StateTensor("step", (), "float32", on_host=not on_device),
            StateTensor("exp_avg", spec.shape, pd),
            StateTensor("exp_avg_sq", spec.shape, pd),
        ]
        if self.opts["amsgrad"]:
            out.append(StateTensor("max_exp_avg_sq", spec.shape, pd))
        return out

    def build(self, params: Iterable, **hyper: Any):
        import torch

        cls = getattr(torch.optim, self.torch_class)
        kwargs = {k: v for k, v in self.opts.items() if v}
        kwargs.update(hyper)
        return cls(params, **kwargs)


class AdamWLayout(AdamLayout):
    name = "adamw"
    summary = "AdamW: Adam's state, decoupled weight decay"
    implementation = "torch.optim.AdamW"
    torch_class = "AdamW"
