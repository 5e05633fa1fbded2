"""JSON event lines (one object per line), the schema fixed in DESIGN.md.

Keys ``time src dst proto port kind action reason`` are the contract: never rename or remove
one. Extra keys may be added at the end. A stream whose repeats are rate-limited says what it
held back in a summary line (``"type": "summary"``), never silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime

from portsentinel.model import Decision, flag_names


def iso_time(wall: float) -> str:
    """ISO 8601 with its UTC offset, microsecond precision: ``2026-11-25T21:26:10.123456+00:00``."""
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="microseconds")


def event_dict(decision: Decision, wall: float) -> dict[str, object]:
    """The event for one decision; ``wall`` is the packet's wall-clock time in epoch seconds."""
    return {
        "time": iso_time(wall),
        "src": decision.src,
        "dst": decision.dst,
        "proto": decision.proto.key,
        "port": decision.port,
        "kind": decision.kind.value,
        "action": decision.action.value,
        "reason": decision.reason.value,
        "mode": decision.mode.value if decision.mode is not None else None,
        "rule": decision.rule,
        "flags": flag_names(decision.flags) if decision.proto.key == "tcp" else None,
        "ip_options": decision.ip_options,
        "hits": decision.hits,
        "ports_seen": decision.ports_seen,
        **_extras(decision),
    }


def _extras(decision: Decision) -> dict[str, object]:
    """Keys present only when they say something: the TRW score and contacts, the scanner,
    the decoy group (``group``: its sources; ``decoy``: this one has no proof of its address,
    so its ban is DECOY_BAN_DURATION at most)."""
    extras: dict[str, object] = {}
    if decision.score is not None:
        extras["score"] = round(decision.score, 6)
        extras["contacts"] = decision.contacts
    if decision.scanner is not None:
        extras["scanner"] = decision.scanner
    if decision.group:
        extras["group"] = list(decision.group)
        extras["decoy"] = decision.decoy
    return extras


def event_line(decision: Decision, wall: float) -> str:
    """One compact JSON line, no trailing newline."""
    return json.dumps(event_dict(decision, wall), separators=(",", ":"))


def summary_line(
    held: int, seconds: float, top: Iterable[tuple[str, str, int]], wall: float
) -> str:
    """The records held back over the ``seconds`` up to ``wall``, with the sources and reasons
    that held most (``top``: source, reason, count): one compact JSON line, no newline."""
    summary = {
        "time": iso_time(wall),
        "type": "summary",
        "held": held,
        "window": round(seconds, 6),
        "sources": [{"src": src, "reason": reason, "count": n} for src, reason, n in top],
    }
    return json.dumps(summary, separators=(",", ":"))
