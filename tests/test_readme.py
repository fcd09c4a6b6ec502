"""The README: two set-up commands first (CI runs exactly the second), and its `check` example works
as written when copied into an empty project."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def setup_commands() -> list[str]:
    first_block = README.index("```bash")
    first_section = README.index("\n## ")
    assert first_block < first_section, "the set-up commands come before the first section"
    block = re.search(r"```bash\n(.*?)```", README, re.S)
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_two_setup_commands_run_and_test():
    run, test = setup_commands()
    assert run.endswith("smmf-plan resnet50 --device rpi-zero")
    assert "pytest" in test


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    _, test = setup_commands()
    assert test in ci, "the README's test command must appear verbatim as a line of .ci/run"


def check_example() -> tuple[str, list[str]]:
    """The `check` section's pyproject.toml example and its command lines, verbatim."""
    section = README[README.index("## Guard memory in CI"):]
    section = section[:section.index("\n## ", 1)]
    toml = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    bash = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [ln for ln in bash.splitlines() if ln.strip()]
    return toml, commands


def test_check_example_passes_in_an_empty_project(tmp_path):
    """Copy the example into a fresh folder (no reports/, no baseline), record the baseline as
    the README says, then every listed command runs there with exit code 0 (real subprocesses)."""
    toml, commands = check_example()
    assert commands[0].split("#")[0].split() == ["smmf-plan", "check", "--update-baseline"]
    (tmp_path / "pyproject.toml").write_text(toml)
    # the commands run as a user's shell would, with this interpreter's scripts on PATH (the suite
    # may run from a venv that is not activated)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "SMMF_PLAN_CACHE_DIR": str(tmp_path / ".cache"),
           "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}

    def sh(line):
        return subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)

    # before the baseline exists: a clear one-line usage error
    r = sh("smmf-plan check")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines()[-1] == (
        "error: baseline reports/check-baseline.json does not exist: record the current numbers "
        "with 'smmf-plan check --update-baseline' and commit the file")
    assert not (tmp_path / "reports").exists()  # nothing written half-way
    for line in commands:
        r = sh(line)
        assert r.returncode == 0, (line, r.stdout[-3000:], r.stderr[-3000:])
    baseline = json.loads((tmp_path / "reports" / "check-baseline.json").read_text())
    assert set(baseline["checks"]) == {"classifier", "llm-lora"}
    assert (tmp_path / "reports" / "smmf-check.xml").is_file()
    assert "PASS" in (tmp_path / "summary.md").read_text()
