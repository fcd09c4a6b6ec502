"""pytorch_optimizer's SM3.

State: one accumulator per dimension (``[1]*i + [s_i] + [1]*(r-1-i)``, a 0-d one for scalars) plus
a full ``momentum_buffer`` that the implementation allocates even when momentum is 0. Everything
keeps the parameter's dtype.

Step temporaries. for-loop: one full-size update at a time (a = 1); without momentum the update
is not state, so the previous parameter's stays bound to the loop variable (b = 1). foreach (the implementation's
default on CUDA for fp32/fp64 parameters): the updates of a (device, dtype) group are built in a
list first; with momentum each is the momentum buffer (state) and the fresh update is freed at
once, so the peak is the for-loop's; without momentum the list holds one full copy of the group.

Probe learning rate 1e-2: an Adagrad-style method whose first step has size ~lr per coordinate, so
the library's 0.1 overshoots on small random models.
"""

from __future__ import annotations

from typing import Sequence

from ..shapes import ParamSpec
from .base import (
    DOES_NOT_RUN,
    FOREACH_FLAG,
    VERIFIED_BY_TESTS,
    ZERO_FLAT,
    Interval,
    OptimizerInfo,
    Option,
    Options,
    Requirement,
    StateTensor,
    param_dtype,
)
from .temporaries import foreach_peak, loop_peak


def state(o: Options, spec: ParamSpec, group: str) -> list[StateTensor]:
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


def _loop(o: Options, specs: Sequence[ParamSpec], quantum: int) -> int:
    return loop_peak(specs, quantum, full=1, previous=0 if o["momentum"] else 1)


def _foreach(o: Options, specs: Sequence[ParamSpec], quantum: int) -> int:
    return _loop(o, specs, quantum) if o["momentum"] else foreach_peak(specs, quantum)


INFO = OptimizerInfo(
    id="sm3", display_name="SM3", paper_name="SM3",
    summary="SM3 (momentum 0.9): per-dimension accumulators plus a full momentum buffer",
    implementation="pytorch_optimizer:SM3",
    requires=Requirement("pytorch-optimizer", "pytorch_optimizer"),
    reproduces="pytorch_optimizer.SM3, pytorch-optimizer 4.1.0",
    verified=VERIFIED_BY_TESTS,
    options={"momentum": Option(0.9, "float", "momentum (the buffer is kept even at 0)",
                                Interval(0, 1, high_closed=False))},
    state=state,
    temporaries={"for-loop": _loop, "foreach": _foreach},
    paths={"cpu": ("for-loop", "foreach"), "cuda": ("foreach", "for-loop")},
    path_args=FOREACH_FLAG,
    probe_lr=1e-2, constructor=lambda o: dict(lr=1e-1, momentum=o["momentum"]),
    dist_caveats={
        "fsdp2": DOES_NOT_RUN + "pytorch_optimizer's SM3 fails at its first step on FSDP2's "
                 "DTensor parameters ('got mixed torch.Tensor and DTensor'; torch 2.14.1)",
        "zero": ZERO_FLAT + "SM3's one accumulator per dimension becomes one of the flat tensor's "
                "size",
    },
)
