from __future__ import annotations

from portsentinel.fleet import sweep
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
    assert item.ref == f"report:198.18.0.2:{int(T0) // 30}"
    alert = item.body["alert"]
    assert "decisions" not in alert
    assert {"key": "ports", "value": "tcp/22,tcp/80"} in alert["meta"]


def test_hosts_from_reports() -> None:
    meta = [{"key": "host", "value": "a"}, {"key": "ports", "value": "tcp/22"}]
    report = {"scenario": "portsentinel/probe", "meta": meta}
    other = {"scenario": "portsentinel/syn", "meta": [{"key": "host", "value": "b"}]}
    found = sweep.hosts_of([report, {**report, "meta": [{"key": "host", "value": "b"}]}, other])
    assert found == {"a": {"tcp/22"}, "b": set()}
    alert = sweep.sweep_alert("198.18.0.2", found, T0, 3600)
    assert alert["decisions"][0]["scenario"] == "portsentinel/sweep"
    assert "across 2 hosts" in alert["message"]
