"""Adalayer (Zhao et al., "Deconstructing What Makes a Good Optimizer for Language Models", 2024)
as ``AdalayerW`` in github.com/rosieyzh/optimizers-llm (``olmo/optim.py``, commit a1f8a3f), read
from its source: it is part of an OLMo training fork, not a package, so the entry runs only where
that code is importable as ``olmo.optim``, and the tests check the layout against these formulas.

State: ``step`` (0-d fp32 on the host), ``exp_avg`` (the parameter's shape and dtype) and one
second moment per layer: ``exp_avg_sq`` a 0-d fp32 tensor. The source's corrections replace it,
by OLMo's parameter names: ``lastlayer_correction`` gives a weight named ``ff_out`` with more
than 10 000 rows, and ``firstlayer_correction`` one named ``wte`` with more than 10 000 rows, a
per-row ``exp_avg_sq`` (rows, parameter dtype); ``att_correction`` gives ``att_proj`` three 0-d
fp32 tensors (``exp_avg_sq.0..2``, one each for Q, K, V).

Step temporaries (one parameter at a time, from the source): the squared gradient (a = 1); a
corrected layer also builds the full-size second-moment matrix, its square root and the
denominator (a = 3).

Probe learning rate 1e-3.
"""

from __future__ import annotations

from typing import Sequence

from .. import dtypes
from ..allocators import round_up
from ..shapes import ParamSpec
from .base import LOOP_ONLY, OptimizerInfo, Option, Options, Requirement, StateTensor, param_dtype

SOURCE = ("https://github.com/rosieyzh/optimizers-llm (olmo/optim.py at a1f8a3f; part of an OLMo "
          "fork, not a package)")


def _corrected(o: Options, spec: ParamSpec) -> str | None:
    """Which correction the source applies to ``spec``: ``row``, ``qkv`` or ``None``."""
    n = spec.name
    rows = spec.shape[0] if spec.shape else 0
    if o["att_correction"] and "att_proj" in n:
        return "qkv"
    if o["lastlayer_correction"] and "ff_out" in n and rows > 10000:
        return "row"
    if o["firstlayer_correction"] and "wte" in n and rows > 10000:
        return "row"
    return None


def state(o: Options, spec: ParamSpec, group: str) -> list[StateTensor]:
    pd = param_dtype(spec)
    out = [StateTensor("step", (), "float32", on_host=True), StateTensor("exp_avg", spec.shape, pd)]
    kind = _corrected(o, spec)
    if kind == "qkv":
        out += [StateTensor(f"exp_avg_sq.{j}", (), "float32") for j in range(3)]
    elif kind == "row":
        out.append(StateTensor("exp_avg_sq", (spec.shape[0],), pd))
    else:
        out.append(StateTensor("exp_avg_sq", (), "float32"))
    return out


def _loop(o: Options, specs: Sequence[ParamSpec], quantum: int) -> int:
    peak = 0
    for s in specs:
        full = round_up(s.numel * dtypes.itemsize(s.dtype), quantum)
        peak = max(peak, (3 if _corrected(o, s) else 1) * full)
    return peak


INFO = OptimizerInfo(
    id="adalayer", display_name="Adalayer",
    summary="Adalayer: Adam's first moment, one second-moment scalar per layer",
    implementation="olmo.optim:AdalayerW",
    requires=Requirement("optimizers-llm", "olmo.optim", source=SOURCE),
    reproduces="AdalayerW, rosieyzh/optimizers-llm a1f8a3f (read from its source)",
    verified=("layout and temporaries from the source's formulas (tests check the formulas; the "
              "code is not a package, so CI cannot run it)"),
    options={
        "lastlayer_correction": Option(False, "bool", "per-row second moment for OLMo's ff_out"),
        "firstlayer_correction": Option(False, "bool", "per-row second moment for OLMo's wte"),
        "att_correction": Option(False, "bool", "separate Q/K/V scalars for OLMo's att_proj"),
    },
    named_params=True,
    state=state,
    temporaries={"for-loop": _loop},
    paths=LOOP_ONLY,
    probe_lr=1e-3, constructor=lambda o: dict(lr=1e-3, **dict(o)),
)
