"""torch.optim.SGD.

State: ``momentum_buffer`` in the parameter's dtype when ``momentum`` > 0 (a clone of the first
gradient); nothing otherwise.

Step temporaries, per code path (torch picks for-loop on CPU and foreach on CUDA; fused on
request):

* for-loop: weight decay adds ``grad.add(param)`` (a = 1) and Nesterov ``grad.add(buf)`` (a = 1
  more); plain SGD and heavy-ball momentum update in place.
* foreach: a copy of the group for weight decay (Nesterov then adds into that copy, or into the
  gradients themselves: no copy).
* fused: none.

Probe learning rate 1e-2.
"""

from __future__ import annotations

from typing import Sequence

from ..shapes import ParamSpec
from .adam import TORCH
from .base import (
    TORCH_PATH_ARGS,
    TORCH_PATHS,
    VERIFIED_BY_TESTS,
    Interval,
    OptimizerInfo,
    Option,
    Options,
    StateTensor,
    param_dtype,
)
from .temporaries import foreach_peak, loop_peak, no_temporaries


def state(o: Options, spec: ParamSpec, group: str) -> list[StateTensor]:
    if not o["momentum"]:
        return []
    return [StateTensor("momentum_buffer", spec.shape, param_dtype(spec))]


def _copies(o: Options) -> int:
    return int(bool(o["weight_decay"])) + int(bool(o["nesterov"]) and bool(o["momentum"]))


def _loop(o: Options, specs: Sequence[ParamSpec], quantum: int) -> int:
    return loop_peak(specs, quantum, full=_copies(o))


def _foreach(o: Options, specs: Sequence[ParamSpec], quantum: int) -> int:
    return foreach_peak(specs, quantum, copies=int(bool(o["weight_decay"])))


def constructor(o: Options) -> dict:
    kwargs = dict(lr=1e-2, momentum=o["momentum"], nesterov=o["nesterov"],
                  weight_decay=o["weight_decay"])
    if o["fused"]:
        kwargs["fused"] = True
    return kwargs


INFO = OptimizerInfo(
    id="sgd", display_name="SGD",
    summary="SGD: no state; a momentum buffer per parameter with :momentum=",
    implementation="torch.optim:SGD", requires=TORCH,
    reproduces="torch.optim.SGD, torch 2.14.1", verified=VERIFIED_BY_TESTS,
    options={
        "momentum": Option(0.0, "float", "momentum factor; > 0 keeps momentum_buffer",
                           Interval(0, None)),
        "nesterov": Option(False, "bool", "Nesterov momentum (needs momentum > 0)"),
        "weight_decay": Option(0.0, "float", "L2 weight decay", Interval(0, None)),
        "fused": Option(False, "bool", "the fused kernel (no temporaries)"),
    },
    state=state,
    temporaries={"for-loop": _loop, "foreach": _foreach, "fused": no_temporaries},
    paths=TORCH_PATHS,
    path_args=TORCH_PATH_ARGS,
    probe_lr=1e-2, constructor=constructor,
)
