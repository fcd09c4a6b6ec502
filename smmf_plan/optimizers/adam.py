"""torch.optim.Adam and AdamW.

State: ``step`` (0-d fp32, on the host unless ``fused``/``capturable``) plus ``exp_avg`` and
``exp_avg_sq`` (and ``max_exp_avg_sq`` with ``amsgrad``) in the parameter's dtype.

Step temporaries, per code path (torch picks for-loop on CPU and foreach on CUDA when neither
``foreach`` nor ``fused`` is given; fused is never its default):

* for-loop: a = 2 (``exp_avg_sq.sqrt()`` and ``/ bias_correction2_sqrt`` alive together), b = 1
  (the previous parameter's ``denom``); Adam (not AdamW) with weight decay adds
  ``grad.add(param)``: a = 3.
* foreach: ``exp_avg_sq_sqrt`` for every parameter of a (device, dtype) group: one copy of the
  group.
* fused: none.

Probe learning rate 1e-3, the usual default.
"""

from __future__ import annotations

from typing import Sequence

from ..shapes import ParamSpec
from .base import (
    TORCH_PATH_ARGS,
    TORCH_PATHS,
    VERIFIED_BY_TESTS,
    Interval,
    OptimizerInfo,
    Option,
    Options,
    Requirement,
    StateTensor,
    param_dtype,
)
from .temporaries import foreach_peak, loop_peak, no_temporaries

TORCH = Requirement("torch", "torch")
_REPRODUCES = "torch.optim.{}, torch 2.14.1"


def _options(weight_decay: float) -> dict[str, Option]:
    return {
        "amsgrad": Option(False, "bool", "keep max_exp_avg_sq (one more full-size moment)"),
        "fused": Option(False, "bool", "the fused kernel (state step on the device, no temporaries)"),
        "capturable": Option(False, "bool", "CUDA-graph capturable (state step on the device)"),
        "weight_decay": Option(weight_decay, "float", "weight decay (L2 for Adam, decoupled for AdamW)",
                               Interval(0, None)),
    }


def state(o: Options, spec: ParamSpec, group: str) -> list[StateTensor]:
    pd = param_dtype(spec)
    on_device = o["fused"] or o["capturable"]
    out = [
        StateTensor("step", (), "float32", on_host=not on_device),
        StateTensor("exp_avg", spec.shape, pd),
        StateTensor("exp_avg_sq", spec.shape, pd),
    ]
    if o["amsgrad"]:
        out.append(StateTensor("max_exp_avg_sq", spec.shape, pd))
    return out


def _loop(decoupled: bool):
    def rule(o: Options, specs: Sequence[ParamSpec], quantum: int) -> int:
        coupled_decay = not decoupled and bool(o["weight_decay"])
        return loop_peak(specs, quantum, full=3 if coupled_decay else 2, previous=1)
    return rule


def _foreach(o: Options, specs: Sequence[ParamSpec], quantum: int) -> int:
    return foreach_peak(specs, quantum)


def constructor(o: Options) -> dict:
    kwargs = {k: v for k, v in o.items() if k != "weight_decay" and v}
    kwargs["weight_decay"] = o["weight_decay"]
    return kwargs


def _info(cls: str, *, paper_name: str | None, summary: str, weight_decay: float,
          decoupled: bool) -> OptimizerInfo:
    return OptimizerInfo(
        id=cls.lower(), display_name=cls, paper_name=paper_name, summary=summary,
        implementation=f"torch.optim:{cls}", requires=TORCH, reproduces=_REPRODUCES.format(cls),
        verified=VERIFIED_BY_TESTS, options=_options(weight_decay), state=state,
        temporaries={"for-loop": _loop(decoupled), "foreach": _foreach, "fused": no_temporaries},
        paths=TORCH_PATHS,
        path_args=TORCH_PATH_ARGS,
        probe_lr=1e-3, constructor=constructor,
    )


ADAM = _info("Adam", paper_name="Adam", summary="Adam: two full-size moments per parameter",
             weight_decay=0.0, decoupled=False)
ADAMW = _info("AdamW", paper_name=None, summary="AdamW: Adam's state, decoupled weight decay",
              weight_decay=0.01, decoupled=True)
