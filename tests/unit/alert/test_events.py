"""JSON events: the keys DESIGN.md fixes, their order and their values."""

from __future__ import annotations

import json

from portsentinel.alert.events import event_line, iso_time, summary_line
from portsentinel.model import FIN, PSH, URG, Action, Decision, Mode, Proto, Reason, ScanKind

CONTRACT = ["time", "src", "dst", "proto", "port", "kind", "action", "reason"]


def test_iso_time_has_utc_offset_and_microseconds() -> None:
    assert iso_time(1764106000.25) == "2025-11-25T21:26:40.250000+00:00"


def test_event_keys_and_values() -> None:
    d = Decision(
        time=1764106000.5,
        src="fd00:5e::2",
        dst="fd00:5e::1",
        proto=Proto.TCP,
        port=31337,
        kind=ScanKind.XMAS,
        action=Action.BLOCK,
        reason=Reason.TRIGGERED,
        flags=FIN | PSH | URG,
        mode=Mode.ATCP,
        rule="scan_trigger",
        hits=3,
        ports_seen=3,
    )
    line = event_line(d, d.time)
    assert "\n" not in line
    event = json.loads(line)
    assert list(event)[: len(CONTRACT)] == CONTRACT
    assert event["time"] == "2025-11-25T21:26:40.500000+00:00"
    assert (event["src"], event["dst"], event["proto"], event["port"]) == (
        "fd00:5e::2",
        "fd00:5e::1",
        "tcp",
        31337,
    )
    assert (event["kind"], event["action"], event["reason"]) == (
        "XMAS",
        "block",
        "scan trigger reached",
    )
    assert event["flags"] == "FIN|PSH|URG"
    assert event["mode"] == "atcp"
    assert event["hits"] == 3


def test_udp_event_has_no_flags() -> None:
    d = Decision(
        0.0,
        "198.18.0.2",
        "198.18.0.1",
        Proto.UDP,
        53,
        ScanKind.UDP,
        Action.IGNORED,
        Reason.BELOW_TRIGGER,
    )
    event = json.loads(event_line(d, 0.0))
    assert event["proto"] == "udp"
    assert event["flags"] is None
    assert event["reason"] == "below trigger"


def test_summary_line_says_what_was_held_and_whose() -> None:
    line = summary_line(65514, 1.5, [("198.18.0.2", "already blocked", 65514)], 1_700_000_000.0)
    assert json.loads(line) == {
        "time": "2023-11-14T22:13:20.000000+00:00",
        "type": "summary",
        "held": 65514,
        "window": 1.5,
        "sources": [{"src": "198.18.0.2", "reason": "already blocked", "count": 65514}],
    }
    assert "\n" not in line


def test_score_contacts_and_scanner_only_when_known() -> None:
    base = Decision(
        time=1764106000.5, src="198.18.0.2", dst="198.18.0.1", proto=Proto.TCP, port=23,
        kind=ScanKind.SYN, action=Action.ALERT, reason=Reason.TRIGGERED,
    )  # fmt: skip
    plain = json.loads(event_line(base, base.time))
    assert not {"score", "contacts", "scanner"} & set(plain)
    base.score, base.contacts, base.scanner = 256.00000000001, 4, "nmap"
    told = json.loads(event_line(base, base.time))
    assert (told["score"], told["contacts"], told["scanner"]) == (256.0, 4, "nmap")
