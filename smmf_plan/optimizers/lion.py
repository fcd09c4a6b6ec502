"""lion-pytorch's Lion (Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023).

State: ``exp_avg`` in the parameter's dtype.

Step temporaries: the eager ``update_fn`` clones ``exp_avg`` and adds the gradient out of place
before taking the sign: two full-size tensors alive at once (a = 2), freed before the next
parameter. ``use_triton=True`` (CUDA only) runs a Triton kernel in place: none.

Probe learning rate 1e-4, the implementation's default (Lion wants 3-10× less than AdamW).
"""

from __future__ import annotations

from typing import Sequence

from ..shapes import ParamSpec
from .base import VERIFIED_BY_TESTS, Interval, OptimizerInfo, Option, Options, Requirement, StateTensor, param_dtype
from .temporaries import loop_peak, no_temporaries


def state(o: Options, spec: ParamSpec, group: str) -> list[StateTensor]:
    return [StateTensor("exp_avg", spec.shape, param_dtype(spec))]


def _loop(o: Options, specs: Sequence[ParamSpec], quantum: int) -> int:
    return loop_peak(specs, quantum, full=2)


INFO = OptimizerInfo(
    id="lion", display_name="Lion",
    summary="Lion: one momentum per parameter, sign updates",
    implementation="lion_pytorch:Lion",
    requires=Requirement("lion-pytorch", "lion_pytorch", extra="compare"),
    reproduces="lion_pytorch.Lion, lion-pytorch 0.2.5", verified=VERIFIED_BY_TESTS,
    options={"weight_decay": Option(0.0, "float", "decoupled weight decay", Interval(0, None))},
    state=state,
    temporaries={"for-loop": _loop, "fused": no_temporaries},
    paths={"cpu": ("for-loop",), "cuda": ("for-loop", "fused")},
    path_args={"fused": {"use_triton": True}},
    probe_lr=1e-4, constructor=lambda o: dict(lr=1e-4, weight_decay=o["weight_decay"]),
)
