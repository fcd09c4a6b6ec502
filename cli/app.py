"""The Typer application: every command registered here, in one place; the default command and
error mapping.

Command modules hold plain functions and never import this module (no import cycle). Every one of
them is imported at start-up, so at module level they import only typer, the shared options and
small torch-free helpers; each command imports its own subsystem (estimate, probe, renderers, rich)
in its body. torch, timm and transformers are imported only where a model is built, so
``smmf-plan resnet50`` from the shape cache starts without them.

``smmf-plan MODEL`` is short for ``smmf-plan plan MODEL``. Every user error is one line on stderr
with exit code 2: :class:`~smmf_plan.errors.PlanError` from the library and click's usage errors
alike; no traceback.
"""

from __future__ import annotations

import sys

import typer

from smmf_plan import __version__
from smmf_plan.errors import PlanError

from . import check, devices, models, optimizers, plan, probe, reproduce, shapes, size

app = typer.Typer(
    name="smmf-plan",
    help="Will training this model fit, with which optimizer, on which device?",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command("plan")(plan.plan)
app.command("shapes")(shapes.shapes)
app.command("size")(size.size)
app.command("probe")(probe.probe)
app.command("check")(check.check)
app.command("devices")(devices.devices)
app.command("models")(models.models)
app.command("optimizers")(optimizers.optimizers)
app.command("reproduce")(reproduce.reproduce)


def _click_errors():
    try:
        from typer._click import exceptions as ex  # typer >= 0.26 vendors click
    except ImportError:  # pragma: no cover - older typer
        from click import exceptions as ex
    return ex


def _literal_help(command) -> None:
    """Escape rich markup in every help text of ``command`` and its subcommands: typer renders
    help as rich markup, which would swallow ``[tool.smmf-plan]`` or ``smmf-plan[compare]``."""
    from rich.markup import escape

    for cmd in [command, *getattr(command, "commands", {}).values()]:
        for attr in ("help", "short_help", "epilog"):
            if getattr(cmd, attr, None):
                setattr(cmd, attr, escape(getattr(cmd, attr)))
        for param in cmd.params:
            if getattr(param, "help", None):
                param.help = escape(param.help)


def _argv_with_default_command(argv: list[str]) -> list[str]:
    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    if argv and argv[0] not in names and argv[0] not in ("-h", "--help", "--version"):
        return ["plan", *argv]
    return argv


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--version"]:
        print(f"smmf-plan {__version__}")
        raise SystemExit(0)
    from smmf_plan.quiet import quiet_libraries

    ex = _click_errors()
    command = typer.main.get_command(app)
    _literal_help(command)
    try:
        with quiet_libraries():  # the libraries' chatter while we build and trace is not the user's
            rc = command.main(args=_argv_with_default_command(args), prog_name="smmf-plan",
                              standalone_mode=False)
    except PlanError as e:
        _fail(str(e))
    except ex.UsageError as e:
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
