"""The CI memory-regression gate behind ``smmf-plan check``: configuration, evaluation, baseline.

A configuration is the ``[tool.smmf-plan]`` table of a ``pyproject.toml`` (or the same keys at the top
level of any TOML file given with ``--config``)::

    [tool.smmf-plan]
    device = "rpi-4-4gb"            # optional default device for every check
    baseline = "reports/check-baseline.json"   # optional default for --baseline
    tolerance = "1%"                # optional default for --tolerance

    [[tool.smmf-plan.checks]]
    name = "mobilenet-finetune"     # optional; defaults to the model string
    model = "mobilenetv2_100"       # anything the CLI takes as MODEL
    optimizer = ["adam", "smmf"]    # one id or a list (default: adam, adafactor, came, sm3, smmf)
    max-state = "5 MiB"             # budget for the optimizer state
    max-total = "1.5 GiB"           # budget for the end-to-end training-step estimate

Metrics (all in bytes, exact integers): ``state`` is the optimizer state the planner counts
(:func:`smmf_plan.plan.plan_state`, logical bytes, the number ``smmf-plan plan`` shows); ``total`` is
the end-to-end training-step estimate of :func:`smmf_plan.memory.estimate` (weights, gradients,
state, activations at ``batch-size``, runtime; rounded as the device's allocator rounds), measured
only for checks with a ``max-total`` or a ``device`` (it traces a forward and backward pass, so
state-only checks stay fast). A check with a ``device`` and no ``max-total`` uses the device's
usable memory as its ``total`` budget.

Outcome per metric: ``FAIL`` when it exceeds its budget or grew past the baseline by more than the
tolerance, ``IMPROVED`` when it shrank below the baseline, ``NEW`` when the baseline has no entry for
it, ``UPDATED`` when ``--update-baseline`` accepted a change, else ``PASS``. The exit code is 1 when
any metric FAILs, 0 otherwise; every configuration or usage problem raises
:class:`~smmf_plan.errors.PlanError` (exit 2).

The package, by concern: :mod:`.config` (the ``[tool.smmf-plan]`` table, read and validated),
:mod:`.evaluate` (each check's model loaded and measured), :mod:`.baseline` (the committed baseline
file, read and rewritten atomically) and :mod:`.gate` (each metric judged against its budget and
the baseline; :func:`run` does all four). Rendering lives with the other renderers, in
:mod:`smmf_plan.report.check_report`.

Nothing here imports torch at import time; models are loaded only inside :func:`evaluate`.
"""

from __future__ import annotations

from .baseline import BASELINE_KIND, BASELINE_SCHEMA_VERSION, Baseline, baseline_document, load_baseline, write_baseline
from .config import (
    BUDGET_KEYS,
    CHECK_KEYS,
    METRICS,
    TOP_KEYS,
    Check,
    CheckConfig,
    Tolerance,
    load_config,
    parse_check,
    parse_config,
    parse_tolerance,
)
from .evaluate import Evaluated, Measurement, evaluate, evaluate_check
from .gate import FAIL, IMPROVED, NEW, PASS, STATUSES, UPDATED, CheckReport, Result, compare, judge, run

__all__ = [
    "BASELINE_KIND", "BASELINE_SCHEMA_VERSION", "BUDGET_KEYS", "CHECK_KEYS", "FAIL", "IMPROVED",
    "METRICS", "NEW", "PASS", "STATUSES", "TOP_KEYS", "UPDATED", "Baseline", "Check", "CheckConfig",
    "CheckReport", "Evaluated", "Measurement", "Result", "Tolerance", "baseline_document", "compare",
    "evaluate", "evaluate_check", "judge", "load_baseline", "load_config", "parse_check",
    "parse_config", "parse_tolerance", "run", "write_baseline",
]
