"""The one byte formatter (every table, message and report uses it) and the size parser."""

from __future__ import annotations

import pytest

from smmf_plan.errors import PlanError
from smmf_plan.units import config_size, format_bytes, parse_size

MiB, GiB = 2**20, 2**30


@pytest.mark.parametrize("args, kwargs, text", [
    ((None,), {}, "–"),
    ((612,), {}, "612 B"),
    ((1536,), {}, "1.5 KiB"),
    ((int(97.5 * MiB),), {}, "97.5 MiB"),
    ((int(1.21 * GiB) + 1,), {}, "1.21 GiB"),
    ((150 * GiB,), {}, "150.0 GiB"),
    ((383 * MiB, 0), {}, "383 MiB"),
    ((-3 * MiB,), {}, "-3.0 MiB"),
    # signed: changes against a baseline
    ((512,), {"signed": True}, "+512 B"),
    ((0,), {"signed": True}, "+0 B"),
    ((-int(1.5 * MiB),), {"signed": True}, "-1.5 MiB"),
    # one fixed unit, thousands separated; without the unit for a column headed "MiB"
    ((1536 * MiB,), {"unit": "MiB"}, "1,536.0 MiB"),
    ((350 * MiB, 0), {"unit": "MiB"}, "350 MiB"),
    ((int(2.25 * MiB),), {"unit": "MiB", "suffix": False}, "2.2"),
    ((12_900,), {"unit": "MiB", "suffix": False, "sig_below_unit": 3}, "0.0123"),
    ((0,), {"unit": "MiB", "suffix": False, "sig_below_unit": 3}, "0.0"),
    ((-12_900,), {"unit": "MiB", "suffix": False, "sig_below_unit": 3}, "-0.0123"),
    # compact, for dense tables
    ((383 * MiB,), {"compact": True}, "383M"),
    ((int(10.5 * GiB),), {"compact": True}, "10G"),
    ((int(9.5 * GiB),), {"compact": True}, "9.5G"),
    ((512,), {"compact": True}, "512B"),
    ((-18 * MiB,), {"compact": True}, "−18M"),
])
def test_format_bytes(args, kwargs, text):
    assert format_bytes(*args, **kwargs) == text


@pytest.mark.parametrize("text, n", [("512MiB", 512 * MiB), ("4GB", 4 * 10**9), ("1.5 GiB", 3 * 2**29),
                                     ("300000", 300_000), (" 2 kib ", 2048)])
def test_parse_size(text, n):
    assert parse_size(text) == n


def test_parse_size_names_what_is_wrong():
    with pytest.raises(PlanError, match="--budget '12 parsecs' is not a size"):
        parse_size("12 parsecs", "--budget")


@pytest.mark.parametrize("value, n", [(4096, 4096), (4096.0, 4096), ("5 MiB", 5 * MiB), ("1.5GiB", 3 * 2**29)])
def test_config_size_reads_what_device_tables_and_check_budgets_hold(value, n):
    assert config_size(value, "budget") == n


@pytest.mark.parametrize("value, needle", [
    (0, "budget = 0 must be a positive size"), (-5, "budget = -5 must be a positive size"),
    ("0 MiB", "budget = '0 MiB' must be a positive size"), ("5 MeB", "budget = '5 MeB' is not a size"),
    (True, "budget = True is not a size"), (1.5, "budget = 1.5 is not a size"), ([1], "is not a size"),
])
def test_config_size_errors_name_the_key_and_value(value, needle):
    with pytest.raises(PlanError) as e:
        config_size(value, "budget")
    assert needle in str(e.value) and "\n" not in str(e.value)
