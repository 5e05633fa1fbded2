from __future__ import annotations

from pathlib import Path

import pytest

from portsentinel.fleet import alerts
from portsentinel.store.records import LiftedBy

from .fleet_fakes import T0, ban, open_store


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("4h", 14400.0), ("3h59m59.5s", 14399.5), ("90m", 5400.0), ("1.5s", 1.5), ("0", 0.0),
     ("-2s", 0.0), ("250ms", 0.25), ("4 hours", None), ("1d", None), ("", None)],
)  # fmt: skip
def test_go_durations_parse(text: str, seconds: float | None) -> None:
    assert alerts.parse_go_duration(text) == seconds


def test_go_duration_is_whole_seconds_at_least_one() -> None:
    assert alerts.go_duration(3599.6) == "3600s"
    assert alerts.go_duration(0.2) == "1s"


def test_push_verdicts(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        weak = ban(store, "198.18.0.2")
        strong = ban(store, "198.18.0.3", kinds=("CONNECT",))
        manual = ban(store, "198.18.0.4", kinds=(), reason="manual block")
        assert alerts.push_verdict(weak, weak.expires, T0 + 10, 300) == alerts.WAIT
        assert alerts.push_verdict(weak, weak.expires, T0 + 300, 300) == alerts.PUSH
        assert alerts.push_verdict(strong, strong.expires, T0 + 1, 300) == alerts.PUSH
        assert alerts.push_verdict(manual, manual.expires, T0 + 1, 300) == alerts.PUSH
        # Cut shorter since first seen (a decoy's ban): never pushed.
        assert alerts.push_verdict(weak, T0 + 7200, T0 + 300, 300) == alerts.WITHHOLD
        store.lift(weak.id, T0 + 5, LiftedBy.UNBLOCK)
        lifted = store.ban(weak.id)
        assert lifted is not None
        assert alerts.push_verdict(lifted, weak.expires, T0 + 300, 300) == alerts.WITHHOLD


def test_ban_alert_sends_what_is_left(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        record = ban(store, "198.18.0.2")
        body = alerts.ban_alert(record, T0 + 600, host="web1", cap=86400)
        assert body is not None
        (decision,) = body["decisions"]
        assert decision == {"type": "ban", "scope": "Ip", "value": "198.18.0.2",
                            "duration": "3000s", "origin": "portsentinel",
                            "scenario": "portsentinel/syn"}  # fmt: skip
        assert body["stop_at"] == alerts.rfc3339(T0 + 600)
        assert "web1" in body["message"]
        assert alerts.ban_alert(record, T0 + 3600, host="web1", cap=86400) is None
        permanent = ban(store, "198.18.0.5", expires=None)
        body = alerts.ban_alert(permanent, T0, host="web1", cap=7200)
        assert body is not None
        assert body["decisions"][0]["duration"] == "7200s"


def test_pulled_decisions() -> None:
    raw = {"id": 7, "type": "ban", "scope": "Ip", "value": "198.18.0.2", "duration": "1h",
           "origin": "cscli", "scenario": "manual"}  # fmt: skip
    found = alerts.decision_of(raw, T0)
    assert found is not None
    assert (found.id, found.address, found.until) == (7, "198.18.0.2", T0 + 3600)
    assert alerts.decision_of({**raw, "scope": "Range"}, T0) is None
    assert alerts.decision_of({**raw, "type": "captcha"}, T0) is None
    assert alerts.decision_of({**raw, "value": "nonsense"}, T0) is None
    assert alerts.decision_of({**raw, "duration": "-1s"}, T0) is None
    assert alerts.deleted_id({"id": "9"}) == 9
    assert alerts.deleted_id({}) is None
