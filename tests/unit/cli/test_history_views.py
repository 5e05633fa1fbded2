"""Reading the store into views: ``--since``, the reference time of a replay's store, the
ban that covers an address, and the rows of ``history``."""

from __future__ import annotations

from pathlib import Path

import pytest

from portsentinel.cli import history_views as views
from portsentinel.errors import ConfigError
from portsentinel.store.sqlite import Store
from unit.cli.stores import DAY, HOUR, T0, event, history_store, small_store


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", (30.0, True)),
        ("15m", (900.0, True)),
        ("7d", (7 * DAY, True)),
        ("2023-11-14T22:13:20+00:00", (T0, False)),
        ("2023-11-14T23:13:20+01:00", (T0, False)),
        ("2023-11-14T22:13:20", (T0, False)),  # no offset: UTC
        ("2023-11-14T22:13:20Z", (T0, False)),
        ("all", (0.0, False)),  # as report takes it
        (" ALL ", (0.0, False)),
    ],
)
def test_parse_since(text: str, expected: tuple[float, bool]) -> None:
    assert views.parse_since(text) == expected


def test_parse_target_takes_an_address_or_a_prefix() -> None:
    assert str(views.parse_target("192.0.2.7")) == "192.0.2.7/32"
    assert str(views.parse_target("2001:db8::/64")) == "2001:db8::/64"
    with pytest.raises(ConfigError, match="not an address"):
        views.parse_target("example.org")


def test_reading_a_directory_without_a_store_creates_nothing(tmp_path: Path) -> None:
    with views.reading(str(tmp_path / "none")) as store:
        assert store is None
    assert not (tmp_path / "none").exists()


def test_a_live_store_answers_as_of_now(tmp_path: Path) -> None:
    small_store(tmp_path)
    with views.reading(str(tmp_path)) as store:
        assert store is not None
        assert views.reference_time(store, T0 + DAY) == T0 + DAY


def test_why_view_of_the_small_store(tmp_path: Path) -> None:
    small_store(tmp_path)
    with views.reading(str(tmp_path)) as store:
        assert store is not None
        view = views.why_view(store, views.parse_target("203.0.113.7"), T0 + HOUR)
        assert views.why_view(store, views.parse_target("198.51.100.1"), T0) is None
    assert view is not None
    assert (view["src"], view["rule"]) == ("203.0.113.7", "scan_trigger")
    assert view["ban"]["evidence"]["ports"] == {"tcp": "21,23"}
    assert view["probes"]["decisions"] == {"ignored": 2, "block": 1}


def test_probes_view_of_no_events_is_none() -> None:
    assert views.probes_view([]) is None
    probes = views.probes_view([event(T0, 80), event(T0 + 1, 53, proto="udp")])
    assert probes is not None
    assert probes["ports"] == {"tcp": "80", "udp": "53"}
    assert probes["port_count"] == 2


def test_ports_by_proto_joins_ranges_per_protocol() -> None:
    pairs = [("udp", 53), ("tcp", 3), ("tcp", 1), ("tcp", 2), ("tcp", 80)]
    assert views.ports_by_proto(pairs) == {"tcp": "1-3,80", "udp": "53"}


def test_history_rows_are_oldest_first_with_alerts_between_bans(tmp_path: Path) -> None:
    history_store(tmp_path)
    with Store.open(str(tmp_path), offline=None) as store:
        rows = views.history_rows(store, T0 - 1)
    assert [(r["src"], r["action"], r["state"]) for r in rows] == [
        ("192.0.2.1", "block", "expired"),
        ("192.0.2.9", "alert", "logged"),
        ("192.0.2.2", "command", "lifted"),
        ("192.0.2.3", "block", "active"),
    ]


def test_a_live_ban_gets_its_ingress_count_and_an_ended_one_none() -> None:
    counts = {"192.0.2.7": (12, 720)}
    live = {"ban": {"address": "192.0.2.7", "state": "active", "offline": False}}
    views.add_dropped(live, counts)
    assert live["ban"]["dropped"] == {"packets": 12, "bytes": 720}
    ended = {"ban": {"address": "192.0.2.7", "state": "expired", "offline": False}}
    views.add_dropped(ended, counts)
    assert ended["ban"]["dropped"] is None
    other = {"ban": {"address": "192.0.2.8", "state": "active", "offline": False}}
    views.add_dropped(other, counts)
    assert other["ban"]["dropped"] is None
    nothing: dict[str, object] = {"ban": None}
    views.add_dropped(nothing, counts)
    assert nothing == {"ban": None}


def test_probes_view_tells_the_trw_score_and_the_scanner(tmp_path: Path) -> None:
    rows = [
        event(T0, 23, rule=None, score=4.0, contacts=1, scanner="nmap"),
        event(T0 + 1, 25, rule=None, score=16.0, contacts=2),
        event(T0 + 2, 110, action="block", reason="scan trigger reached", rule="trw",
              score=64.0 * 4, contacts=4, scanner="nmap"),
        event(T0 + 3, 111, reason="already blocked", rule="trw", score=1024.0, contacts=5),
    ]  # fmt: skip
    with Store.open(str(tmp_path)) as store:
        store.add_events(rows)
        view = views.why_view(store, views.parse_target("203.0.113.7"), T0 + HOUR)
    assert view is not None
    probes = view["probes"]
    assert probes["score"] == {"ratio": 1024.0, "contacts": 5, "decided_after": 4}
    assert probes["scanners"] == ["nmap"]
    assert view["rule"] == "trw"
    unscored = views.probes_view([event(T0, 80)])
    assert unscored is not None
    assert (unscored["score"], unscored["scanners"]) == (None, [])
