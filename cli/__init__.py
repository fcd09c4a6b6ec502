"""smmf-plan's command line (installed as ``smmf_plan.cli``): Typer commands only — parse, call
the library, render, map errors to exit codes."""

from .app import main

__all__ = ["app", "main"]


def __getattr__(name: str):
    if name == "app":  # every command registered (cli.app.build)
        from . import app as module

        return module.app
    raise AttributeError(name)
