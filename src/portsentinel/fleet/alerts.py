"""What goes to LAPI and what comes back, as plain data (pure: time is an argument).

An alert carries one ``ban`` decision of scope ``Ip`` (never ``Range``: the stock bouncer cuts a
range to its first address), origin ``portsentinel`` and scenario ``portsentinel/<kind>``. LAPI
ends a decision at ``stop_at + duration``, so ``stop_at`` is the time of sending and the
duration what is left of the local ban (a permanent one: ``CROWDSEC_PERMANENT_CAP``).

Which bans may go out at all (``push_verdict``): a forged source costs nothing, so a ban pushed
at once would let anyone frame an address across the whole fleet. A ban goes out at once only
with strong evidence (a completed handshake, or an operator's ``block``); any other once it has
stood for ``FLEET_PUSH_DELAY`` (the decoy window), and never when it was lifted or cut shorter
before that (a decoy group's cut): keyed on the store's ban records alone.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from portsentinel.store.fleet import FleetDecision
from portsentinel.store.records import BanRecord, BanState

ORIGIN: Final = "portsentinel"
PREFIX: Final = "portsentinel/"
MANUAL_REASON: Final = "manual block"
STRONG_KINDS: Final = frozenset({"CONNECT"})
SWEEP: Final = "sweep"
_GO_PART = re.compile(r"(\d+(?:\.\d*)?)(h|ms|us|µs|ns|m|s)")
_GO_UNITS: Final = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6,
                    "ns": 1e-9}  # fmt: skip

# push_verdict's answers
PUSH, WAIT, WITHHOLD = "push", "wait", "withhold"


def rfc3339(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def go_duration(seconds: float) -> str:
    """Whole seconds, at least one, in Go's syntax (LAPI takes no ``1d``)."""
    return f"{max(1, round(seconds))}s"


def parse_go_duration(text: str) -> float | None:
    """Seconds of a Go duration such as ``3h59m59.598s`` (negative: an ended one, 0)."""
    body = text.strip()
    negative = body.startswith("-")
    body = body.lstrip("+-")
    if body == "0":
        return 0.0
    total, pos = 0.0, 0
    for match in _GO_PART.finditer(body):
        if match.start() != pos:
            return None
        total += float(match[1]) * _GO_UNITS[match[2]]
        pos = match.end()
    if pos != len(body) or pos == 0:
        return None
    return 0.0 if negative else total


def strong(record: BanRecord) -> bool:
    """Evidence a forger cannot cheaply fake: a completed handshake, an operator's ban, a
    fleet-wide sweep (several hosts reported it)."""
    if record.reason == MANUAL_REASON:
        return True
    kinds = record.evidence.get("kinds", [])
    if isinstance(kinds, list) and STRONG_KINDS & {str(k) for k in kinds}:
        return True
    return record.evidence.get("fleet") == SWEEP


def shortened(record: BanRecord, first_expires: float | None) -> bool:
    """Does the ban end earlier than when the fleet link first saw it (a decoy group's cut,
    ``DECOY_BAN_DURATION``)?"""
    return record.expires is not None and (
        first_expires is None or record.expires < first_expires - 1.0
    )


def push_verdict(record: BanRecord, first_expires: float | None, now: float, delay: float) -> str:
    """PUSH, WAIT (not yet: its decoy window runs) or WITHHOLD (never) for a local ban, whose
    end was ``first_expires`` when the fleet link first saw it."""
    if record.offline or record.state is not BanState.ACTIVE:
        return WITHHOLD if not record.live else WAIT
    if record.expires is not None and record.expires <= now:
        return WITHHOLD
    if shortened(record, first_expires):  # cut since it was seen: a decoy's ban, say
        return WITHHOLD
    if strong(record):
        return PUSH
    return PUSH if now - record.created >= delay else WAIT


