"""Stacked bars: cell arithmetic, the terminal rendering (monochrome) and the SVG file."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from rich.console import Console

from smmf_plan.breakdown import PARTS as ALL_PARTS
from smmf_plan.breakdown import Breakdown
from smmf_plan.errors import PlanError
from smmf_plan.report.bars import MARKER, BarRow, cells, render_bars, svg_text, write_svg

MiB = 2**20
SVG = "{http://www.w3.org/2000/svg}"
#: the bars are the device's: host parts (offload) are not on them
PARTS = tuple(p for p in ALL_PARTS if p.where == "device")

ROWS = [
    BarRow("smmf", {"weights": 98 * MiB, "grads": 98 * MiB, "state_allocated": 4 * MiB,
                    "activations": 60 * MiB, "temporaries": 5 * MiB, "runtime": 20 * MiB}),
    BarRow("adam", {"weights": 98 * MiB, "grads": 98 * MiB, "state_allocated": 195 * MiB,
                    "activations": 60 * MiB, "runtime": 20 * MiB}),
]


def plain(renderable, width=100) -> str:
    console = Console(width=width, color_system=None, record=True, file=open("/dev/null", "w"))
    console.print(renderable)
    return console.export_text()


def test_cells_add_up_to_the_rounded_total():
    row = ROWS[0]
    got = cells(row, scale=1000 * MiB, width=50)
    assert [p.key for p, _ in got] == [p.key for p in PARTS if not p.optional]
    assert sum(n for _, n in got) == round(row.total * 50 / (1000 * MiB))
    assert dict((p.key, n) for p, n in got)["weights"] == round(98 * 50 / 1000)


def test_terminal_bars_read_in_monochrome():
    text = plain(render_bars(ROWS, 383 * MiB, width=40))
    lines = text.splitlines()
    smmf, adam, legend = lines[0], lines[1], lines[2]
    # scale = adam's total (471 MiB); marker at round(383/471*40) = 33 cells in
    assert smmf.startswith("smmf ") and adam.startswith("adam ")
    bar_start = adam.index("█")
    assert adam.index(MARKER) - bar_start == round(383 * 40 / 471)
    assert smmf.index(MARKER) - bar_start == round(383 * 40 / 471)
    assert adam.count("▒") == round((98 + 98 + 195) * 40 / 471) - round(196 * 40 / 471)
    assert "✓ fits" in smmf and "✗ 88 MiB over" in adam
    assert legend.split()[:12] == ["█", "weights", "▓", "grads", "▒", "state", "░", "activations",
                                   "▚", "temporaries", "·", "runtime"]
    assert "usable 383 MiB" in text


def test_without_a_device_there_is_no_marker():
    text = plain(render_bars(ROWS, None, width=40))
    assert MARKER not in text and "fits" not in text


def test_bar_width_follows_the_console():
    narrow, wide = plain(render_bars(ROWS, 383 * MiB), 70), plain(render_bars(ROWS, 383 * MiB), 140)
    assert max(map(len, narrow.splitlines()[:2])) <= 70
    assert wide.splitlines()[1].count("▒") > narrow.splitlines()[1].count("▒")


def test_a_bar_is_a_breakdown():
    bd = Breakdown(weights=10, grads=20, state_allocated=30, activations=40, temporaries=50, runtime=60)
    row = BarRow("x", bd)
    assert row.breakdown is bd and [row.get(p.key) for p in PARTS if not p.optional] == [
        10, 20, 30, 40, 50, 60]
    assert row.total == 210
    assert BarRow("y", {"weights": 7}).total == 7
    assert BarRow("o", {"weights": 7, "host_state": 100}).total == 7  # the device's bytes
    with pytest.raises(ValueError, match="unknown step part"):
        BarRow("z", {"weight": 1})
    with pytest.raises(ValueError, match="negative"):
        BarRow("z", {"weights": -1})


def test_svg_geometry_is_proportional():
    root = ET.fromstring(svg_text(ROWS, 383 * MiB, "resnet50 on rpi-zero", bar_width=471))
    assert root.tag == SVG + "svg"
    segs = [r for r in root.iter(SVG + "rect") if "seg" in r.get("class", "")]
    # adam: 5 non-zero parts, smmf: 6; scale is 471 MiB over 471 px, so 1 px per MiB
    assert len(segs) == 11
    for r in segs:
        assert float(r.get("width")) == pytest.approx(int(r.get("data-bytes")) / MiB, abs=0.01)
    line = root.find(f"{SVG}line[@class='usable']")
    assert float(line.get("x1")) - 120 == pytest.approx(383, abs=0.01)
    texts = " ".join(t.text or "" for t in root.iter(SVG + "text"))
    assert "usable 383 MiB" in texts and "✗ 88 MiB over" in texts
    # every part these rows have in the legend; the optional ones (distributed, allocator) absent
    assert all((p.label in texts) is not p.optional for p in PARTS)


def test_svg_escapes_labels():
    root = ET.fromstring(svg_text([BarRow("<a&b>", {"weights": 1})], 10, 'x "<&>"'))
    assert root.find(SVG + "title").text == 'x "<&>"'


def test_write_svg_is_atomic_and_complete(tmp_path):
    target = tmp_path / "bars.svg"
    target.write_text("old")
    assert write_svg(target, ROWS, 383 * MiB, "t") == target
    ET.parse(target)
    assert [p.name for p in tmp_path.iterdir()] == ["bars.svg"]  # no temporary left behind


def test_write_svg_bad_paths(tmp_path):
    with pytest.raises(PlanError, match="does not exist"):
        write_svg(tmp_path / "no" / "x.svg", ROWS, 1, "t")
    with pytest.raises(PlanError, match="is a folder"):
        write_svg(tmp_path, ROWS, 1, "t")
