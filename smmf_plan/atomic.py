"""Atomic file replacement: readers see the old file or the complete new one, never half.

One writer for every file smmf-plan writes (reports, baselines, SVGs, caches). It raises on any
failure; a caller for which a failed write is not an error (the caches) catches that explicitly.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def write_text_atomic(path: str | Path, writer: Callable[[Any], Any] | str, *,
                      make_dirs: bool = False) -> None:
    """Atomic replacement of a text file; ``writer`` is the text or a callable given the open file.

    The content goes to a temporary file in the same directory, is flushed and fsynced, then
    ``os.replace``-d over ``path`` (and the directory fsynced where the OS allows). If anything
    fails before the rename, the temporary file is removed and ``path`` is untouched.
    ``make_dirs`` creates missing parent directories first."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if make_dirs:
        directory.mkdir(parents=True, exist_ok=True)
    try:
        mode = target.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            if callable(writer):
                writer(f)
            else:
                f.write(writer)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable; not every OS lets a directory be opened
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dfd)


def write_json_atomic(path: str | Path, document: Any, *, indent: int | None = 2,
                      make_dirs: bool = False) -> None:
    """Write ``document`` as JSON (``indent`` spaces, or compact with ``None``) and a final newline
    to ``path`` atomically (:func:`write_text_atomic`): serialization streams into the temporary
    file, so a document that fails to serialize half-way leaves ``path`` untouched. Raises
    ``OSError`` (cannot write) and ``TypeError``/``ValueError`` (not serializable)."""
    separators = None if indent is not None else (",", ":")

    def dump(f) -> None:
        json.dump(document, f, indent=indent, separators=separators)
        f.write("\n")

    write_text_atomic(path, dump, make_dirs=make_dirs)