def scenario(record: BanRecord) -> str:
    if record.reason == MANUAL_REASON:
        return PREFIX + "manual"
    if record.evidence.get("fleet") == SWEEP:
        return PREFIX + SWEEP
    kinds = record.evidence.get("kinds", [])
    kind = str(kinds[0]).lower() if isinstance(kinds, list) and kinds else "scan"
    return PREFIX + re.sub(r"[^a-z0-9-]", "-", kind)


def message(record: BanRecord, host: str) -> str:
    """PortSentry's words: who, what, which ports, where."""
    ev = record.evidence
    ports = [str(p) for p in ev.get("ports", [])] if isinstance(ev.get("ports"), list) else []
    kinds = "/".join(str(k) for k in ev.get("kinds", [])) or "scan"
    shown = ", ".join(ports[:8]) + (f" (+{len(ports) - 8})" if len(ports) > 8 else "")
    where = f" to {shown}" if shown else ""
    return f"attackalert: {kinds} from host: {record.target} on {host}{where}; {record.reason}"


def ban_alert(
    record: BanRecord, now: float, *, host: str, cap: float, simulated: bool = False
) -> dict[str, Any] | None:
    """The alert for a local ban, or None when nothing is left of it."""
    left = cap if record.expires is None else min(record.expires - now, cap)
    if left < 1.0:
        return None
    ev = record.evidence
    first = ev.get("first_seen")
    start = float(first) if isinstance(first, int | float) else record.created
    name = scenario(record)
    address = record.address
    return {
        "scenario": name, "scenario_hash": "", "scenario_version": "",
        "message": message(record, host),
        "events_count": int(ev.get("hits", 1) or 1) if isinstance(ev.get("hits", 1), int) else 1,
        "start_at": rfc3339(min(start, now)), "stop_at": rfc3339(now),
        "capacity": 0, "leakspeed": "0", "simulated": simulated, "remediation": True,
        "events": [],
        "source": {"scope": "Ip", "value": address, "ip": address},
        "decisions": [{"type": "ban", "scope": "Ip", "value": address,
                       "duration": go_duration(left), "origin": ORIGIN, "scenario": name}],
    }  # fmt: skip


def report_alert(
    address: str, ports: Sequence[str], first: float, last: float, now: float, *, host: str
) -> dict[str, Any]:
    """Weak evidence, below this host's threshold: an alert without a decision, for the
    fleet's sweep rule (``sweep``). ``meta`` names the host and the ports."""
    shown = ",".join(ports[:32])
    return {
        "scenario": PREFIX + "probe", "scenario_hash": "", "scenario_version": "",
        "message": f"probe from host: {address} on {host} to {shown}",
        "events_count": len(ports), "start_at": rfc3339(first), "stop_at": rfc3339(last),
        "capacity": 0, "leakspeed": "0", "simulated": False, "remediation": False,
        "events": [],
        "source": {"scope": "Ip", "value": address, "ip": address},
        "meta": [{"key": "host", "value": host}, {"key": "ports", "value": shown},
                 {"key": "reported_at", "value": rfc3339(now)}],
    }  # fmt: skip


def decision_of(raw: Mapping[str, Any], now: float) -> FleetDecision | None:
    """A pulled decision this host can apply: a ban of one address with time left."""
    if str(raw.get("type", "")).lower() != "ban" or str(raw.get("scope", "")).lower() != "ip":
        return None
    try:
        address = str(ipaddress.ip_address(str(raw.get("value", "")).strip()))
        ident = int(raw["id"])
    except (KeyError, TypeError, ValueError):
        return None
    left = parse_go_duration(str(raw.get("duration", "")))
    if left is None or left <= 0:
        return None
    return FleetDecision(ident, address, str(raw.get("origin", "")),
                         str(raw.get("scenario", "")), now + left)  # fmt: skip


def deleted_id(raw: Mapping[str, Any]) -> int | None:
    try:
        return int(raw["id"])
    except (KeyError, TypeError, ValueError):
        return None
