"""``why`` and ``history`` as text: a view becomes a headline and one line per fact, rows a
table."""

from __future__ import annotations

import io
from typing import Any

from portsentinel.cli import history_text as text
from portsentinel.cli.tables import write_rows

BAN: dict[str, Any] = {
    "id": 7,
    "address": "2001:db8::/64",
    "since": "2023-11-14T22:13:21+00:00",
    "until": None,
    "state": "lifted",
    "action": "block",
    "reason": "SYN scan: scan trigger reached",
    "rule": None,
    "offence": 2,
    "ended": "2023-11-14T23:00:00+00:00",
    "lifted_by": "unblock",
    "offline": True,
    "evidence": {"hits": 1, "ports": {"tcp": "22"}, "plan": ["nftables"]},
    "actions": [],
}


def test_ports_line() -> None:
    assert text.ports_line({"tcp": "1-20", "udp": "53"}) == "tcp 1-20; udp 53"
    assert text.ports_line({}) == "-"
    assert text.ports_line(None) == "-"


def test_why_lines_of_an_ended_prefix_ban_from_a_replay() -> None:
    view = {"src": "2001:db8::5", "rule": None, "ban": BAN, "probes": None}
    assert "".join(text.why_lines(view)) == (
        "2001:db8::5: was banned (lifted) with its prefix 2001:db8::/64, a replay's record: "
        "never applied\n"
        "  ban       #7 block, offence 2\n"
        "  since     2023-11-14T22:13:21+00:00\n"
        "  until     permanent\n"
        "  ended     2023-11-14T23:00:00+00:00 by unblock\n"
        "  reason    SYN scan: scan trigger reached\n"
        "  rule      -\n"
        "  evidence  1 hit; ports tcp 22\n"
        "  actions   none: offline record (plan: nftables)\n"
    )


def test_why_lines_say_what_to_do_about_an_uncertain_command() -> None:
    action = {"backend": "run_cmd", "state": "uncertain", "attempts": 1, "time": "t1",
              "error": "the daemon stopped before its outcome was recorded"}  # fmt: skip
    ban = {**BAN, "address": "192.0.2.7", "state": "active", "offline": False,
           "actions": [action]}  # fmt: skip
    lines = list(text.why_lines({"src": "192.0.2.7", "rule": None, "ban": ban, "probes": None}))
    assert lines[-2:] == [
        "  actions   run_cmd uncertain: the daemon stopped before its outcome was recorded\n",
        "  to do     uncertain: check what the command did for 192.0.2.7; to run it again: "
        "portsentinel unblock 192.0.2.7, then portsentinel block 192.0.2.7\n",
    ]


def test_why_lines_without_a_ban_say_what_was_seen() -> None:
    probes = {
        "count": 1, "complete": True, "first": "t0", "last": "t0", "kinds": {"UDP": 1},
        "ports": {"udp": "53"}, "port_count": 1, "sources": ["192.0.2.5"],
        "destinations": ["192.0.2.1"], "decisions": {"ignored": 1}, "alerts": [],
    }  # fmt: skip
    lines = list(text.why_lines({"src": "192.0.2.5", "rule": "r", "ban": None, "probes": probes}))
    assert lines[0] == "192.0.2.5: probes recorded, never banned\n"
    assert lines[1] == "  rule      r\n"
    assert "  ports     udp 53 (1 distinct)\n" in lines


def test_history_columns_show_a_logged_alert_without_an_end() -> None:
    row = {
        "time": "2023-11-14T22:13:20.000000+00:00", "src": "192.0.2.9", "action": "alert",
        "state": "logged", "until": None, "reason": "UDP scan", "ports": {"udp": "7"},
        "ban_id": None,
    }  # fmt: skip
    out = io.StringIO()
    write_rows([row], text.HISTORY_COLUMNS, out, as_json=False, empty="none")
    assert out.getvalue().splitlines()[1].split() == [
        "2023-11-14T22:13:20", "192.0.2.9", "alert", "logged", "-", "UDP", "scan", "udp", "7",
    ]  # fmt: skip


def test_why_lines_say_what_a_live_ban_dropped_at_ingress() -> None:
    ban = {**BAN, "address": "192.0.2.7", "state": "active", "offline": False,
           "dropped": {"packets": 2000, "bytes": 88000}}  # fmt: skip
    lines = list(text.why_lines({"src": "192.0.2.7", "rule": None, "ban": ban, "probes": None}))
    assert "  dropped   2000 packets (88000 bytes) at ingress since the ban\n" in lines
    unknown = {**ban, "dropped": None}
    view = {"src": "192.0.2.7", "rule": None, "ban": unknown, "probes": None}
    assert not any("dropped" in line for line in text.why_lines(view))


def test_why_lines_show_the_trw_score_and_the_scanner() -> None:
    probes = {
        "count": 2, "complete": True, "first": "t0", "last": "t1", "kinds": {"SYN": 2},
        "ports": {"tcp": "23,25"}, "port_count": 2, "sources": ["192.0.2.5"],
        "destinations": ["192.0.2.1"], "decisions": {"ignored": 2}, "alerts": [],
        "score": {"ratio": 16.0, "contacts": 2, "decided_after": None},
        "scanners": ["nmap"],
    }  # fmt: skip
    lines = list(text.why_lines({"src": "192.0.2.5", "rule": None, "ban": None, "probes": probes}))
    assert "  trw score likelihood ratio 16 after 2 first contacts; no decision yet\n" in lines
    assert "  scanner   nmap (from the probes' marks)\n" in lines
    probes["score"] = {"ratio": 256.0, "contacts": 4, "decided_after": 4}
    lines = list(text.why_lines({"src": "192.0.2.5", "rule": "trw", "ban": None, "probes": probes}))
    assert "  trw score likelihood ratio 256 after 4 first contacts; decided after 4\n" in lines
