"""smmf-plan's command line (installed as ``smmf_plan.cli``): Typer commands only — parse, call
the library, render, map errors to exit codes."""

from .app import app, main

__all__ = ["app", "main"]
