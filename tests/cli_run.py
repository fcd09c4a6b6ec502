"""Running the command line in-process, the way four test modules do: `run(args, capsys)` gives
(exit code, stdout, stderr); `isolated_cache` (autouse where imported) points the shape and trace
cache at a folder of the test module's own: every module starts cold, and its tests reuse the
traces of the models they share (a test of cold or warm caching sets its own folder)."""

import pytest

from smmf_plan.cli import main


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    return e.value.code, out, err


@pytest.fixture(autouse=True, scope="module")
def isolated_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMMF_PLAN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield
