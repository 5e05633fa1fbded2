"""The report's aggregation: pure functions over store records (no store, no clock)."""

from __future__ import annotations

import itertools
import math
from types import MappingProxyType
from typing import Any

import pytest

from portsentinel.report.data import (
    PORT_BANDS,
    ban_bar,
    ban_covering,
    build_report,
    choose_window,
    heat_map,
    kind_series,
    life_end,
    port_band,
    record_span,
    state_at,
    top_ports,
    top_sources,
)
from portsentinel.report.scale import bucket_edges
from portsentinel.store.records import BanRecord, BanState, EventRow

T0 = 1_764_000_000.0  # a whole multiple of 30 minutes (and of a day: 2025-11-24 16:00 UTC)
HOUR = 3600.0


def ev(
    t: float,
    src: str = "198.18.0.2",
    *,
    port: int = 80,
    kind: str = "SYN",
    action: str = "alert",
    proto: str = "tcp",
) -> EventRow:
    return EventRow(t, src, "198.18.0.1", proto, port, kind, action, "scan trigger reached")


def ban(
    ban_id: int,
    address: str = "198.18.0.2",
    *,
    created: float = T0,
    expires: float | None = T0 + HOUR,
    state: BanState = BanState.ACTIVE,
    lifted_at: float | None = None,
    prefix: int | None = None,
    evidence: dict[str, Any] | None = None,
) -> BanRecord:
    width = 32 if "." in address else 128
    return BanRecord(
        ban_id, address, width if prefix is None else prefix, created, expires, state,
        "SYN scan: scan trigger reached", "atcp", MappingProxyType(evidence or {}), 1,
        lifted_at, None if lifted_at is None else "unblock", False,
    )  # fmt: skip


# --- kinds over time -------------------------------------------------------------------------


def test_kind_series_counts_per_bucket_in_scan_kind_order() -> None:
    edges = bucket_edges(T0, T0 + 24 * HOUR, 60)  # 30-minute buckets
    events = [ev(T0 + 10, kind="UDP"), ev(T0 + 20), ev(T0 + 40), ev(T0 + 1900, kind="FIN")]
    series = kind_series(events, edges)
    assert series.kinds == ("SYN", "FIN", "UDP")  # ScanKind's order, not arrival order
    assert series.counts[0][:2] == (2, 0)
    assert series.counts[1][:2] == (0, 1)
    assert series.counts[2][:2] == (1, 0)
    assert series.totals()[:3] == (3, 1, 0)
    assert sum(series.totals()) == len(events)


def test_kind_series_keeps_an_unknown_kind_last() -> None:
    edges = bucket_edges(T0, T0 + 60, 60)
    series = kind_series([ev(T0, kind="ZZNEW"), ev(T0, kind="XMAS"), ev(T0, kind="AANEW")], edges)
    assert series.kinds == ("XMAS", "AANEW", "ZZNEW")


def test_kind_series_of_nothing_has_empty_totals_per_bucket() -> None:
    edges = bucket_edges(T0, T0 + HOUR, 60)
    series = kind_series([], edges)
    assert series.kinds == ()
    assert series.totals() == (0,) * (len(edges) - 1)


# --- sources ---------------------------------------------------------------------------------


def test_top_sources_rank_by_probes_then_ports_then_address() -> None:
    events = [
        *(ev(T0 + i, "198.18.0.9", port=1) for i in range(3)),  # 3 probes, 1 port
        *(ev(T0 + i, "198.18.0.3", port=i) for i in range(3)),  # 3 probes, 3 ports
        *(ev(T0 + i, "198.18.0.4", port=i) for i in range(4)),
        ev(T0, "198.18.0.1"),
    ]
    ranked = top_sources(events, [], T0 + HOUR, 3)
    assert [s.address for s in ranked] == ["198.18.0.4", "198.18.0.3", "198.18.0.9"]
    assert [(s.probes, s.ports) for s in ranked] == [(4, 4), (3, 3), (3, 1)]


def test_a_source_counts_tcp_and_udp_ports_apart_and_keeps_its_strongest_action() -> None:
    events = [
        ev(T0 + 5, port=53, kind="UDP", proto="udp", action="alert"),
        ev(T0 + 1, port=53, action="block"),
        ev(T0 + 9, port=53, action="ignored"),
    ]
    (source,) = top_sources(events, [], T0 + HOUR, 10)
    assert source.ports == 2
    assert source.probes == 3
    assert source.kinds == ("SYN", "UDP")
    assert source.action == "block"
    assert (source.first, source.last) == (T0 + 1, T0 + 9)
    assert source.ban_state is None


