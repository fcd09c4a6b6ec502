"""Schedule-Free AdamW (Defazio et al., "The Road Less Scheduled", 2024): ``pytorch_optimizer``'s
``ScheduleFreeAdamW`` (default) or the authors' ``schedulefree.AdamWScheduleFree``
(``:impl=schedulefree``).

State (both): ``z`` (a clone of the parameter: the base sequence) and ``exp_avg_sq``, in the
parameter's dtype. The parameter itself holds the interpolated sequence ``y``; the optimizer must
be put in train mode (``optimizer.train()``) before stepping, which the registry's build does.

Step temporaries, measured: the foreach path (both implementations' default) holds the group's
denominators (one copy; pytorch_optimizer's also the normalised gradients: two); the
per-parameter path one denominator at a time (a = 1; pytorch_optimizer's a = 2).

Probe learning rate 2.5e-3, pytorch_optimizer's default.
"""

from __future__ import annotations

from ..shapes import ParamSpec
from .base import (
    FOREACH_FIRST,
    FOREACH_FLAG,
    VERIFIED_BY_TESTS,
    Implementation,
    OptimizerInfo,
    Option,
    Options,
    Requirement,
    StateTensor,
    param_dtype,
)
from .signum import PYTORCH_OPTIMIZER
from .temporaries import foreach_peak, loop_peak

IMPLS = ("pytorch_optimizer", "schedulefree")


def state(o: Options, spec: ParamSpec, group: str) -> list[StateTensor]:
    pd = param_dtype(spec)
    return [StateTensor("z", spec.shape, pd), StateTensor("exp_avg_sq", spec.shape, pd)]


def _foreach(o: Options, specs, quantum: int) -> int:
    return foreach_peak(specs, quantum, copies=2 if o["impl"] == "pytorch_optimizer" else 1)


def _loop(o: Options, specs, quantum: int) -> int:
    return loop_peak(specs, quantum, full=2 if o["impl"] == "pytorch_optimizer" else 1)


INFO = OptimizerInfo(
    id="schedulefree-adamw", display_name="Schedule-Free AdamW",
    summary="Schedule-Free AdamW: no schedule; z and a second moment per parameter",
    implementation="pytorch_optimizer:ScheduleFreeAdamW", requires=PYTORCH_OPTIMIZER,
    reproduces="pytorch_optimizer.ScheduleFreeAdamW, pytorch-optimizer 4.1.0",
    verified=VERIFIED_BY_TESTS,
    impls={"schedulefree": Implementation(
        "schedulefree:AdamWScheduleFree",
        Requirement("schedulefree", "schedulefree", extra="compare"),
        "schedulefree.AdamWScheduleFree, schedulefree 1.4.1")},
    options={"impl": Option("pytorch_optimizer", "choice", "which implementation", choices=IMPLS)},
    state=state,
    temporaries={"foreach": _foreach, "for-loop": _loop},
    paths=FOREACH_FIRST,
    path_args=FOREACH_FLAG,
    probe_lr=2.5e-3, constructor=lambda o: dict(lr=2.5e-3),
    prepare=lambda optimizer: optimizer.train(),
)
