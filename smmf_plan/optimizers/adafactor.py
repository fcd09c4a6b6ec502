"""transformers' Adafactor.

State: factored (rank ≥ 2, size-1 dims included) as a row vector over ``shape[:-1]`` and a
column vector over ``shape[:-2] + shape[-1:]``; otherwise a full ``exp_avg_sq``. ``exp_avg`` only
with ``beta1``; a 0-d ``RMS`` tensor always. Half-precision parameters get fp32 state (the
implementation up-casts the gradient first).

Step temporaries (for-loop only, on every device): a = 2 (``grad**2`` then ``+ eps``; the factored
product; ``-update``), v = 1 (the row/column results), b = 0; with ``beta1=none`` b = 1 (the last
``update`` is not state, so it stays bound). Half-precision parameters are stepped in fp32.

Probe learning rate 1e-3 with ``relative_step=False`` (the SMMF paper's setting).
"""

from __future__ import annotations

from typing import Sequence

from .. import dtypes
from ..shapes import ParamSpec
from .base import (
    DOES_NOT_RUN,
    LOOP_ONLY,
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
from .temporaries import loop_peak


def factored_second_moment(spec: ParamSpec, dtype: str, prefix: str) -> list[StateTensor]:
    """Adafactor-style factorization of a second-moment-like statistic (shared with CAME)."""
    s = spec.shape
    if len(s) >= 2:
        return [
            StateTensor(f"{prefix}_row", s[:-1], dtype),
            StateTensor(f"{prefix}_col", s[:-2] + s[-1:], dtype),
        ]
    return [StateTensor(prefix, s, dtype)]


def state(o: Options, spec: ParamSpec, group: str) -> list[StateTensor]:
    up = dtypes.upcast(param_dtype(spec))
    out = []
    if o["beta1"] is not None:
        out.append(StateTensor("exp_avg", spec.shape, up))
    out += factored_second_moment(spec, up, "exp_avg_sq")
    out.append(StateTensor("RMS", (), up))
    return out


def _loop(o: Options, specs: Sequence[ParamSpec], quantum: int) -> int:
    return loop_peak(specs, quantum, full=2, vectors=1, previous=1 if o["beta1"] is None else 0,
                     upcast_half=True)


def constructor(o: Options) -> dict:
    return dict(lr=1e-3, relative_step=False, scale_parameter=False, warmup_init=False,
                beta1=o["beta1"])


INFO = OptimizerInfo(
    id="adafactor", display_name="Adafactor", paper_name="Adafactor",
    summary="Adafactor (beta1=0.9 as the SMMF paper ran it; beta1=none is the library default)",
    implementation="transformers.optimization:Adafactor",
    requires=Requirement("transformers", "transformers"),
    reproduces="transformers.optimization.Adafactor, transformers 5.24.0",
    verified=VERIFIED_BY_TESTS,
    options={"beta1": Option(0.9, "float|none", "first-moment decay; none keeps no exp_avg",
                             Interval(0, 1))},
    state=state,
    temporaries={"for-loop": _loop},
    paths=LOOP_ONLY,
    probe_lr=1e-3, constructor=constructor,
    dist_caveats={
        "fsdp2": DOES_NOT_RUN + "transformers' Adafactor fails at its first step on FSDP2's DTensor "
                 "parameters ('got mixed torch.Tensor and DTensor'; torch 2.14.1)",
        "zero": ZERO_FLAT + "Adafactor factorizes only tensors of rank ≥ 2, so it keeps a full "
                "second moment there",
    },
)
