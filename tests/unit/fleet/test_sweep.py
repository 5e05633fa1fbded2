from __future__ import annotations

from portsentinel.fleet import sweep
from portsentinel.store.fleet import OutboxItem
from portsentinel.store.records import EventRow

T0 = 1_700_000_000.0


def _event(src: str, port: int, reason: str, t: float = T0) -> EventRow:
    return EventRow(t, src, "198.18.0.1", "tcp", port, "SYN", "ignored", reason)


def test_one_report_per_source_and_half_window() -> None:
    below = "below trigger"
    events = [_event("198.18.0.2", 22, below), _event("198.18.0.2", 80, below),
              _event("198.18.0.3", 22, "ignore list"), _event("198.18.0.4", 23, below)]  # fmt: skip
    items = sweep.reports(events, T0, host="a", window=60, banned=lambda a: a == "198.18.0.4")
    assert [i.address for i in items] == ["198.18.0.2"]
    (item,) = items
    assert item.ref == f"report:198.18.0.2:{int(T0) // 60}"
    alert = item.body["alert"]
    assert "decisions" not in alert
    assert {"key": "ports", "value": "tcp/22,tcp/80"} in alert["meta"]


def test_hosts_are_lapis_machines_not_what_a_report_claims() -> None:
    meta = [{"key": "host", "value": "a"}, {"key": "ports", "value": "tcp/22"}]
    report = {"scenario": "portsentinel/probe", "meta": meta, "machine_id": "a-ps"}
    liar = {**report, "meta": [{"key": "host", "value": "z"}], "machine_id": "a-ps"}
    other = {"scenario": "portsentinel/syn", "meta": meta, "machine_id": "c-ps"}
    anonymous = {**report, "machine_id": ""}
    decided = {**report, "machine_id": "d-ps", "decisions": [{"type": "ban"}]}
    b = {**report, "meta": [{"key": "ports", "value": "tcp/23,udp/53"}], "machine_id": "b-ps"}
    found = sweep.hosts_of([report, liar, other, anonymous, decided, b])
    assert found == {"a-ps": {"tcp/22"}, "b-ps": {"tcp/23", "udp/53"}}
    alert = sweep.sweep_alert("198.18.0.2", found, T0, 3600)
    assert alert["decisions"][0]["scenario"] == "portsentinel/sweep"
    assert "across 2 hosts (a-ps: tcp/22; b-ps: tcp/23,udp/53)" in alert["message"]


def _items(*sources: str) -> list[OutboxItem]:
    return [OutboxItem(f"report:{s}", "report", s, None, {}, T0, T0) for s in sources]


def test_reporter_once_per_window_and_source() -> None:
    reporter = sweep.Reporter(window=60, per_hour=100)
    assert [i.address for i in reporter.admit(_items("198.18.0.2", "198.18.0.3"), T0)] == [
        "198.18.0.2", "198.18.0.3"]  # fmt: skip
    assert reporter.admit(_items("198.18.0.2"), T0 + 59) == []
    assert len(reporter.admit(_items("198.18.0.2"), T0 + 60)) == 1
    assert reporter.dropped == 0


def test_reporter_hourly_budget_slides() -> None:
    reporter = sweep.Reporter(window=60, per_hour=3)
    sources = [f"198.18.1.{n}" for n in range(5)]
    assert len(reporter.admit(_items(*sources), T0)) == 3
    assert reporter.dropped == 2
    assert reporter.admit(_items("198.18.2.1"), T0 + 3599) == []
    assert len(reporter.admit(_items("198.18.2.1", "198.18.2.2"), T0 + 3600.5)) == 2
    assert reporter.dropped == 3
