"""The Typer application: every command registered here, in one place (:data:`COMMANDS`); the
default command and error mapping.

Command modules hold plain functions and never import this module (no import cycle). They import
what they use at module level, except torch, timm and transformers, which are imported only where
a model is built, so ``smmf-plan resnet50`` from the shape cache runs without them. A run imports
only the module of the command it runs (:func:`build`): ``smmf-plan resnet50`` loads the planner,
not the probe, the paper reproduction or the CI gate; ``smmf-plan --help`` and the ``app``
attribute load every command.

``smmf-plan MODEL`` is short for ``smmf-plan plan MODEL``. Every user error is one line on stderr
with exit code 2: :class:`~smmf_plan.errors.PlanError` from the library and click's usage errors
alike; no traceback.
"""

from __future__ import annotations

import importlib
import sys
from typing import Iterable

import typer
from rich.markup import escape

from smmf_plan import __version__
from smmf_plan.errors import PlanError
from smmf_plan.quiet import quiet_libraries

#: every command in the order ``--help`` lists them: name -> (module of this package, function).
COMMANDS = {
    "plan": ("plan", "plan"),
    "shapes": ("shapes", "shapes"),
    "size": ("size", "size"),
    "probe": ("probe", "probe"),
    "check": ("check", "check"),
    "devices": ("devices", "devices"),
    "models": ("models", "models"),
    "optimizers": ("optimizers", "optimizers"),
    "reproduce": ("reproduce", "reproduce"),
}


def _root() -> None:
    pass


def build(names: Iterable[str] | None = None) -> typer.Typer:
    """The application with the commands ``names`` (default: all of :data:`COMMANDS`), each
    command's module imported as it is registered."""
    wanted = set(COMMANDS if names is None else names)
    app = typer.Typer(
        name="smmf-plan",
        help="Will training this model fit, with which optimizer, on which device?",
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)  # a group even when one command is registered
    for name, (module, function) in COMMANDS.items():
        if name in wanted:
            app.command(name)(getattr(importlib.import_module(f".{module}", __package__), function))
    return app


def __getattr__(name: str):
    if name == "app":  # every command (tests, documentation tools)
        globals()["app"] = built = build()
        return built
    raise AttributeError(name)


def _click_errors():
    try:
        from typer._click import exceptions as ex  # typer >= 0.26 vendors click
    except ImportError:  # pragma: no cover - older typer
        from click import exceptions as ex
    return ex


def _literal_help(command) -> None:
    """Escape rich markup in every help text of ``command`` and its subcommands: typer renders
    help as rich markup, which would swallow ``[tool.smmf-plan]`` or ``smmf-plan[compare]``."""
    for cmd in [command, *getattr(command, "commands", {}).values()]:
        for attr in ("help", "short_help", "epilog"):
            if getattr(cmd, attr, None):
                setattr(cmd, attr, escape(getattr(cmd, attr)))
        for param in cmd.params:
            if getattr(param, "help", None):
                param.help = escape(param.help)


def _argv_with_default_command(argv: list[str]) -> list[str]:
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version"):
        return ["plan", *argv]
    return argv


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--version"]:
        print(f"smmf-plan {__version__}")
        raise SystemExit(0)
    ex = _click_errors()
    args = _argv_with_default_command(args)
    command = typer.main.get_command(build(args[:1] if args[:1] and args[0] in COMMANDS else None))
    _literal_help(command)
    try:
        with quiet_libraries():  # the libraries' chatter while we build and trace is not the user's
            rc = command.main(args=args, prog_name="smmf-plan", standalone_mode=False)
    except PlanError as e:
        _fail(str(e))
    except ex.UsageError as e:
        if not e.format_message():  # no arguments: click has printed the help already
            raise SystemExit(2)
        hint = f" (see: smmf-plan {e.ctx.info_name} --help)" if e.ctx and e.ctx.info_name != "smmf-plan" else ""
        _fail(e.format_message().replace("\n", " ") + hint)
    except ex.ClickException as e:
        _fail(e.format_message().replace("\n", " "))
    except typer.Abort:
        print("aborted", file=sys.stderr)
        raise SystemExit(130)
    except typer.Exit as e:
        raise SystemExit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130)
    raise SystemExit(rc if isinstance(rc, int) else 0)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
