"""The one definition of a training step's parts: the Breakdown value, and a part added in one
place reaching every renderer (step table, bars, SVG, Markdown, JSON)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from rich.console import Console

from smmf_plan import breakdown as B
from smmf_plan.breakdown import PARTS, Breakdown, Part, StepMemory

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20


def plain(renderable, width=120) -> str:
    console = Console(width=width, color_system=None, record=True, file=open("/dev/null", "w"))
    console.print(renderable)
    return console.export_text()


def test_the_parts_in_order_each_distinct():
    assert [p.key for p in PARTS] == ["weights", "master", "grads", "state_allocated",
                                      "activations", "temporaries", "comm", "allocator", "runtime",
                                      "host_copies", "host_state", "host_temporaries",
                                      "host_runtime"]
    # shown only where some row has bytes in them: the parts only distributed plans have, the
    # allocator's, and the host parts (offload); the other device parts always
    assert [p.key for p in PARTS if p.optional] == ["master", "comm", "allocator", "host_copies",
                                                    "host_state", "host_temporaries",
                                                    "host_runtime"]
    assert [p.key for p in PARTS if p.where == "host"] == ["host_copies", "host_state",
                                                           "host_temporaries", "host_runtime"]
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
    # an optional part (the allocator's) is left out of JSON where it has no bytes
    assert only.to_dict() == {"weights": 10**15, "grads": 0, "state_allocated": 0, "activations": 0,
                              "temporaries": 0, "runtime": 0}
    assert Breakdown(weights=1, allocator=2).to_dict()["allocator"] == 2
    assert (only.device_bytes, only.host_bytes) == (10**15, 0)
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
    assert step.to_dict() == {"state_bytes": 200, "breakdown": bd.to_dict(), "total_bytes": 1456,
                              "device_bytes": 1456, "host_bytes": 0}


def test_host_parts_split_the_total_by_memory():
    bd = Breakdown(weights=100, grads=100, activations=50, runtime=10, host_copies=256,
                   host_state=200, host_temporaries=8, host_runtime=64)
    assert (bd.device_bytes, bd.host_bytes, bd.total_bytes) == (260, 528, 788)
    d = StepMemory("adam", bd, lambda b: bd.device_bytes).to_dict()
    assert d["total_bytes"] == sum(d["breakdown"].values()) == d["device_bytes"] + d["host_bytes"]
    assert d["breakdown"]["host_state"] == 200


def test_an_unknown_part_is_null_and_the_sums_are_lower_bounds():
    bd = Breakdown(weights=100, grads=100, runtime=10, unknown=["activations"])
    assert not bd.complete and bd.total_bytes == 210 and bd["activations"] == 0
    d = StepMemory("adam", bd, lambda b: 210, complete=False).to_dict()
    assert d["breakdown"]["activations"] is None and d["complete"] is False
    assert d["total_bytes"] == sum(v for v in d["breakdown"].values() if v is not None)
    assert bd.replace(activations=5).complete
    with pytest.raises(ValueError, match="unknown"):
        Breakdown(activations=3, unknown=["activations"])


# ------------------------------------------------------------------ one entry reaches every renderer

OFFLOAD = Part("host_offload", "offload", "offloaded", "▞", "red", "#D55E00", "dots",
               "optimizer state kept on the host", optional=True)
BUCKETS = Part("buckets", "buckets", "comm. buckets", "▤", "white", "#F0E442", "",
               "gradient buckets of the all-reduce")


@pytest.fixture
def extra_parts(monkeypatch):
    """Add two parts the way a later issue would: one entry each in PARTS."""
    parts = (*PARTS, BUCKETS, OFFLOAD)
    monkeypatch.setattr(B, "PARTS", parts)
    monkeypatch.setattr(B, "KEYS", tuple(p.key for p in parts))
    monkeypatch.setattr(B, "BY_KEY", {p.key: p for p in parts})
    return parts


def _steps(with_offload: bool) -> dict[str, StepMemory]:
    a = Breakdown(weights=98 * MiB, grads=97 * MiB, state_allocated=195 * MiB, runtime=300 * MiB,
                  buckets=25 * MiB, **({"host_offload": 7 * MiB} if with_offload else {}))
    s = Breakdown(weights=98 * MiB, grads=97 * MiB, state_allocated=4 * MiB, runtime=300 * MiB,
                  buckets=25 * MiB)
    return {o: StepMemory(o, bd, lambda b, t=bd.total_bytes: t) for o, bd in (("adam", a), ("smmf", s))}


@pytest.mark.parametrize("with_offload", [True, False])
def test_a_new_part_is_one_entry_that_every_renderer_shows(extra_parts, with_offload):
    from smmf_plan.devices import get_device
    from smmf_plan.report.bars import BarRow, svg_text
    from smmf_plan.report.breakdown_md import breakdown_table, legend
    from smmf_plan.report.fit_table import device_report
    from smmf_plan.report.step_json import optimizer_json

    steps = _steps(with_offload)
    adam = steps["adam"]
    # JSON: the new key, and the total is still the sum
    doc = optimizer_json(adam, None)
    assert doc["breakdown"]["buckets"] == 25 * MiB
    assert ("host_offload" in doc["breakdown"]) is with_offload  # optional: only when present
    assert doc["total_bytes"] == sum(doc["breakdown"].values()) == (
        (98 + 97 + 195 + 300 + 25 + (7 if with_offload else 0)) * MiB)
    # terminal: a table column, bar glyphs and a legend entry
    text = plain(device_report(steps, get_device("1GiB"), 1))
    header = next(line for line in text.splitlines() if "weights" in line and "total" in line)
    assert "buckets" in header and ("offload" in header) is with_offload
    assert "▤ comm. buckets" in text and ("▞ offloaded" in text) is with_offload
    assert "▤" in next(line for line in text.splitlines() if line.startswith("smmf "))
    # SVG: a segment of exactly its bytes and a legend entry
    root = ET.fromstring(svg_text([BarRow(o, s.breakdown) for o, s in steps.items()], 1 << 30, "t"))
    seg = [r for r in root.iter("{http://www.w3.org/2000/svg}rect") if r.get("class") == "seg buckets"]
    assert [int(r.get("data-bytes")) for r in seg] == [25 * MiB, 25 * MiB]
    assert "comm. buckets" in "".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    # Markdown: a column and a legend line
    rows = {o: s.breakdown for o, s in steps.items()}
    md = breakdown_table(rows)
    assert md[0].split(" | ")[-3:] == (["buckets", "offload", "total |"] if with_offload
                                       else ["runtime", "buckets", "total |"])
    assert "- **buckets**: gradient buckets of the all-reduce." in legend(rows)


def test_the_readme_documents_every_part():
    """The README's JSON section names every breakdown key (and says what its state is)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## JSON output"):]
    for p in PARTS:
        assert f'"{p.key}"' in section, p.key
    assert "state_allocated" in section and "logical" in section
