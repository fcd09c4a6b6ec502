"""Signum: sign descent with momentum, as ``pytorch_optimizer.SignSGD(momentum>0)``
(Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex Problems", 2018).

State: ``momentum_buffer`` in the parameter's dtype when ``momentum`` > 0 (0 is signSGD: none).

Step temporaries: the foreach path (pytorch_optimizer's default on every device) takes the sign
of the whole group at once: one copy of the group; the per-parameter path one sign at a time
(a = 1).

Probe learning rate 1e-4 (sign steps move every weight by the learning rate).
"""

from __future__ import annotations

from ..shapes import ParamSpec
from .base import (
    FOREACH_FIRST,
    FOREACH_FLAG,
    VERIFIED_BY_TESTS,
    Interval,
    OptimizerInfo,
    Option,
    Options,
    Requirement,
    StateTensor,
    param_dtype,
)
from .temporaries import foreach_peak, loop_peak

PYTORCH_OPTIMIZER = Requirement("pytorch-optimizer", "pytorch_optimizer")  # a main dependency


def state(o: Options, spec: ParamSpec, group: str) -> list[StateTensor]:
    if not o["momentum"]:
        return []
    return [StateTensor("momentum_buffer", spec.shape, param_dtype(spec))]


INFO = OptimizerInfo(
    id="signum", display_name="Signum",
    summary="Signum: sign descent with one momentum per parameter",
    implementation="pytorch_optimizer:SignSGD", requires=PYTORCH_OPTIMIZER,
    reproduces="pytorch_optimizer.SignSGD, pytorch-optimizer 4.1.0", verified=VERIFIED_BY_TESTS,
    options={"momentum": Option(0.9, "float", "momentum factor; 0 is signSGD (no state)",
                                Interval(0, 1, high_closed=False))},
    state=state,
    temporaries={"foreach": lambda o, s, q: foreach_peak(s, q),
                 "for-loop": lambda o, s, q: loop_peak(s, q, full=1)},
    paths=FOREACH_FIRST,
    path_args=FOREACH_FLAG,
    probe_lr=1e-4, constructor=lambda o: dict(lr=1e-4, momentum=o["momentum"]),
)
