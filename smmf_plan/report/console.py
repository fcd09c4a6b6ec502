"""The rich Console every human-readable output is printed with.

Markup and emoji codes are off: model names, paths, error messages and install hints are user
text, and rich would swallow ``[compare]`` in ``pip install 'smmf-plan[compare]'`` or
``[tool.smmf-plan]`` as a markup tag. Styles come from :class:`rich.text.Text` objects and the
``style=`` arguments, never from markup in strings.
"""

from __future__ import annotations

from rich.console import Console


def console(*, stderr: bool = False, **kwargs):
    """A ``rich.console.Console`` that prints strings exactly as written."""
    return Console(stderr=stderr, markup=False, emoji=False, **kwargs)
