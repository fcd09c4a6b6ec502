"""Bracketed text is printed as written: rich markup never swallows help or user text.

rich reads ``[tool.smmf-plan]`` or ``smmf-plan[compare]`` as a markup tag and drops it; help
texts, model names, device names and messages must come out verbatim (real CLI, subprocess).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import typer

WIDE = {**os.environ, "COLUMNS": "400", "TERM": "dumb"}  # no wrapping: compare whole help lines


def cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "smmf_plan", *args], capture_output=True,
                          text=True, env=env or WIDE, cwd=cwd, timeout=600)


def help_text(command, capsys, monkeypatch) -> str:
    """`smmf-plan COMMAND --help` as printed 400 columns wide, box drawing and wrapping removed."""
    from smmf_plan.cli import main

    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", out).split())


def test_check_help_shows_the_pyproject_table_name(capsys, monkeypatch):
    r = cli("check", "--help")  # once as a user runs it
    assert r.returncode == 0, r.stderr
    assert "[tool.smmf-plan]" in r.stdout
    text = help_text("check", capsys, monkeypatch)
    assert "(default: [tool.smmf-plan] of the nearest pyproject.toml)" in text
    assert "(default: baseline = under [tool.smmf-plan], if set)" in text


def _bracketed_help():
    """(command, help text) for every option help that holds a bracket."""
    from smmf_plan.cli.app import app

    command = typer.main.get_command(app)
    for name, cmd in command.commands.items():
        for p in cmd.params:
            if p.help and "[" in p.help:
                yield name, p.help
        if cmd.help and "[" in cmd.help:
            yield name, cmd.help.split("\n\n")[0]


@pytest.mark.parametrize("name,raw", list(_bracketed_help()))
def test_every_bracketed_help_text_survives(name, raw, capsys, monkeypatch):
    rendered = help_text(name, capsys, monkeypatch)
    for chunk in re.findall(r"\S*\[[^\]]*\]\S*", raw):
        assert chunk in rendered, (name, chunk)


def test_bracketed_device_name_in_the_devices_table(tmp_path):
    (tmp_path / "devices.toml").write_text(
        '[lab]\nname = "Lab box [rack 2]"\ntotal_bytes = "8GiB"\n')
    r = cli("devices", "--devices-file", str(tmp_path / "devices.toml"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Lab box [rack 2]" in r.stdout


def test_bracketed_model_name_in_plan_and_fit_tables(tmp_path):
    import json
    import struct

    hdr = json.dumps({"w": {"dtype": "F32", "shape": [64, 64], "data_offsets": [0, 16384]}}).encode()
    (tmp_path / "run[v2]").mkdir()
    f = tmp_path / "run[v2]" / "tiny.safetensors"
    f.write_bytes(struct.pack("<Q", len(hdr)) + hdr + b"\0" * 16384)
    r = cli(str(f), "-o", "adam", "-d", "1GB",
            env={**WIDE, "SMMF_PLAN_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    assert "run[v2]" in r.stdout