def test_a_source_shows_its_newest_ban_host_or_prefix() -> None:
    host = "fd00:5e::2"
    bans = [
        ban(1, host, created=T0, expires=T0 + 60),  # ran out: reads expired at the end
        ban(2, "fd00:5e::", prefix=64, created=T0 + 100, expires=None),
        ban(3, "fd00:5f::", prefix=64, created=T0 + 200),  # another network
    ]
    (source,) = top_sources([ev(T0, host)], bans, T0 + HOUR, 10)
    assert source.ban_state == "active"
    assert ban_covering(host, bans[:1]) == bans[0]
    assert state_at(bans[0], T0 + HOUR) == "expired"
    assert ban_covering("198.18.0.2", bans) is None
    assert ban_covering("not an address", bans) is None


# --- heat map --------------------------------------------------------------------------------


def test_port_bands_double_and_cover_every_port_once() -> None:
    assert PORT_BANDS[0] == (0, 15)
    assert PORT_BANDS[-1] == (32768, 65535)
    for (_, high), (low, _) in itertools.pairwise(PORT_BANDS):
        assert low == high + 1
    for index, (low, high) in enumerate(PORT_BANDS):
        assert port_band(low) == index
        assert port_band(high) == index
    assert port_band(70000) == len(PORT_BANDS) - 1


def test_heat_map_counts_probes_and_distinct_sources_per_cell() -> None:
    edges = bucket_edges(T0, T0 + HOUR, 60)  # 1-minute buckets
    events = [
        ev(T0 + 1, "198.18.0.2", port=22),
        ev(T0 + 2, "198.18.0.2", port=23),
        ev(T0 + 3, "198.18.0.3", port=25),
        ev(T0 + 61, "198.18.0.2", port=443),
    ]
    heat = heat_map(events, edges)
    low = port_band(22)  # 16-31
    assert heat.probes[low][0] == 3
    assert heat.sources[low][0] == 2
    assert heat.probes[port_band(443)][1] == 1
    assert heat.peak == 3
    assert sum(map(sum, heat.probes)) == len(events)
    assert all(len(row) == len(edges) - 1 for row in heat.probes)
    # Rows up to the highest band probed (443: 256-511), not the empty ephemeral bands.
    assert heat.bands == PORT_BANDS[: port_band(443) + 1]
    assert len(heat.probes) == len(heat.sources) == len(heat.bands)
    assert heat_map([], edges).bands == PORT_BANDS


# --- bans ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "at", "state", "ended"),
    [
        (ban(1), T0 + 10, "active", None),
        (ban(1), T0 + HOUR, "expired", T0 + HOUR),
        (ban(1, expires=None), T0 + 1e6, "active", None),
        (ban(1, state=BanState.PENDING), T0, "pending", None),
        (ban(1, state=BanState.LIFTED, lifted_at=T0 + 5), T0 + 10, "lifted", T0 + 5),
        (ban(1, state=BanState.EXPIRED, lifted_at=T0 + HOUR), T0 + 2 * HOUR, "expired", T0 + HOUR),
        (ban(1, state=BanState.FAILED, lifted_at=T0 + 1), T0 + 10, "failed", T0 + 1),
    ],
)
def test_a_bans_state_and_end_as_of_a_moment(
    record: BanRecord, at: float, state: str, ended: float | None
) -> None:
    assert state_at(record, at) == state
    assert life_end(record, at) == ended


def test_ban_bar_keeps_the_evidence_ports_as_text() -> None:
    bar = ban_bar(ban(7, evidence={"ports": ["tcp/22", 80]}), T0)
    assert bar.ports == ("tcp/22", "80")
    assert bar.target == "198.18.0.2"
    assert ban_bar(ban(8, evidence={"ports": "junk"}), T0).ports == ()
    assert ban_bar(ban(9, "fd00:5e::", prefix=64), T0).target == "fd00:5e::/64"


# --- the whole report ------------------------------------------------------------------------


def test_build_report_sums_up_the_window_only() -> None:
    start, end = T0, T0 + 24 * HOUR
    events = [
        ev(start - 1, "198.18.0.99"),  # before: skipped
        ev(start + 10, "198.18.0.2", port=1),
        ev(start + 20, "198.18.0.2", port=2),
        ev(start + 30, "fd00:5e::2", port=2),
        ev(end, "198.18.0.98"),  # the end is excluded
    ]
    bans = [
        ban(1, created=start - 2 * HOUR, expires=start - HOUR),  # over before: left out
        ban(2, created=start - 10, expires=start + 50),  # began before, ended inside
        ban(3, "198.18.0.3", created=start + 100, expires=None),  # in force at the end
        ban(4, "198.18.0.4", created=end + 1),  # after: left out
        ban(5, "198.18.0.5", created=start + 5, state=BanState.LIFTED, lifted_at=start + 9),
    ]
    report = build_report(events, bans, start, end, offline=True)
    s = report.summary
    assert (s.probes, s.sources, s.ports) == (3, 2, 2)
    assert (s.bans, s.new_bans, s.in_force, s.offline) == (3, 2, 1, True)
    assert [bar.ban_id for bar in report.timeline] == [2, 5, 3]
    assert [bar.ban_id for bar in report.in_force] == [3]
    assert report.timeline_hidden == 0
    assert report.kinds.edges[0] <= start
    assert report.kinds.edges[-1] >= end
    assert report.heat.edges == report.kinds.edges
    assert [src.address for src in report.sources] == ["198.18.0.2", "fd00:5e::2"]


