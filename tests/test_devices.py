"""Device catalog, ad-hoc budgets, user devices files and pyproject tables."""

from __future__ import annotations

import re

import pytest

from smmf_plan.devices import (
    ALLOCATORS,
    MEMORY_KINDS,
    PYTORCH_LEVELS,
    catalog,
    find_pyproject,
    get_device,
    list_devices,
    load_devices_file,
)
from smmf_plan.errors import PlanError

ISSUE_IDS = (
    "rpi-zero rpi-zero-2w rpi-3b rpi-4-1gb rpi-4-2gb rpi-4-4gb rpi-4-8gb rpi-5-2gb rpi-5-4gb "
    "rpi-5-8gb rpi-5-16gb jetson-nano jetson-orin-nano coral-dev-micro coral-dev-board-1gb "
    "coral-dev-board-4gb esp32-s3 apple-m1-8gb apple-m1-16gb apple-m2-8gb apple-m2-16gb t4 l4 a10g "
    "rtx-3090 rtx-4090 a100-40gb a100-80gb h100-80gb h200"
).split()


def test_catalog_holds_exactly_the_issue_ids_in_order():
    assert list(catalog()) == ISSUE_IDS


@pytest.mark.parametrize("device", list(catalog().values()), ids=lambda d: d.id)
def test_every_entry_is_complete(device):
    assert 0 < device.usable_bytes <= device.total_bytes
    assert device.memory_kind in MEMORY_KINDS
    assert device.allocator in ALLOCATORS
    assert device.pytorch_training in PYTORCH_LEVELS[:4]
    assert device.pytorch_reason and device.pytorch_note and device.usable_basis
    assert re.match(r"^\[(sourced|estimate|unsourced)", device.usable_basis)
    assert device.sources and any(s.startswith("https://") for s in device.sources)
    assert device.sourcing in ("full", "partial")
    assert device.origin == "catalog"


def test_catalog_figures_are_the_sourced_ones():
    rpi = catalog()["rpi-zero"]
    assert (rpi.total_bytes, rpi.usable_bytes) == (536_870_912, 402_051_072)
    assert catalog()["h200"].total_bytes == 151_397_597_184
    assert catalog()["h100-80gb"].usable_bytes == 84_621_593_149
    assert catalog()["esp32-s3"].usable_bytes == 8_716_288


def test_allocator_and_memory_kind_by_family():
    c = catalog()
    assert {c[i].allocator for i in ("t4", "h200", "jetson-nano", "jetson-orin-nano")} == {"cuda"}
    assert {c[i].allocator for i in ("rpi-zero", "apple-m1-8gb", "esp32-s3", "coral-dev-board-1gb")} == {"cpu"}
    assert c["jetson-orin-nano"].memory_kind == "unified"
    assert c["apple-m2-16gb"].memory_kind == "unified"
    assert c["rtx-4090"].memory_kind == "GPU"
    assert c["rpi-5-8gb"].memory_kind == "host RAM"
    assert c["coral-dev-micro"].memory_kind == "MCU SRAM+PSRAM"


def test_pytorch_does_not_run_on_armv6_and_microcontrollers():
    c = catalog()
    assert c["rpi-zero"].pytorch_training == "no" and "ARMv6" in c["rpi-zero"].pytorch_reason
    for i in ("esp32-s3", "coral-dev-micro", "coral-dev-board-1gb"):
        assert not c[i].runs_pytorch
    assert c["rpi-zero-2w"].pytorch_training == "marginal"
    assert c["h100-80gb"].runs_pytorch and c["rpi-4-4gb"].runs_pytorch


@pytest.mark.parametrize("text", ["rpi-zero", "RPI-Zero", "  rpi-zero "])
def test_ids_ignore_case_and_space(text):
    assert get_device(text) is catalog()["rpi-zero"]


@pytest.mark.parametrize("text,expected", [("512MiB", 512 * 2**20), ("4GB", 4 * 10**9),
                                           ("1.5 GiB", 3 * 2**29), ("300kb", 300_000)])
