"""Running the command line in-process, the way four test modules do: `run(args, capsys)` gives
(exit code, stdout, stderr); `isolated_cache` (autouse where imported) points the shape cache at
the test's own folder."""

import pytest

from smmf_plan.cli import main


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    return e.value.code, out, err


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SMMF_PLAN_CACHE_DIR", str(tmp_path / "cache"))
