"""came-pytorch's CAME.

State: Adafactor's factored second moment plus a factored residual (``exp_avg_res_row/col``,
rank ≥ 2 only), a full ``exp_avg`` and a 0-d ``RMS`` that keeps the parameter's dtype (every other
state is up-cast to fp32 for half-precision parameters).

Step temporaries (for-loop only): a = 3 (update, residual ``(update - exp_avg)**2``, their
product), v = 2 (row/column results of both factored statistics), plus 1.5× the row + column
vectors of the last factored parameter (still bound while later parameters are stepped).
Half-precision parameters are stepped in fp32.

Probe learning rate 2e-4, the implementation's default (5e-4 and up oscillate on a small CNN with
batch norm).
"""

from __future__ import annotations

from typing import Sequence

from .. import dtypes
from ..shapes import ParamSpec
from .adafactor import factored_second_moment
from .base import (
    DOES_NOT_RUN,
    LOOP_ONLY,
    VERIFIED_BY_TESTS,
    ZERO_FLAT,
    OptimizerInfo,
    Options,
    Requirement,
    StateTensor,
    param_dtype,
)
from .temporaries import loop_peak


def state(o: Options, spec: ParamSpec, group: str) -> list[StateTensor]:
    pd = param_dtype(spec)
    up = dtypes.upcast(pd)
    out = [StateTensor("exp_avg", spec.shape, up)]
    out += factored_second_moment(spec, up, "exp_avg_sq")
    if len(spec.shape) >= 2:
        out += factored_second_moment(spec, up, "exp_avg_res")
    out.append(StateTensor("RMS", (), pd))
    return out


def _loop(o: Options, specs: Sequence[ParamSpec], quantum: int) -> int:
    return loop_peak(specs, quantum, full=3, vectors=2, last_vectors=1.5, upcast_half=True)


INFO = OptimizerInfo(
    id="came", display_name="CAME", paper_name="CAME",
    summary="CAME: confidence-guided Adafactor with a full first moment",
    implementation="came_pytorch:CAME",
    requires=Requirement("came-pytorch", "came_pytorch"),
    reproduces="came_pytorch.CAME, came-pytorch 0.1.3",
    verified=VERIFIED_BY_TESTS,
    state=state,
    temporaries={"for-loop": _loop},
    paths=LOOP_ONLY,
    probe_lr=2e-4, constructor=lambda o: dict(lr=2e-4),
    dist_caveats={
        "fsdp2": DOES_NOT_RUN + "came_pytorch's CAME fails at its first step on FSDP2's DTensor "
                 "parameters ('got mixed torch.Tensor and DTensor'; torch 2.14.1)",
        "zero": ZERO_FLAT + "CAME factorizes only tensors of rank ≥ 2, so it keeps full second "
                "moments there",
    },
)
