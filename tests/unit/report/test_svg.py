"""The report's SVG charts: well-formed XML, one mark per datum, escaped text, legends."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from types import MappingProxyType

import pytest

from portsentinel.report import svg
from portsentinel.report.data import (
    PORT_BANDS,
    BanBar,
    SourceStats,
    build_report,
    heat_map,
    kind_series,
)
from portsentinel.report.scale import bucket_edges
from portsentinel.store.records import BanRecord, BanState, EventRow

T0 = 1_764_000_000.0
HOUR = 3600.0
EDGES = bucket_edges(T0, T0 + 24 * HOUR, 60)  # 48 half-hour buckets
DASH = svg.DASH
EVIL = "<script>alert(\"x\")</script> & 'quotes'"


def parse(chart: str) -> ET.Element:
    root = ET.fromstring(chart)
    assert root.tag == "svg"
    assert root.find("title") is not None  # the chart names itself
    assert "http" not in chart
    return root


def marks(root: ET.Element, cls: str) -> list[ET.Element]:
    return [e for e in root.iter() if e.get("class") == cls]


def ev(t: float, src: str = "198.18.0.2", port: int = 80, kind: str = "SYN") -> EventRow:
    return EventRow(t, src, "198.18.0.1", "tcp", port, kind, "alert", "test")


def source(address: str, probes: int, action: str = "alert") -> SourceStats:
    return SourceStats(address, probes, probes // 2, ("SYN",), T0, T0 + 1, action, None)


def bar(ban_id: int, target: str, created: float, ended: float | None, state: str) -> BanBar:
    return BanBar(ban_id, target, created, ended, T0 + HOUR, state, EVIL, 1, ("tcp/22",))


# --- every chart, with and without data ------------------------------------------------------


@pytest.mark.parametrize("with_data", [False, True])
def test_every_chart_is_well_formed_xml(with_data: bool) -> None:
    events = [ev(T0 + i * 600, port=i * 97, kind=k) for i, k in enumerate(["SYN", "UDP"] * 30)]
    bans = [
        BanRecord(
            1, "198.18.0.2", 32, T0 + 10, None, BanState.ACTIVE, EVIL, None,
            MappingProxyType({"ports": ["tcp/1"]}), 1, None, None, False,
        )
    ]  # fmt: skip
    report = build_report(events if with_data else [], bans if with_data else [], T0, T0 + 86400)
    charts = [
        svg.kinds_chart(report.kinds),
        svg.sources_chart(report.sources),
        svg.heat_chart(report.heat),
        svg.ban_timeline(report.timeline, report.kinds.edges, report.timeline_hidden),
    ]
    names = []
    for chart in charts:
        root = parse(chart)
        names.append(root.get("data-chart"))
        texts = " ".join(t.text or "" for t in root.iter("text"))
        assert ("No " in texts) is not with_data  # an empty chart says so
    assert names == ["kinds", "sources", "heat", "bans"]


# --- 1. kinds --------------------------------------------------------------------------------


def test_kinds_chart_stacks_one_segment_per_kind_and_bucket() -> None:
    events = [ev(T0 + 1), ev(T0 + 2), ev(T0 + 3, kind="UDP"), ev(T0 + 4000, kind="FIN")]
    root = parse(svg.kinds_chart(kind_series(events, EDGES)))
    bars = marks(root, "bar")
    assert len(bars) == 3  # SYN and UDP in bucket 0, FIN in bucket 2
    fills = [b.get("fill") for b in bars]
    assert fills == [svg.KIND_COLOURS["SYN"], svg.KIND_COLOURS["UDP"], svg.KIND_COLOURS["FIN"]]
    syn, udp, fin = bars
    assert float(fin.get("x", 0)) > float(syn.get("x", 0))
    # coordinates are written to 0.1 px
    assert float(syn.get("height", 0)) == pytest.approx(2 * float(udp.get("height", 0)), abs=0.2)
    assert float(udp.get("y", 0)) + float(udp.get("height", 0)) == pytest.approx(
        float(syn.get("y", 0)), abs=0.2
    )  # stacked: UDP sits on SYN
    tip = syn.findtext("title") or ""
    assert "2 SYN of 3" in tip
    assert "UTC" in tip
    legend = [t.text for t in root.iter("text")]
    assert {"SYN", "FIN", "UDP"} <= set(legend)
    assert "XMAS" not in legend  # only kinds that occur


def test_time_axis_labels_do_not_crowd() -> None:
    root = parse(svg.kinds_chart(kind_series([ev(T0)], EDGES)))
    ticks = [t for t in root.iter("text") if (t.text or "").count(":") == 1]
    assert 4 <= len(ticks) <= 10
    xs = sorted(float(t.get("x", 0)) for t in ticks)
    assert min(b - a for a, b in itertools.pairwise(xs)) > 80


# --- 2. sources ------------------------------------------------------------------------------


def test_sources_chart_draws_one_bar_per_source_longest_first() -> None:
    sources = [source("198.18.0.2", 90, "block"), source("fd00:5e::2", 30), source(EVIL, 3)]
    root = parse(svg.sources_chart(sources))
    bars = marks(root, "bar")
    widths = [float(b.get("width", 0)) for b in bars]
    assert widths == sorted(widths, reverse=True)
    assert widths[0] == pytest.approx(3 * widths[1])
    assert [b.get("fill") for b in bars[:2]] == [
        svg.ACTION_COLOURS["block"],
        svg.ACTION_COLOURS["alert"],
    ]
    labels = [t.text for t in root.iter("text")]
    assert "198.18.0.2" in labels
    assert any(label and label.startswith("<script>") for label in labels)  # escaped, intact
    assert "90 probes, 45 ports" in labels


def test_a_long_address_is_shortened_but_whole_in_the_tooltip() -> None:
    address = "2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff"
    root = parse(svg.sources_chart([source(address, 5)]))
    labels = [t.text or "" for t in root.iter("text")]
    assert any(label.endswith("…") and len(label) == svg.MAX_LABEL for label in labels)
    assert address in (marks(root, "bar")[0].findtext("title") or "")


# --- 3. heat map -----------------------------------------------------------------------------


def test_heat_map_has_one_cell_per_band_and_bucket() -> None:
    events = [ev(T0 + 5, port=22), ev(T0 + 6, port=23), ev(T0 + 7, "198.18.0.3", port=60000)]
    heat = heat_map(events, EDGES)
    root = parse(svg.heat_chart(heat))
    cells = marks(root, "cell")
    assert len(cells) == len(PORT_BANDS) * (len(EDGES) - 1)
    coloured = [c for c in cells if c.get("fill") != svg.EMPTY]
    assert len(coloured) == 2
    low_tip, high_tip = sorted(c.findtext("title") or "" for c in coloured)
    assert low_tip.startswith(f"ports 16{DASH}31, ")
    assert low_tip.endswith(": 2 probes from 1 source")
    assert high_tip.startswith(f"ports 32768{DASH}65535, ")
    assert high_tip.endswith(": 1 probe from 1 source")
    band_labels = [t.text for t in root.iter("text")]
    assert all(f"{low}{DASH}{high}" in band_labels for low, high in PORT_BANDS)


def test_heat_map_of_nothing_still_draws_its_grid() -> None:
    root = parse(svg.heat_chart(heat_map([], EDGES)))
    cells = marks(root, "cell")
    assert len(cells) == len(PORT_BANDS) * (len(EDGES) - 1)
    assert {c.get("fill") for c in cells} == {svg.EMPTY}


@pytest.mark.parametrize("peak", [1, 2, 3, 10, 37, 1000, 123_456])
def test_heat_levels_rise_with_the_count_and_the_legend_covers_every_count(peak: int) -> None:
    levels = [svg.heat_level(n, peak) for n in range(0, min(peak, 5000) + 1)]
    assert levels[0] == 0
    assert levels == sorted(levels)
    assert svg.heat_level(peak, peak) == len(svg.HEAT_STEPS)
    ranges = svg.heat_ranges(peak)
    assert ranges[0][1] == 1
    assert ranges[-1][2] == peak
    for (_, _, high), (_, low, _) in itertools.pairwise(ranges):
        assert low == high + 1
    for level, low, high in ranges:
        assert svg.heat_level(low, peak) == level
        assert svg.heat_level(high, peak) == level


# --- 4. ban timeline -------------------------------------------------------------------------


def test_ban_timeline_draws_each_ban_from_start_to_end_coloured_by_state() -> None:
    bars = [
        bar(1, "198.18.0.2", T0 + HOUR, T0 + 3 * HOUR, "expired"),
        bar(2, "198.18.0.3", T0 + 2 * HOUR, None, "active"),
        bar(3, "fd00:5e::/64", T0 - HOUR, T0 + HOUR, "lifted"),  # began before the window
    ]
    root = parse(svg.ban_timeline(bars, EDGES, hidden=4))
    rects = marks(root, "ban")
    assert [r.get("fill") for r in rects] == [
        svg.STATE_COLOURS["expired"],
        svg.STATE_COLOURS["active"],
        svg.STATE_COLOURS["lifted"],
    ]
    first, still, clipped = (float(r.get("width", 0)) for r in rects)
    assert first == pytest.approx(still / 10.5, rel=0.05)  # 2 h of the 21 h left
    assert clipped == pytest.approx(first / 2, rel=0.05)  # only its hour inside the window
    assert len(list(root.iter("polygon"))) == 1  # the arrow: still in force
    tip = rects[0].findtext("title") or ""
    assert EVIL in tip  # the reason, escaped in the markup, intact as text
    assert "(2 h)" in tip  # its real length, whatever width the bar got
    texts = [t.text for t in root.iter("text")]
    assert "4 older bans not shown" in texts
    assert "fd00:5e::/64" in texts


@pytest.mark.parametrize(
    ("seconds", "said"),
    [(45, "45 s"), (90, "1 min 30 s"), (5400, "1 h 30 min"),
     (7 * 86400 + 60, "7 d 1 min"), (0.2, "0 s")],
)  # fmt: skip
def test_a_bans_length_in_words(seconds: float, said: str) -> None:
    assert svg._length(seconds) == said


def test_chart_text_escapes_markup() -> None:
    chart = svg.sources_chart([source(EVIL, 3)])
    assert "<script>" not in chart
    assert "&lt;script&gt;" in chart
