"""What a notification says: the JSON payloads and the mail message, built from validated
values only (addresses, port numbers, kinds) plus printable text cut short, so that nothing a
scanner controls can forge a header or a line. Pure but for the node name ``host_name`` reads.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping

from portsentinel.alert.events import event_dict, iso_time
from portsentinel.alert.notify.config import WINDOW
from portsentinel.model import Action, Decision, ScanKind
from portsentinel.store.records import BanRecord

MAX_TEXT = 200  # free text (reasons, rules, MTA errors) is cut to this many characters

_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*"
)
_KINDS = frozenset(k.value for k in ScanKind)
_ACTIONS = frozenset(a.value for a in Action)


def host_name(name: str = "") -> str:
    """A host name fit for a subject line: ``name`` or this machine's, when plain."""
    name = name or os.uname().nodename
    return name if _HOSTNAME.fullmatch(name) else "unknown-host"


def ban_info(record: BanRecord, name: str | None = None) -> dict[str, object]:
    """The ``ban`` object of a notification; ``name`` (reverse DNS) only when plain."""
    info: dict[str, object] = {
        "target": record.target,
        "since": iso_time(record.created),
        "until": iso_time(record.expires) if record.expires is not None else None,
        "offence": record.offence,
        "reason": record.reason,
    }
    if name is not None and _HOSTNAME.fullmatch(name.rstrip(".")):
        info["name"] = name.rstrip(".")
    return info


def event_payload(decision: Decision, wall: float, host: str) -> dict[str, object]:
    """A decision's notification: its event's keys, the host, and ``ban`` (None until the
    responder says how it was applied)."""
    payload: dict[str, object] = {"type": "event", **event_dict(decision, wall)}
    payload.update(host=host, ban=None)
    return payload


def summary_text(held: int, dropped: int, window: float) -> str:
    """``N more alerts in the last minute`` (and the queue's losses, if any)."""
    span = "minute" if window == WINDOW else f"{window:g} s"
    parts = []
    if held:
        parts.append(f"{held} more alert{'s' if held != 1 else ''} in the last {span}")
    if dropped:
        parts.append(f"{dropped} alert{'s' if dropped != 1 else ''} lost: the queue was full")
    return "; ".join(parts)


def summary_payload(
    held: int, dropped: int, window: float, top: list[tuple[str, int]], *, host: str, wall: float
) -> dict[str, object]:
    """What the rate held back and the queue lost, with the sources held most."""
    return {
        "type": "summary",
        "time": iso_time(wall),
        "host": host,
        "text": summary_text(held, dropped, window),
        "held": held,
        "dropped": dropped,
        "window": window,
        "sources": [{"src": src, "count": n} for src, n in top],
    }


def text(value: object) -> str:
    """Printable text only, cut short: no header or line can be forged with it."""
    return "".join(c for c in str(value) if c.isprintable())[:MAX_TEXT]


def mail_message(payload: Mapping[str, object], to: tuple[str, ...], host: str) -> str:
    """The message the MTA reads with ``-t``: To and Subject headers, a plain-text body."""
    if payload.get("type") == "summary":
        subject, lines = text(payload.get("text")), [text(payload.get("text"))]
        top = payload.get("sources")
        if isinstance(top, list):
            for entry in top:
                if isinstance(entry, Mapping):
                    lines.append(f"  {_address(entry.get('src'))}: {_number(entry.get('count'))}")
    else:
        subject, lines = _event_lines(payload)
    import email.message  # noqa: PLC0415 - only when mail is configured (see the package doc)
    import email.utils  # noqa: PLC0415

    msg = email.message.EmailMessage()
    msg["To"] = ", ".join(to)
    msg["Subject"] = f"PortSentinel on {host}: {subject}"
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content("\n".join([f"Host: {host}", *lines]) + "\n")
    return msg.as_string()


def _event_lines(event: Mapping[str, object]) -> tuple[str, list[str]]:
    src, kind = _address(event.get("src")), _word(event.get("kind"), _KINDS)
    action = _word(event.get("action"), _ACTIONS)
    where = f"{_word(event.get('proto'), frozenset({'tcp', 'udp'}))}/{_number(event.get('port'))}"
    subject = f"{action} {src} ({kind} scan, {where})"
    lines = [
        f"Time: {text(event.get('time'))}",
        f"Source: {src}",
        f"Destination: {_address(event.get('dst'))}",
        f"Port: {where}",
        f"Scan kind: {kind}",
        f"Action: {action}",
        f"Reason: {text(event.get('reason'))}",
        f"Hits: {_number(event.get('hits'))}, ports seen: {_number(event.get('ports_seen'))}",
    ]
    if event.get("rule") is not None:
        lines.append(f"Rule: {text(event.get('rule'))}")
    ban = event.get("ban")
    if isinstance(ban, Mapping):
        until = ban.get("until")
        lines.append(f"Ban: {_network(ban.get('target'))} until {text(until or 'permanent')}")
        lines.append(f"Ban reason: {text(ban.get('reason'))}")
        lines.append(f"Offence: {_number(ban.get('offence'))}")
        name = ban.get("name")
        if isinstance(name, str) and _HOSTNAME.fullmatch(name):
            lines.append(f"Name: {name}")
    return subject, lines


def _address(value: object) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        return "?"


def _network(value: object) -> str:
    try:
        return str(ipaddress.ip_network(str(value), strict=False))
    except ValueError:
        return "?"


def _number(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _word(value: object, allowed: frozenset[str]) -> str:
    return value if isinstance(value, str) and value in allowed else "?"
