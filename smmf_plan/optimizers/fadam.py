"""FAdam (Hwang, "FAdam: Adam is a natural gradient optimizer using diagonal empirical Fisher
information", 2024) as ``pytorch_optimizer.FAdam``.

State: ``momentum`` and ``fim`` (the diagonal Fisher estimate), both fp32 whatever the
parameter's dtype (the constructor's ``momentum_dtype`` / ``fim_dtype`` defaults).

Step temporaries, measured: the foreach path (the default on every device) holds the powered
Fisher terms and two rounds of updates for the whole group (three copies); the per-parameter path the
parameter's ``fim ** p`` base, its update and the update's square for the RMS clip (a = 3).

Probe learning rate 1e-3.
"""

from __future__ import annotations

from ..shapes import ParamSpec
from .base import FOREACH_FIRST, FOREACH_FLAG, VERIFIED_BY_TESTS, OptimizerInfo, Options, StateTensor
from .signum import PYTORCH_OPTIMIZER
from .temporaries import foreach_peak, loop_peak


def state(o: Options, spec: ParamSpec, group: str) -> list[StateTensor]:
    return [StateTensor("momentum", spec.shape, "float32"), StateTensor("fim", spec.shape, "float32")]


INFO = OptimizerInfo(
    id="fadam", display_name="FAdam",
    summary="FAdam: Adam as natural gradient; two fp32 moments per parameter",
    implementation="pytorch_optimizer:FAdam", requires=PYTORCH_OPTIMIZER,
    reproduces="pytorch_optimizer.FAdam, pytorch-optimizer 4.1.0", verified=VERIFIED_BY_TESTS,
    state=state,
    temporaries={"foreach": lambda o, s, q: foreach_peak(s, q, copies=3),
                 "for-loop": lambda o, s, q: loop_peak(s, q, full=3)},
    paths=FOREACH_FIRST,
    path_args=FOREACH_FLAG,
    probe_lr=1e-3, constructor=lambda o: dict(lr=1e-3),
)