def test_ad_hoc_sizes(text, expected):
    d = get_device(text)
    assert d.total_bytes == d.usable_bytes == expected
    assert d.allocator == "cpu" and d.origin == "ad-hoc"
    assert "all of it is assumed usable" in d.usable_basis
    assert d.reference()["memory_bytes"] == expected


def test_unknown_device_suggests_close_ids():
    with pytest.raises(PlanError) as e:
        get_device("rpi-zer")
    assert "'rpi-zer'" in str(e.value) and "rpi-zero" in str(e.value)
    with pytest.raises(PlanError) as e:
        get_device("h100")
    assert "h100-80gb" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text", ["4XB", "0MiB", "0", "12..5GB", ""])
def test_bad_sizes_are_named(text):
    with pytest.raises(PlanError) as e:
        get_device(text)
    assert (repr(text) if text else "--device is empty") in str(e.value)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_devices_file_adds_and_overrides(tmp_path):
    f = write(tmp_path / "my.toml", """
[Lab-Box]
name = "Lab box"
total_bytes = "2GiB"
usable_bytes = 1500000000
pytorch_training = "yes"

[rpi-zero]
total_bytes = "512MiB"
usable_bytes = "300MiB"
""")
    d = get_device("lab-box", [f])
    assert (d.id, d.name, d.total_bytes, d.usable_bytes) == ("lab-box", "Lab box", 2**31, 1_500_000_000)
    assert d.allocator == "cpu" and d.origin == str(f)
    assert get_device("rpi-zero", [f]).usable_bytes == 300 * 2**20
    ids = [x.id for x in list_devices([f])]
    assert ids.count("rpi-zero") == 1 and ids[-1] == "lab-box" and len(ids) == 31
    assert get_device("rpi-zero").usable_bytes == 402_051_072  # the catalog is untouched


def test_usable_defaults_to_total(tmp_path):
    f = write(tmp_path / "d.toml", '[box]\ntotal_bytes = 1073741824\n')
    assert load_devices_file(f)["box"].usable_bytes == 2**30


@pytest.mark.parametrize("body,named", [
    ("[box\ntotal_bytes = 1", "malformed TOML"),
    ("[box]\ntotal_byte = 1024", "'total_byte'"),
    ("[box]\nname = 'x'", "needs total_bytes"),
    ("[box]\ntotal_bytes = 'lots'", "'lots'"),
    ("[box]\ntotal_bytes = -5", "-5"),
    ("[box]\ntotal_bytes = 0", "positive"),
    ("[box]\ntotal_bytes = 100\nusable_bytes = 200", "exceeds total_bytes"),
    ("[box]\ntotal_bytes = 100\nallocator = 'tpu'", "'tpu'"),
    ("[box]\ntotal_bytes = 100\nmemory_kind = 'disk'", "'disk'"),
    ("[box]\ntotal_bytes = 100\npytorch_training = 'maybe'", "'maybe'"),
    ("[box]\ntotal_bytes = 100\nsources = [1]", "sources"),
    ("box = 3", "must be a table"),
    ('["bad id!"]\ntotal_bytes = 100', "'bad id!'"),
])
def test_malformed_files_name_file_and_key(tmp_path, body, named):
    f = write(tmp_path / "bad.toml", body)
    with pytest.raises(PlanError) as e:
        get_device("box", [f])
    msg = str(e.value)
    assert str(f) in msg and named in msg and "\n" not in msg


def test_missing_devices_file(tmp_path):
    with pytest.raises(PlanError, match="nope.toml: no such file; check --devices-file"):
        load_devices_file(tmp_path / "nope.toml")
    with pytest.raises(PlanError, match="is a directory"):
        load_devices_file(tmp_path)


def test_pyproject_devices_found_from_a_subfolder(tmp_path):
    write(tmp_path / "pyproject.toml", """
[project]
name = "x"

[tool.smmf-plan.devices.lab-pi]
total_bytes = "1GiB"
usable_bytes = "700MiB"
""")
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    assert find_pyproject(sub) == tmp_path / "pyproject.toml"
    d = get_device("LAB-PI", search_from=sub)
    assert d.usable_bytes == 700 * 2**20 and "tool.smmf-plan.devices" in d.origin
    with pytest.raises(PlanError, match="unknown device"):
        get_device("lab-pi", search_from=sub, use_pyproject=False)


