"""What a new user gets from `pip install -e .` and `smmf-plan probe MODEL`: every default optimizer
can run, and an optimizer that cannot run makes the probe fail with the reason (the real CLI in a
subprocess, a real package made unimportable)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from smmf_plan.optimizers import parse_many

ROOT = Path(__file__).resolve().parents[1]
PROBE = ["probe", "resnet18", "--steps", "2", "--batch-size", "2", "--input-size", "3,32,32"]


def _main_dependencies() -> set[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower() for d in deps}


def test_default_optimizers_need_only_the_main_dependencies():
    """`pip install -e .` (the README's first command) installs what every default optimizer's
    implementation needs: none of them hides behind an extra."""
    needed = {v.info.requires.distribution for v in parse_many(None)}
    assert needed == {"torch", "transformers", "came-pytorch", "pytorch-optimizer", "smmf-plan"}
    assert needed - {"smmf-plan"} <= _main_dependencies()  # smmf-plan: SMMF is this package
    assert all(v.info.requires.extra is None for v in parse_many(None))


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "smmf_plan", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=900)


def test_probe_on_its_defaults_can_run_every_default_optimizer():
    """The probe's default list is the five default optimizers, and every implementation imports
    here (tests/test_probe_train.py then trains each one through the worker)."""
    variants = parse_many(None)
    assert [v.id for v in variants] == ["adam", "adafactor", "came", "sm3", "smmf"]
    assert [v.missing_requirement() for v in variants] == [None] * 5
    for v in variants:
        __import__(v.info.requires.module)


def test_an_optimizer_that_cannot_run_fails_the_probe_with_its_reason(tmp_path):
    """came_pytorch made unimportable for the CLI and its workers (a sitecustomize on PYTHONPATH),
    as in an environment without the package."""
    # None in sys.modules is Python's mark of a module that cannot be imported: import raises
    # ModuleNotFoundError and importlib.util.find_spec returns None, as without the package
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['came_pytorch'] = None\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    hidden = subprocess.run([sys.executable, "-c", "import came_pytorch"], capture_output=True,
                            env={**os.environ, **env})
    assert hidden.returncode != 0  # the package really is gone for these processes
    r = _cli(*PROBE, "-o", "came", "--json", env=env)
    assert r.returncode == 1, (r.stdout, r.stderr)
    doc = json.loads(r.stdout)  # the document is still printed, whole
    assert doc["optimizers"]["came"]["status"] == "error"
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith("error: came: error: came needs came-pytorch")
    assert "which is not installed" in errors[0]
    assert "pip install 'came-pytorch'" in errors[0]  # printed as written, quotes and all
