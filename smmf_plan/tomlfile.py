"""TOML files: one reader for the device catalog, users' device files, ``pyproject.toml`` and
``smmf-plan check`` configurations, with one-line errors that name the file (and line).

smmf-plan's own settings live under ``[tool.smmf-plan]`` (:data:`TOOL`) of the ``pyproject.toml``
nearest the working directory (:func:`find_pyproject`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .errors import PlanError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 needs the tomli backport
    import tomli as tomllib  # type: ignore[no-redef]

#: the ``[tool.*]`` table of a pyproject.toml that holds smmf-plan's settings.
TOOL = "smmf-plan"


def _toml_error(path: str, e: Exception) -> PlanError:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    line = getattr(e, "lineno", None)
    col = getattr(e, "colno", None)
    m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
    if line is None and m:
        line, col = int(m.group(1)), int(m.group(2))
    msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg)
    msg = re.sub(r"\s*\(at end of document\)", "", msg) if line is None else msg
    loc = f"{path}:{line}:{col}" if line is not None else path
    return PlanError(f"{loc}: malformed TOML: {msg}; fix the syntax")


def loads(text: str, shown: str) -> dict:
    """Parse TOML text; a syntax error is a one-line :class:`PlanError` at ``shown:line:col``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _toml_error(shown, e) from None


def read_toml(path: str | Path, shown: str | None = None, *, option: str | None = None) -> dict:
    """Parse a TOML file; every problem is a one-line :class:`PlanError` naming the file as
    ``shown`` (default ``path``), with ``file:line:col`` for syntax errors. ``option`` is the
    command-line option that named the file (``--config``), for the hint."""
    p = shown or str(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise PlanError(f"{p}: no such file" + (f"; check {option}" if option else "")) from None
    except IsADirectoryError:
        raise PlanError(f"{p}: is a directory; " + (f"{option} takes a TOML file" if option
                                                    else "give a TOML file")) from None
    except OSError as e:
        raise PlanError(f"{p}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise PlanError(f"{p}: not UTF-8 text; TOML files must be UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise _toml_error(p, e) from None


def find_pyproject(start: str | Path | None = None) -> Path | None:
    """The nearest ``pyproject.toml`` in ``start`` (default: the current directory) or above."""
    here = Path(start if start is not None else os.getcwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def tool_table(doc: dict) -> Any:
    """``[tool.smmf-plan]`` of a parsed pyproject.toml, or None when it has none."""
    tool = doc.get("tool")
    return tool.get(TOOL) if isinstance(tool, dict) else None
