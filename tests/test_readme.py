"""The README opens with exactly two set-up commands, and CI runs exactly the second one."""

from __future__ import annotations

import re
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
