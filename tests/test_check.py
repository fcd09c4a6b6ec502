"""``smmf-plan check``: budgets, baselines, exit codes and output formats, end to end through the CLI.

Models are real files written here (safetensors via the real library) or real timm architectures
built on the meta device; nothing is stubbed. Byte counts are exact: Adam keeps a 4-byte fp32
``step`` plus two fp32 moments per parameter, so a W(64×32) + b(64) model needs
2 × 4 + 2 × 4 × (2048 + 64) = 16 904 bytes.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import smmf_plan.cli.check  # noqa: F401  (registers the command)
from smmf_plan.cli import main


def adam_bytes(*shapes: tuple[int, ...]) -> int:
    return sum(4 + 2 * 4 * int(np.prod(s)) for s in shapes)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SMMF_PLAN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "spec-cache"))


def write_model(path: Path, cols: int = 32) -> Path:
    from safetensors.numpy import save_file

    save_file({"fc.weight": np.zeros((64, cols), np.float32), "fc.bias": np.zeros((64,), np.float32)},
              str(path))
    return path


def write_pyproject(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "pyproject.toml"
    p.write_text('[project]\nname = "demo"\n\n[tool.smmf-plan]\n' + body)
    return p


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(["check", *args])
    out, err = capsys.readouterr()
    return e.value.code, out, err


TINY = '''
[[tool.smmf-plan.checks]]
name = "tiny"
model = "tiny.safetensors"
optimizer = ["adam", "smmf"]
max-state = "{budget}"
'''


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_model(tmp_path / "tiny.safetensors")
    return tmp_path


def test_the_tiny_model_needs_the_hand_computed_bytes():
    assert adam_bytes((64, 32), (64,)) == 16904


# --------------------------------------------------------------------------- budgets

def test_within_budget_exits_0(tiny, capsys):
    write_pyproject(tiny, TINY.format(budget="17 KiB"))
    code, out, err = run_cli(capsys, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema_version"] == 2 and doc["ok"] is True and doc["exit_code"] == 0
    adam = next(r for r in doc["results"] if r["optimizer"] == "adam" and r["metric"] == "state")
    assert adam["now_bytes"] == 16904
    assert adam["budget_bytes"] == 17 * 1024 and adam["status"] == "PASS"


def test_over_budget_exits_1_naming_check_metric_and_overshoot(tiny, capsys):
    write_pyproject(tiny, TINY.format(budget="16 KiB"))
    code, out, err = run_cli(capsys)
    assert code == 1
    # 16 904 − 16 384 = 520 bytes over, 3.2 % of the budget
    assert "FAIL tiny [adam]: state 16.5 KiB > max-state 16.0 KiB (+520 B, +3.2%)" in out
    assert "FAIL" in out and "PASS" in out  # statuses are words, not only colours
    # SMMF's state is far below the budget and is not reported as a failure
    assert "tiny [smmf]: state" not in out


def test_the_gate_counts_what_plan_counts(tmp_path, monkeypatch, capsys):
    """A real timm model built on meta: the check's number is the planner's number."""
    import smmf_plan.cli.plan  # noqa: F401

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["plan", "mobilenetv2_050", "-o", "adam,smmf", "--json"])
    assert e.value.code == 0
    plan = json.loads(capsys.readouterr().out)
    text = json.dumps(plan)
    write_pyproject(tmp_path, '''
[[tool.smmf-plan.checks]]
model = "mobilenetv2_050"
optimizer = ["adam", "smmf"]
max-state = "1 GiB"
''')
    code, out, err = run_cli(capsys, "--json")
    assert code == 0, err
    doc = json.loads(out)
    state = {r["optimizer"]: r["now_bytes"] for r in doc["results"] if r["metric"] == "state"}
    assert doc["checks"][0]["id"] == "mobilenetv2_050"
    for oid, nbytes in state.items():
        assert f'"state_bytes": {nbytes}' in text, (oid, nbytes)
    # mobilenetv2_050: 1 968 680 fp32 parameters in 158 tensors → Adam 2 × 4 × n + 4 × 158
    assert state["adam"] == 8 * doc["checks"][0]["model_summary"]["num_params"] + 4 * 158
    assert state["smmf"] < state["adam"] / 10


# --------------------------------------------------------------------------- baseline

def test_baseline_regression_beyond_tolerance_exits_1(tiny, capsys):
    write_pyproject(tiny, TINY.format(budget="1 MiB"))
    code, _, err = run_cli(capsys, "--baseline", "base.json", "--update-baseline")
    assert code == 0, err
    base = json.loads((tiny / "base.json").read_text())
    assert base["schema_version"] == 1
    assert base["checks"]["tiny"]["optimizers"]["adam"]["state_bytes"] == 16904

    write_model(tiny / "tiny.safetensors", cols=33)  # +64 parameters: +512 bytes of Adam state
    grown = adam_bytes((64, 33), (64,))
    assert grown - 16904 == 512
    code, out, _ = run_cli(capsys, "--baseline", "base.json", "--tolerance", "1%")
    assert code == 1
    assert "tiny [adam]: state 16.5 KiB → 17.0 KiB (+512 B, +3.0%) grew beyond the tolerance of 1%" in out
    # the same growth within a looser tolerance passes, in percent and in bytes
    assert run_cli(capsys, "--baseline", "base.json", "--tolerance", "5%")[0] == 0
    assert run_cli(capsys, "--baseline", "base.json", "--tolerance", "512B")[0] == 0
    assert run_cli(capsys, "--baseline", "base.json", "--tolerance", "511")[0] == 1
    # the default tolerance is zero: any growth fails
    assert run_cli(capsys, "--baseline", "base.json")[0] == 1


def test_improvement_exits_0_with_a_hint_to_update(tiny, capsys):
    write_pyproject(tiny, TINY.format(budget="1 MiB"))
    assert run_cli(capsys, "-b", "base.json", "--update-baseline")[0] == 0
    write_model(tiny / "tiny.safetensors", cols=16)
    code, out, _ = run_cli(capsys, "-b", "base.json")
    assert code == 0
    assert "IMPROVED" in out
    assert "smmf-plan check --baseline base.json --update-baseline" in out
    code, out, _ = run_cli(capsys, "-b", "base.json", "--json")
    doc = json.loads(out)
    adam = next(r for r in doc["results"] if r["optimizer"] == "adam")
    assert adam["status"] == "IMPROVED"
    assert adam["delta_bytes"] == adam_bytes((64, 16), (64,)) - 16904 == -8192
    assert any("--update-baseline" in h for h in doc["hints"])
    # after updating, the improvement is the new baseline and a regression to the old size fails
    assert run_cli(capsys, "-b", "base.json", "--update-baseline")[0] == 0
    write_model(tiny / "tiny.safetensors", cols=32)
    assert run_cli(capsys, "-b", "base.json")[0] == 1


def test_update_baseline_is_deterministic_and_budgets_still_decide(tiny, capsys):
    write_pyproject(tiny, TINY.format(budget="16 KiB"))
    code, out, _ = run_cli(capsys, "-b", "base.json", "--update-baseline")
    assert code == 1 and "max-state" in out  # updating never waives a budget
    first = (tiny / "base.json").read_bytes()
    assert run_cli(capsys, "-b", "base.json", "--update-baseline")[0] == 1
    assert (tiny / "base.json").read_bytes() == first


def test_new_and_stale_entries_pass_with_hints(tiny, capsys):
    write_pyproject(tiny, TINY.format(budget="1 MiB").replace('["adam", "smmf"]', '"adam"'))
    assert run_cli(capsys, "-b", "base.json", "--update-baseline")[0] == 0
    write_pyproject(tiny, TINY.format(budget="1 MiB").replace('["adam", "smmf"]', '"smmf"'))
    code, out, _ = run_cli(capsys, "-b", "base.json", "--json")
    assert code == 0
    doc = json.loads(out)
    assert [r["status"] for r in doc["results"]] == ["NEW"]
    assert doc["baseline"]["stale_entries"] == [{"check": "tiny", "optimizer": "adam", "metric": "state"}]


def test_baseline_and_tolerance_from_the_config(tiny, capsys):
    write_pyproject(tiny, 'baseline = "reports/base.json"\ntolerance = "600B"\n'
                    + TINY.format(budget="1 MiB"))
    (tiny / "reports").mkdir()
    assert run_cli(capsys, "--update-baseline")[0] == 0
    assert (tiny / "reports" / "base.json").is_file()
    write_model(tiny / "tiny.safetensors", cols=33)
    assert run_cli(capsys)[0] == 0  # +512 B ≤ 600 B from the config
    assert run_cli(capsys, "--tolerance", "0")[0] == 1  # the command line wins


# --------------------------------------------------------------------------- atomic writes

def test_interrupted_baseline_write_leaves_the_old_file_intact(tmp_path):
    """Serialization fails after more than a buffer's worth of JSON reached the temporary file:
    the baseline keeps its old bytes and no temporary file is left behind."""
    from smmf_plan.atomic import write_json_atomic

    target = tmp_path / "base.json"
    write_json_atomic(target, {"schema_version": 1, "checks": {}})
    original = target.read_bytes()
    seen: dict[str, int] = {}

    class Interrupted(Exception):
        pass

    class Explodes(list):  # non-empty, or the encoder writes [] without iterating
        def __iter__(self):
            yield from range(20000)  # ~200 KB of JSON, far more than the write buffer
            temps = [p for p in tmp_path.iterdir() if p.name != "base.json"]
            seen["temps"] = len(temps)
            seen["partial_bytes"] = sum(p.stat().st_size for p in temps)
            raise Interrupted("power cut")

    with pytest.raises(Interrupted):
        write_json_atomic(target, {"schema_version": 1, "checks": Explodes([None])})
    assert seen["temps"] == 1 and seen["partial_bytes"] > 65536  # a truncated file really existed
    assert target.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.json"]


def test_update_that_fails_to_evaluate_leaves_the_baseline_untouched(tiny, capsys):
    write_pyproject(tiny, TINY.format(budget="1 MiB"))
    assert run_cli(capsys, "-b", "base.json", "--update-baseline")[0] == 0
    before = (tiny / "base.json").read_bytes()
    write_pyproject(tiny, TINY.format(budget="1 MiB").replace("tiny.safetensors", "gone.safetensors"))
    code, _, err = run_cli(capsys, "-b", "base.json", "--update-baseline")
    assert code == 2 and "gone.safetensors" in err
    assert (tiny / "base.json").read_bytes() == before


# --------------------------------------------------------------------------- output formats

def test_markdown_and_junit(tiny, capsys):
    write_pyproject(tiny, TINY.format(budget="16 KiB"))
    code, out, _ = run_cli(capsys, "--format", "markdown", "--junit", "out/junit.xml")
    assert code == 2  # the JUnit directory does not exist: a usage error, named
    (tiny / "out").mkdir()
    code, out, _ = run_cli(capsys, "--format", "markdown", "--junit", "out/junit.xml")
    assert code == 1
    assert out.startswith("### smmf-plan check: ❌ FAIL")
    assert "| check | optimizer | metric | budget | baseline | now | delta | status |" in out
    assert "| tiny | adam | state | 16.0 KiB | – | 16.5 KiB | – | ❌ **FAIL** |" in out
    root = ET.parse(tiny / "out" / "junit.xml").getroot()
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["adam state", "smmf state"]
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    failure = cases[0].find("failure")
    assert failure is not None and failure.get("type") == "budget"
    assert "tiny [adam]: state 16.5 KiB > max-state 16.0 KiB" in failure.get("message")
    assert cases[1].find("failure") is None
    assert "now_bytes=16904" in cases[0].find("system-out").text


def test_table_reads_in_monochrome(tiny, capsys, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    write_pyproject(tiny, TINY.format(budget="17 KiB"))
    code, out, _ = run_cli(capsys)
    assert code == 0
    for col in ("check", "optimizer", "metric", "budget", "baseline", "now", "delta", "status"):
        assert col in out
    assert out.count("PASS") >= 2 and "\x1b[" not in out


# --------------------------------------------------------------------------- configuration errors

@pytest.mark.parametrize("body, needles", [
    ('[[tool.smmf-plan.checks]]\nmodel = "tiny.safetensors\n', ["error: pyproject.toml:6:26: malformed TOML"]),
    ('[[tool.smmf-plan.checks]]\nmodel = "tiny.safetensors"\nmax_state = "5MiB"\n',
     ["unknown key 'max_state'", "did you mean 'max-state'"]),
    ('[[tool.smmf-plan.checks]]\nmodle = "tiny.safetensors"\n', ["unknown key 'modle'", "'model'"]),
    ('devcie = "rpi-zero"\n[[tool.smmf-plan.checks]]\nmodel = "tiny.safetensors"\n',
     ["unknown key 'devcie'", "did you mean 'device'"]),
    ('[[tool.smmf-plan.checks]]\nname = "tiny"\nmodel = "tiny.safetensors"\nmax-state = "5 MeB"\n',
     ["check 1 ('tiny')", "max-state = '5 MeB' is not a size"]),
    ('[[tool.smmf-plan.checks]]\nmodel = "tiny.safetensors"\nmax-total = true\n',
     ["check 1", "max-total = True is not a size"]),
    ('[[tool.smmf-plan.checks]]\nmodel = "tiny.safetensors"\n[[tool.smmf-plan.checks]]\nname = "x"\n'
     'optimizer = "smmf"\n', ["check 2 ('x')", "missing key 'model'"]),
    ('[[tool.smmf-plan.checks]]\nmodel = "tiny.safetensors"\noptimizer = ["adamm"]\n',
     ["check 1", "unknown optimizer 'adamm'", "adam"]),
    ('[[tool.smmf-plan.checks]]\nmodel = "tiny.safetensors"\nbatch-size = 0\n',
     ["batch-size = 0 must be a positive integer"]),
    ('[[tool.smmf-plan.checks]]\nmodel = "tiny.safetensors"\nallocator = "tcmalloc"\n',
     ["check 1", "allocator: unknown allocator 'tcmalloc'", "glibc-mmap"]),
    ('[[tool.smmf-plan.checks]]\nmodel = "tiny.safetensors"\ndevice = "t4"\nallocator = "glibc"\n',
     ["check 1", "--allocator glibc does not apply to t4", "use cuda"]),
    ('[[tool.smmf-plan.checks]]\nmodel = "tiny.safetensors"\n[[tool.smmf-plan.checks]]\n'
     'model = "tiny.safetensors"\n', ["duplicate check name 'tiny.safetensors'"]),
    ('[[tool.smmf-plan.checks]]\nmodel = "no-such-model-xyz"\n',
     ["check 1 ('no-such-model-xyz')", "model 'no-such-model-xyz'"]),
    ('tolerance = "lots"\n[[tool.smmf-plan.checks]]\nmodel = "tiny.safetensors"\n',
     ["tolerance 'lots' is not a tolerance"]),
    ('tolerance = 0.01\n[[tool.smmf-plan.checks]]\nmodel = "tiny.safetensors"\n',
     ["tolerance 0.01 is not a tolerance"]),
    ('', ["has no checks"]),
])
def test_configuration_errors_exit_2_naming_the_offending_key(tiny, capsys, body, needles):
    write_pyproject(tiny, body)
    code, out, err = run_cli(capsys)
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line, no traceback
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.mark.parametrize("args, baseline_text, needle", [
    (["-b", "missing.json"], None, "does not exist: record the current numbers with "
                                   "'smmf-plan check --update-baseline'"),
    (["-b", "base.json"], "{not json", "not valid JSON"),
    (["-b", "base.json"], '{"schema_version": 7, "checks": {}}', "schema_version 7"),
    (["-b", "base.json"], '{"schema_version": 1, "checks": {"tiny": {"optimizers": {"adam": '
                          '{"state_bytes": "big"}}}}}', "checks.tiny.optimizers.adam"),
    (["--update-baseline"], None, "--update-baseline needs a baseline file"),
    (["--tolerance", "-3%"], None, "--tolerance '-3%' is not a tolerance"),
    (["--format", "html"], None, "--format 'html'"),
    (["--config", "nope.toml"], None, "nope.toml: no such file"),
    (["-b", "tiny.safetensors/base.json", "--update-baseline"], None,
     "tiny.safetensors is a file, not a directory"),
])
def test_usage_errors_exit_2(tiny, capsys, args, baseline_text, needle):
    write_pyproject(tiny, TINY.format(budget="1 MiB"))
    if baseline_text is not None:
        (tiny / "base.json").write_text(baseline_text)
    code, out, err = run_cli(capsys, *args)
    assert code == 2, (out, err)
    assert needle in err, err


def test_update_baseline_creates_its_folders(tiny, capsys):
    """A fresh project has no reports/: --update-baseline creates it (and nothing else)."""
    write_pyproject(tiny, TINY.format(budget="1 MiB"))
    code, _, err = run_cli(capsys, "-b", "reports/gate/base.json", "--update-baseline")
    assert code == 0, err
    doc = json.loads((tiny / "reports" / "gate" / "base.json").read_text())
    assert doc["checks"]["tiny"]["optimizers"]["adam"]["state_bytes"] == adam_bytes((64, 32), (64,))
    assert sorted(p.name for p in (tiny / "reports" / "gate").iterdir()) == ["base.json"]
    code, _, err = run_cli(capsys, "-b", "reports/gate/base.json")
    assert code == 0, err


def test_no_pyproject_section_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    code, _, err = run_cli(capsys)
    assert code == 2 and "has no [tool.smmf-plan] section" in err


def test_config_file_outside_the_working_directory(tmp_path, monkeypatch, capsys):
    """--config with the same keys at top level; the model path is relative to the config file."""
    proj = tmp_path / "proj"
    proj.mkdir()
    write_model(proj / "tiny.safetensors")
    (proj / "gate.toml").write_text('[[checks]]\nname = "tiny"\nmodel = "tiny.safetensors"\n'
                                    'optimizer = "adam"\nmax-state = "16KiB"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, _ = run_cli(capsys, "--config", str(proj / "gate.toml"))
    assert code == 1 and "tiny [adam]: state 16.5 KiB > max-state 16.0 KiB" in out


def test_the_projects_own_gate_is_valid_and_matches_its_baseline():
    """The repository's [tool.smmf-plan] parses, and its committed baseline covers exactly its
    checks × optimizers (CI runs the full `smmf-plan check` against it)."""
    from smmf_plan.check import load_baseline, load_config

    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "pyproject.toml")
    assert config.baseline == "reports/check-baseline.json"
    baseline = load_baseline(root / config.baseline)
    expected = {(c.id, o) for c in config.checks for o in c.optimizers}
    assert {(c, o) for c, o, _ in baseline.keys()} == expected
    for c in config.checks:
        assert c.max_state is not None, c.id  # every self-check has a state budget
        for o in c.optimizers:
            assert baseline.get(c.id, o, "state") <= c.max_state


# --------------------------------------------------------------------------- end-to-end total

def _plan_totals(capsys, model: str) -> dict[str, dict]:
    """What `smmf-plan plan MODEL -b 1 --json` says a training step needs, per optimizer."""
    with pytest.raises(SystemExit) as e:
        main([model, "-o", "adam,smmf", "-b", "1", "--json"])
    out, err = capsys.readouterr()
    assert e.value.code == 0, err
    return json.loads(out)["optimizers"]


def test_max_total_and_device_budgets_use_the_memory_estimate(tiny, capsys):
    """check's total is the training-step total `plan` prints for the same model and batch; the
    parts that do not depend on the runtime model are checked by hand (CPU: 64-B blocks)."""
    plan = _plan_totals(capsys, "tiny.safetensors")
    weights = 64 * 32 * 4 + 64 * 4  # 8192 + 256, both multiples of 64
    adam = plan["adam"]["breakdown"]
    assert adam["weights"] == adam["grads"] == weights
    # Adam: a 4-byte step (one 64-B block) + two fp32 moments per tensor
    assert adam["state_allocated"] == plan["adam"]["allocated_bytes"]["cpu"] == 2 * 64 + 2 * weights
    expected = {k: v["total_bytes"] for k, v in plan.items()}
    body = TINY.format(budget="1 MiB") + f'max-total = "{expected["adam"]}"\n'
    write_pyproject(tiny, body)
    code, out, err = run_cli(capsys, "--json")
    assert code == 0, err
    totals = {r["optimizer"]: r for r in json.loads(out)["results"] if r["metric"] == "total"}
    assert {k: r["now_bytes"] for k, r in totals.items()} == expected
    assert totals["adam"]["budget_source"] == "max-total"
    # one byte less and Adam's total is over its budget
    write_pyproject(tiny, TINY.format(budget="1 MiB") + f'max-total = "{expected["adam"] - 1}"\n')
    code, out, _ = run_cli(capsys)
    assert code == 1 and "tiny [adam]: total" in out and "> max-total" in out and "(+1 B," in out
    # a device without max-total: its usable memory is the budget
    small = expected["smmf"] - 1
    write_pyproject(tiny, f'device = "{small}B"\n' + TINY.format(budget="1 MiB"))
    code, out, _ = run_cli(capsys)
    assert code == 1 and f"> usable memory of {small}B" in out


def test_json_carries_the_step_breakdown_behind_each_total(tiny, capsys):
    """Each ``total`` comes with its step entry: the breakdown per part, summing to that total
    exactly; weights, gradients and state are the hand-computed 64-B-aligned bytes."""
    write_pyproject(tiny, TINY.format(budget="1 MiB") + 'max-total = "1 GiB"\n'
                    + '\n[[tool.smmf-plan.checks]]\nname = "state-only"\nmodel = "tiny.safetensors"\n'
                    + 'optimizer = "adam"\nmax-state = "1 MiB"\n')
    code, out, err = run_cli(capsys, "--json")
    assert code == 0, err
    doc = json.loads(out)
    totals = {r["optimizer"]: r["now_bytes"] for r in doc["results"]
              if r["check"] == "tiny" and r["metric"] == "total"}
    checks = {c["id"]: c for c in doc["checks"]}
    assert checks["state-only"]["training"] is None
    training = checks["tiny"]["training"]
    assert training["allocator"] == "glibc" and training["batch_size"] == 1 and training["assumptions"]
    assert set(training["optimizers"]) == set(totals) == {"adam", "smmf"}
    for oid, entry in training["optimizers"].items():
        bd = entry["breakdown"]
        # weights without a config: activations not known (null), the total a lower bound
        assert bd["activations"] is None and entry["complete"] is False and not training["complete"]
        assert entry["total_bytes"] == sum(v for v in bd.values() if v) == totals[oid]
        assert bd["weights"] == bd["grads"] == 64 * 32 * 4 + 64 * 4  # both tensors 64-B multiples
    adam = training["optimizers"]["adam"]
    assert adam["state_bytes"] == adam_bytes((64, 32), (64,))  # logical
    # allocated: each moment is a 64-B multiple already; each 4-B `step` takes a 64-B block
    assert adam["breakdown"]["state_allocated"] == 2 * (8192 + 256) + 2 * 64
    # the human reports show the same breakdown, part by part
    code, out, _ = run_cli(capsys, "--format", "markdown")
    assert code == 0 and "**Training step behind each total**" in out
    assert "| check [optimizer] | weights | grads | state | activ. | temp. | runtime | total |" in out
    assert "| tiny [adam] |" in out and "| state-only [adam] |" not in out
    code, out, _ = run_cli(capsys)
    flat = " ".join(out.split())
    assert code == 0 and "Training step behind each total" in flat and "tiny [smmf]" in flat


def test_a_check_can_name_its_allocator(tiny, capsys):
    """``allocator`` in a check gates the footprint under that model (here the one a training
    job with MALLOC_MMAP_THRESHOLD_=131072 runs under), and says so in the JSON."""
    write_pyproject(tiny, TINY.format(budget="1 MiB") + 'max-total = "1 GiB"\nallocator = "glibc-mmap"\n')
    code, out, err = run_cli(capsys, "--json")
    assert code == 0, err
    check = json.loads(out)["checks"][0]
    assert check["allocator"] == "glibc-mmap" and check["training"]["allocator"] == "glibc-mmap"
    assert any("MALLOC_MMAP_THRESHOLD_=131072" in a for a in check["training"]["assumptions"])
