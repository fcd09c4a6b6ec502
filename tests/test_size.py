"""``smmf-plan size`` and ``smmf-plan devices`` end to end (real timm model on meta, real files)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

import smmf_plan.cli.devices  # noqa: F401  (registers the command)
import smmf_plan.cli.size as size_cli
from smmf_plan import dtypes
from smmf_plan.allocators import round_up
from smmf_plan.cli import main
from smmf_plan.devices import catalog, get_device
from smmf_plan.optimizers import parse_many
from smmf_plan.plan import plan_state


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SMMF_PLAN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "spec-cache"))


def run(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    out, err = capsys.readouterr()
    return e.value.code, out, err


@pytest.fixture(scope="module")
def resnet18_doc(tmp_path_factory):
    import subprocess
    import sys

    env = {"SMMF_PLAN_CACHE_DIR": str(tmp_path_factory.mktemp("c")), "PATH": "/usr/bin:/bin"}
    code = ("import smmf_plan.cli.size, smmf_plan.cli.devices; from smmf_plan.cli import main; "
            "main(['size', 'resnet18', '--json'])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_size_document_shape(resnet18_doc):
    doc = resnet18_doc
    assert doc["schema_version"] == 2 and doc["batch_size"] == 1
    assert doc["model"]["name"] == "resnet18" and doc["model"]["num_params"] == 11_689_512
    expected = "end-to-end"
    assert doc["estimate"] == expected
    assert list(doc["optimizers"]) == sorted(
        doc["optimizers"], key=lambda o: doc["optimizers"][o]["by_allocator"]["glibc"]["total_bytes"])
    usable = [row["device"]["usable_bytes"] for row in doc["devices"]]
    assert usable == sorted(usable) and len(usable) == 30


def test_size_totals_add_up_and_verdicts_follow(resnet18_doc):
    for oid, o in resnet18_doc["optimizers"].items():
        for alloc, b in o["by_allocator"].items():
            # the allocator part is left out where the model has none (mps: not modelled)
            allocator = ["allocator"] if alloc != "mps" else []
            assert list(b["breakdown"]) == ["weights", "grads", "state_allocated", "activations",
                                            "temporaries", *allocator, "runtime"]
            assert b["total_bytes"] == sum(b["breakdown"].values())
    for row in resnet18_doc["devices"]:
        d = row["device"]
        for oid, cell in row["optimizers"].items():
            assert cell["total_bytes"] == resnet18_doc["optimizers"][oid]["by_allocator"][row["allocator"]]["total_bytes"]
            assert cell["headroom_bytes"] == d["usable_bytes"] - cell["total_bytes"]
            assert cell["fits"] == (cell["headroom_bytes"] >= 0)
            assert cell["fits"] == (cell["max_batch_size"] >= 1)
        assert row["recommendation"].count("\n") == 0 and d["id"] in row["recommendation"]


def test_fixed_parts_are_exact(resnet18_doc):
    import timm
    import torch

    from smmf_plan.sources.module import specs_from_module

    with torch.device("meta"):
        model = timm.create_model("resnet18")
    specs = specs_from_module(model)
    params = sum(round_up(s.numel * dtypes.itemsize(s.dtype), 512) for s in specs)
    buffers = sum(round_up(b.numel() * b.element_size(), 512) for b in model.buffers())
    for layout in parse_many(None):
        b = resnet18_doc["optimizers"][layout.id]["by_allocator"]["cuda"]
        assert b["breakdown"]["state_allocated"] == plan_state(specs, layout).allocated_bytes["cuda"]
        assert b["state_bytes"] == plan_state(specs, layout).state_bytes  # logical, beside it
        assert b["breakdown"]["weights"] == params + buffers  # weights include BatchNorm buffers
        assert b["breakdown"]["grads"] == params
    # Adam's logical state, independently: two fp32 moments per element + a 4-B `step` per tensor
    n = sum(s.numel for s in specs)
    for alloc in ("glibc", "cuda"):
        assert resnet18_doc["optimizers"]["adam"]["by_allocator"][alloc]["state_bytes"] == 8 * n + 4 * len(specs)


def test_smallest_device_is_the_least_usable_that_fits_and_runs_pytorch(resnet18_doc):
    for oid, o in resnet18_doc["optimizers"].items():
        fitting = [r["device"] for r in resnet18_doc["devices"] if r["optimizers"][oid]["fits"]]
        runs = [d for d in fitting if d["pytorch_training"] != "no"]
        assert o["smallest_device"] == (runs[0] if runs else None)
        assert o["smallest_device_memory_only"] == (fitting[0] if fitting else None)
    # resnet18 + smmf (~90 MiB without activations) fits the Zero 2 W; the MCUs hold nothing
    assert not any(r["optimizers"]["smmf"]["fits"] for r in resnet18_doc["devices"]
                   if r["device"]["id"] in ("esp32-s3", "coral-dev-micro"))


def test_one_device_table_bars_verdict_and_svg(capsys, tmp_path):
    svg = tmp_path / "bars.svg"
    code, out, err = run(capsys, "size", "resnet18", "-d", "RPI-ZERO", "-o", "adam,smmf",
                         "--svg", str(svg))
    assert code == 0, err
    flat = " ".join(out.split())  # rich wraps at the terminal width
    assert "rpi-zero" in flat and "█ weights" in flat and "┃ usable 383 MiB" in flat
    assert "→ " in flat and "PyTorch does not run on rpi-zero" in flat and "ARMv6" in flat
    root = ET.parse(svg).getroot()
    assert "resnet18" in root.find("{http://www.w3.org/2000/svg}title").text


def test_ad_hoc_and_user_devices(capsys, tmp_path):
    f = tmp_path / "devs.toml"
    f.write_text('[lab-box]\ntotal_bytes = "1GiB"\nusable_bytes = "100MiB"\n')
    code, out, err = run(capsys, "size", "resnet18", "-o", "smmf", "-d", "lab-box", "-d", "64MiB",
                         "--devices-file", str(f), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert [r["device"]["id"] for r in doc["devices"]] == ["64MiB", "lab-box"]
    assert [r["device"]["usable_bytes"] for r in doc["devices"]] == [64 * 2**20, 100 * 2**20]


@pytest.mark.parametrize("argv,named", [
    (["--batch-size", "0"], "--batch-size 0"),
    (["--batch-size", "-4"], "--batch-size -4"),
    (["-d", "rpi-zer"], "rpi-zero"),
    (["-d", "12XB"], "'12XB'"),
    (["-d", "0GiB"], "'0GiB'"),
    (["--svg", "x.svg"], "--svg 'x.svg'"),
    (["--seq-len", "0"], "--seq-len 0"),
    (["--allocator", "jemalloc"], "'jemalloc'"),
    (["-d", "t4", "--allocator", "glibc-mmap"], "does not apply to t4"),
])
def test_bad_input_exits_2_naming_the_value(capsys, argv, named):
    code, out, err = run(capsys, "size", "resnet18", *argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and named in err and err.count("\n") == 1


def test_malformed_devices_file_exits_2(capsys, tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[box]\ntotal_bytes = 'huge'\n")
    code, _, err = run(capsys, "size", "resnet18", "--devices-file", str(f))
    assert code == 2 and str(f) in err and "'huge'" in err
    code, _, err = run(capsys, "devices", "--devices-file", str(f))
    assert code == 2 and str(f) in err


def test_devices_command(capsys, tmp_path):
    code, out, _ = run(capsys, "devices", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["schema_version"] == 2
    assert [d["id"] for d in doc["devices"]] == list(catalog())
    rpi = doc["devices"][0]
    assert rpi["memory_bytes"] == 536_870_912 and rpi["usable_bytes"] == 402_051_072
    assert rpi["pytorch_training"] == "no" and rpi["sources"]
    f = tmp_path / "d.toml"
    f.write_text('[my-board]\ntotal_bytes = "256MiB"\n')
    code, out, _ = run(capsys, "devices", "--devices-file", str(f))
    assert code == 0 and "rpi-zero" in out and "my-board" in out and "256 MiB" in out


def test_size_model_library_call_matches_devices():
    spec_devices = [get_device("rpi-zero"), get_device("t4")]
    from smmf_plan.model import ModelSpec
    from smmf_plan.shapes import ParamSpec

    spec = ModelSpec("toy", "test", [ParamSpec("w", (1000, 1000), "float32", True),
                                     ParamSpec("b", (1000,), "float32", True)])
    result = size_cli.size_model(spec, parse_many("adam,smmf"), spec_devices, batch_size=2)
    assert set(result["steps"]) == {"glibc", "cuda"}
    assert result["order"][0] == "smmf"
    assert result["grid"]["t4"]["adam"].total_bytes == result["steps"]["cuda"]["adam"].total_bytes


def test_an_allocator_applies_to_the_devices_it_describes():
    """--allocator glibc-mmap judges the CPU devices under that model; a GPU keeps its own."""
    from smmf_plan.model import ModelSpec
    from smmf_plan.shapes import ParamSpec

    spec = ModelSpec("toy", "test", [ParamSpec("w", (1000, 1000), "float32", True)])
    devices = [get_device("rpi-zero"), get_device("t4")]
    result = size_cli.size_model(spec, parse_many("adam"), devices, batch_size=1,
                                 allocator="glibc-mmap")
    assert result["allocators"] == {"rpi-zero": "glibc-mmap", "t4": "cuda"}
    assert set(result["steps"]) == {"glibc-mmap", "cuda"}
    assert (result["grid"]["rpi-zero"]["adam"].total_bytes
            == result["steps"]["glibc-mmap"]["adam"].total_bytes)
