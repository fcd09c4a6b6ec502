"""Reproduce the SMMF paper's memory tables with the planner.

:mod:`.recipes` builds every model the paper trains (offline, on the meta device) and documents
the configuration chosen where the paper is silent; :mod:`.report` puts each of the paper's
optimizer-memory and end-to-end figures next to the planned value and writes
``paper-reproduction.md`` / ``.json``.
"""

from __future__ import annotations

__all__ = ["reproduce", "Summary"]


def __getattr__(name: str):  # lazy: keep ``import smmf_plan.reproduce`` free of torch
    if name in __all__:
        from . import report

        return getattr(report, name)
    raise AttributeError(name)
