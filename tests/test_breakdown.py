"""The one definition of a training step's parts and the Breakdown value."""

from __future__ import annotations

import re

import pytest

from smmf_plan.breakdown import PARTS, Breakdown, StepMemory


def test_the_parts_in_order_each_distinct():
    assert [p.key for p in PARTS] == ["weights", "grads", "state_allocated", "activations",
                                      "temporaries", "runtime"]
    for attr in ("key", "heading", "label", "glyph", "colour"):
        values = [getattr(p, attr) for p in PARTS]
        assert len(set(values)) == len(values), attr
    # one terminal cell each, none of them a space: the bars read without colour
    assert all(len(p.glyph) == 1 and not p.glyph.isspace() for p in PARTS)
    assert all(re.fullmatch(r"[a-z_]+", p.key) and p.description for p in PARTS)


def test_total_is_the_exact_sum_and_missing_parts_are_zero():
    bd = Breakdown(weights=3, grads=5, state_allocated=7, activations=11, temporaries=13, runtime=17)
    assert bd.total_bytes == 56 == sum(bd.values())
    assert list(bd) == [p.key for p in PARTS] and dict(bd)["activations"] == 11
    only = Breakdown({"weights": 10**15})
    assert only.total_bytes == 10**15 and only["runtime"] == 0 and len(only) == len(PARTS)
    assert only.to_dict() == {"weights": 10**15, "grads": 0, "state_allocated": 0, "activations": 0,
                              "temporaries": 0, "runtime": 0}
    assert bd.replace(runtime=0).total_bytes == 39 and bd["runtime"] == 17  # values are immutable
    assert Breakdown(weights=1) == {"weights": 1, **{p.key: 0 for p in PARTS[1:]}}


@pytest.mark.parametrize("parts, message", [
    ({"state": 1}, "unknown step part"),          # the logical/allocated ambiguity is gone
    ({"weights": -1}, "must not be negative"),
    ({"weights": 1.5}, "whole number"),
    ({"weights": True}, "whole number"),
    ({"weights": "1"}, "whole number"),
])
def test_bad_parts_are_value_errors(parts, message):
    with pytest.raises(ValueError, match=message):
        Breakdown(parts)


def test_step_entry_carries_logical_state_beside_the_breakdown():
    bd = Breakdown(weights=100, grads=100, state_allocated=256, runtime=1000)
    step = StepMemory("adam", bd, lambda b: bd.total_bytes + b, state_bytes=200)
    assert step.total_bytes == 1456
    assert step.to_dict() == {"state_bytes": 200, "breakdown": bd.to_dict(), "total_bytes": 1456}
