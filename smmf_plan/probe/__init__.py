"""Measured training probe: run a few real training steps of a model with each optimizer, each in a
fresh subprocess, and set what was measured beside what the planner predicted.

Parent side: :mod:`.runner` (``run_probe``). Child side: :mod:`.worker` (``python -m
smmf_plan.probe.worker``, job JSON on stdin, JSON lines on stdout). Memory caps: :mod:`.limits`.
CPU peak measurement: :mod:`.rss`. Synthetic batches: :mod:`.inputs`.

Importing this package imports no torch.
"""

from .job import ProbeJob, default_lr
from .runner import run_probe

__all__ = ["ProbeJob", "default_lr", "run_probe"]


def __getattr__(name):  # lazy: the runner pulls in rich and the planner
    if name == "run_probe":
        return run_probe
    raise AttributeError(name)
