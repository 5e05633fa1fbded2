"""What notifications say, built from validated values only: payloads, the mail message, the
summary; nothing a scanner controls forges a header or a line."""

from __future__ import annotations

import email
import email.policy

from portsentinel.alert.notify.message import (
    MAX_TEXT,
    ban_info,
    event_payload,
    host_name,
    mail_message,
    summary_payload,
    summary_text,
    text,
)
from portsentinel.model import Action

from .notify_fakes import EVENT_KEYS, WALL, decision, record


def test_an_event_payload_is_the_event_with_host_and_no_ban_yet() -> None:
    payload = event_payload(decision(), WALL, "sensor-1")
    assert set(payload) >= EVENT_KEYS | {"type", "host", "ban"}
    assert (payload["type"], payload["host"], payload["ban"]) == ("event", "sensor-1", None)
    assert payload["time"] == "2027-01-15T08:00:00.500000+00:00"


def test_a_summary_payload_says_what_was_held_and_lost_and_whom() -> None:
    payload = summary_payload(3, 1, 60.0, [("198.18.0.2", 3)], host="gw", wall=WALL)
    assert payload == {
        "type": "summary",
        "time": "2027-01-15T08:00:00.500000+00:00",
        "host": "gw",
        "text": "3 more alerts in the last minute; 1 alert lost: the queue was full",
        "held": 3,
        "dropped": 1,
        "window": 60.0,
        "sources": [{"src": "198.18.0.2", "count": 3}],
    }


def test_summary_text() -> None:
    assert summary_text(1, 0, 60.0) == "1 more alert in the last minute"
    assert summary_text(7, 2, 60.0) == (
        "7 more alerts in the last minute; 2 alerts lost: the queue was full"
    )
    assert summary_text(0, 1, 30.0) == "1 alert lost: the queue was full"
    assert summary_text(2, 0, 30.0) == "2 more alerts in the last 30 s"


def test_ban_info_drops_a_name_that_is_not_a_plain_host_name() -> None:
    assert "name" not in ban_info(record(), name="evil.example;touch /tmp/x")
    assert "name" not in ban_info(record(), name="a\nb")
    assert ban_info(record()._replace(expires=None))["until"] is None


def test_host_names_stay_plain() -> None:
    assert host_name("gw-1.example.org") == "gw-1.example.org"
    assert host_name("bad name\n") == "unknown-host"
    assert host_name() != ""  # this machine's node name, or unknown-host


def test_text_is_printable_and_cut_short() -> None:
    assert text("a\nb\rc\x1b[2J") == "abc[2J"
    assert len(text("x" * 1000)) == MAX_TEXT


def test_an_event_mail_holds_only_validated_values() -> None:
    payload = event_payload(
        decision(action=Action.BLOCK, rule="r\nBcc: evil@example.org"), WALL, "gw"
    )
    payload["ban"] = ban_info(record(), name="scanner.example.org.")
    payload["src"] = "not an address\nX-Evil: 1"
    message = email.message_from_string(
        mail_message(payload, ("root",), "gw"), policy=email.policy.default
    )
    assert message["Subject"] == "PortSentinel on gw: block ? (SYN scan, tcp/31337)"
    assert message["Bcc"] is None
    assert message["X-Evil"] is None
    assert message["Auto-Submitted"] == "auto-generated"
    body = message.get_body()
    assert body is not None
    content = body.get_content()
    assert "Source: ?\n" in content
    assert "Rule: rBcc: evil@example.org\n" in content
    assert "Ban: 198.18.0.2/32 until 2027-01-15T09:00:00.000000+00:00\n" in content
    assert "Offence: 2\n" in content
    assert "Name: scanner.example.org\n" in content


def test_a_permanent_ban_reads_permanent() -> None:
    payload = event_payload(decision(action=Action.BLOCK), WALL, "gw")
    payload["ban"] = ban_info(record()._replace(expires=None))
    assert "until permanent\n" in mail_message(payload, ("root",), "gw")


def test_mail_message_summary_lists_sources() -> None:
    payload: dict[str, object] = {
        "type": "summary",
        "text": "4 more alerts in the last minute",
        "sources": [{"src": "198.18.0.2", "count": 3}, {"src": "not an address", "count": 1}],
    }
    message = email.message_from_string(mail_message(payload, ("root",), "gw"))
    assert message["Subject"] == "PortSentinel on gw: 4 more alerts in the last minute"
    body = message.get_payload()
    assert isinstance(body, str)
    assert "  198.18.0.2: 3\n" in body
    assert "  ?: 1\n" in body