def test_nearest_pyproject_wins(tmp_path):
    write(tmp_path / "pyproject.toml", "[tool.smmf-plan.devices.outer]\ntotal_bytes = 100\n")
    inner = tmp_path / "inner"
    inner.mkdir()
    write(inner / "pyproject.toml", "[project]\nname = 'inner'\n")
    assert len(list_devices(search_from=inner)) == 30
    assert get_device("outer", search_from=tmp_path).total_bytes == 100


def test_malformed_pyproject_section_is_named(tmp_path):
    write(tmp_path / "pyproject.toml", "[tool.smmf-plan.devices.x]\ntotal_bytes = 'big'\n")
    with pytest.raises(PlanError) as e:
        list_devices(search_from=tmp_path)
    assert "pyproject.toml" in str(e.value) and "'big'" in str(e.value)


def test_devices_file_syntax_error_names_its_line(tmp_path):
    """Device files and check configurations share one TOML reader: file:line:col, one line."""
    f = write(tmp_path / "d.toml", "[box]\ntotal_bytes = \n")
    with pytest.raises(PlanError) as e:
        load_devices_file(f)
    assert str(e.value).startswith(f"{f}:2:") and "malformed TOML" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("allocator,kind", [("cuda", "GPU"), ("cpu", "host RAM")])
def test_memory_kind_follows_the_allocator(tmp_path, allocator, kind):
    """A user's CUDA device is GPU memory, not "host RAM" (shown in tables and JSON)."""
    f = write(tmp_path / "d.toml", f'[box]\ntotal_bytes = "24GiB"\nallocator = "{allocator}"\n')
    d = get_device("box", [f])
    assert d.memory_kind == kind and d.reference()["memory_kind"] == kind
    f = write(tmp_path / "j.toml", f'[box]\ntotal_bytes = "8GiB"\nallocator = "{allocator}"\n'
                                   'memory_kind = "unified"\n')
    assert get_device("box", [f]).memory_kind == "unified"  # stated explicitly: kept


@pytest.mark.parametrize("allocator,kind", [("cuda", "host RAM"), ("cpu", "GPU")])
def test_memory_kind_that_contradicts_the_allocator_is_named(tmp_path, allocator, kind):
    f = write(tmp_path / "d.toml", f'[box]\ntotal_bytes = 100\nallocator = "{allocator}"\n'
                                   f'memory_kind = "{kind}"\n')
    with pytest.raises(PlanError) as e:
        get_device("box", [f])
    assert f"memory_kind = {kind!r} does not go with allocator = {allocator!r}" in str(e.value)


def test_cuda_device_in_the_devices_table(tmp_path, capsys):
    from smmf_plan.cli import main

    f = write(tmp_path / "d.toml", '[gpu-box]\ntotal_bytes = "24GiB"\nallocator = "cuda"\n')
    with pytest.raises(SystemExit):
        main(["devices", "--devices-file", str(f), "--json"])
    import json

    row = next(d for d in json.loads(capsys.readouterr().out)["devices"] if d["id"] == "gpu-box")
    assert (row["memory_kind"], row["allocator"]) == ("GPU", "cuda")


@pytest.mark.parametrize("text", ["-5GB", "-512MiB", " -1", "-0.5GiB"])
def test_negative_budget_says_the_size_must_be_positive(text, capsys):
    """`-d -5GB` is a size with a sign, not an unknown device id (real CLI: exit 2, one line)."""
    from smmf_plan.cli import main

    with pytest.raises(PlanError) as e:
        get_device(text)
    assert "must be positive" in str(e.value) and "did you mean" not in str(e.value)
    with pytest.raises(SystemExit) as ex:
        main(["resnet18", "-o", "adam", "-d", text])
    out, err = capsys.readouterr()
    assert ex.value.code == 2 and out == ""
    assert err == f"error: --device {text!r}: a memory budget must be positive, e.g. 512MiB\n"