def test_build_report_bounds_what_the_page_gets() -> None:
    events = [ev(T0 + i, f"198.18.{i // 250}.{i % 250}") for i in range(1000)]
    bans = [ban(i, f"198.18.1.{i}", created=T0 + i, expires=None) for i in range(1, 101)]
    report = build_report(events, bans, T0, T0 + 7 * 86400, top=5, ban_rows=10, max_buckets=30)
    assert len(report.sources) == 5
    assert [bar.ban_id for bar in report.timeline] == list(range(91, 101))  # the newest
    assert report.timeline_hidden == 90
    assert len(report.kinds.edges) - 1 <= 30
    assert len(report.in_force) == 100  # the table caps itself; the data keeps all


# --- the window ------------------------------------------------------------------------------


def test_record_span_covers_events_ban_starts_and_ends() -> None:
    assert record_span([], []) is None
    bans = [ban(1, created=T0 - 5, state=BanState.LIFTED, lifted_at=T0 + 50)]
    assert record_span([ev(T0), ev(T0 + 9)], bans) == (T0 - 5, T0 + 50)


def test_a_live_window_ends_now() -> None:
    now = T0 + 5 * HOUR
    assert choose_window((T0, T0 + 1), 3600.0, now, follow_records=False) == (now - HOUR, now)
    assert choose_window((T0, T0 + 1), None, now, follow_records=False) == (T0, now)
    assert choose_window(None, None, now, follow_records=False) == (now - HOUR, now)


def test_an_offline_window_follows_the_capture_times() -> None:
    now = T0 + 400 * 86400  # the capture is more than a year old
    start, end = choose_window((T0, T0 + 7), 86400.0, now, follow_records=True)
    assert start == T0
    assert T0 + 7 < end < T0 + 7.001
    start, end = choose_window((T0, T0 + 3 * 86400), 86400.0, now, follow_records=True)
    assert start == pytest.approx(T0 + 2 * 86400)
    start, end = choose_window((T0, T0), None, now, follow_records=True)
    assert start == T0
    assert end == math.nextafter(T0, math.inf)
    assert choose_window(None, 60.0, now, follow_records=True) == (now - 60, now)


def test_the_most_probed_ports_rank_by_probes_then_sources() -> None:
    events = [
        ev(T0, "198.18.0.2", port=22, action="block"),
        ev(T0 + 1, "198.18.0.2", port=22, action="ignored"),
        ev(T0 + 2, "198.18.0.3", port=22, action="ignored"),
        ev(T0 + 3, "198.18.0.2", port=80, action="ignored"),
        ev(T0 + 4, "198.18.0.3", port=80, action="alert"),
        ev(T0 + 5, "198.18.0.4", port=53, proto="udp", kind="UDP", action="ignored"),
        ev(T0 + 6, "198.18.0.4", port=53, proto="udp", kind="UDP", action="ignored"),
        ev(T0 + 7, "198.18.0.5", port=7, action="ignored"),
    ]
    ranked = top_ports(events, 3)
    assert [(p.proto, p.port, p.probes, p.sources, p.responses) for p in ranked] == [
        ("tcp", 22, 3, 2, 1),
        ("tcp", 80, 2, 2, 1),  # as many probes as udp/53, from more sources
        ("udp", 53, 2, 1, 0),
    ]
    assert top_ports([], 3) == []


def test_the_summary_tells_blocks_from_alerts() -> None:
    events = [
        ev(T0 + 1, "198.18.0.2", action="block"),
        ev(T0 + 2, "198.18.0.2", action="ignored"),
        ev(T0 + 3, "198.18.0.3", action="alert"),
        ev(T0 + 4, "198.18.0.4", action="alert"),
        ev(T0 + 5, "198.18.0.5", action="command"),
    ]
    summary = build_report(events, [], T0, T0 + HOUR).summary
    assert (summary.probes, summary.blocks, summary.alerts) == (5, 2, 2)
