"""AdEMAMix (Pagliardini et al., "The AdEMAMix Optimizer: Better, Faster, Older", 2024) as
``pytorch_optimizer.AdEMAMix``.

State: ``exp_avg``, ``exp_avg_slow`` (the slow EMA) and ``exp_avg_sq`` in the parameter's dtype.

Step temporaries: the foreach path (the default on every device) holds the group's denominators
and updates (two copies); the per-parameter path does the same one parameter at a time.

Probe learning rate 1e-3.
"""

from __future__ import annotations

from ..shapes import ParamSpec
from .base import FOREACH_FIRST, FOREACH_FLAG, VERIFIED_BY_TESTS, OptimizerInfo, Options, StateTensor, param_dtype
from .signum import PYTORCH_OPTIMIZER
from .temporaries import foreach_peak, loop_peak


def state(o: Options, spec: ParamSpec, group: str) -> list[StateTensor]:
    pd = param_dtype(spec)
    return [StateTensor(n, spec.shape, pd) for n in ("exp_avg", "exp_avg_sq", "exp_avg_slow")]


INFO = OptimizerInfo(
    id="ademamix", display_name="AdEMAMix",
    summary="AdEMAMix: Adam plus a slow EMA; three full-size moments per parameter",
    implementation="pytorch_optimizer:AdEMAMix", requires=PYTORCH_OPTIMIZER,
    reproduces="pytorch_optimizer.AdEMAMix, pytorch-optimizer 4.1.0", verified=VERIFIED_BY_TESTS,
    state=state,
    temporaries={"foreach": lambda o, s, q: foreach_peak(s, q, copies=2),
                 "for-loop": lambda o, s, q: loop_peak(s, q, full=2)},
    paths=FOREACH_FIRST,
    path_args=FOREACH_FLAG,
    probe_lr=1e-3, constructor=lambda o: dict(lr=1e-3),
)
