"""User-facing errors. Anything raised as a :class:`PlanError` is shown by the CLI as one line
(problem and fix) with exit code 2 and no traceback."""

from __future__ import annotations


class PlanError(ValueError):
    """Bad input: the message names the problem and how to fix it."""


class SourceError(PlanError):
    """A model source could not be resolved or read safely."""


class OfflineError(SourceError):
    """A hub id was asked for while offline and nothing is cached."""


class TraceError(PlanError):
    """A model's training step could not be traced without data: the estimate goes on without its
    activations (marked incomplete, with this message as the reason)."""
