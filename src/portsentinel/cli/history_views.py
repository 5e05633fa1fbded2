"""What the store recorded, read into views for ``why`` and ``history``.

Reading never creates anything (``Store.open(..., offline=None)``: a live store or a
replay's); a state directory without a store is "nothing recorded". In a replay's store "now"
is the time of its newest event (``reference_time``), so "the last 24 hours" and "active" mean
what they meant at the end of the capture. The views are plain dicts with the event key
style: ``--json`` prints them as they are, ``cli/history_text.py`` renders them for people.
"""

from __future__ import annotations

import ipaddress
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from portsentinel import paths
from portsentinel.alert.events import iso_time
from portsentinel.block.ingress import Counts
from portsentinel.block.nftables import ingress_counts
from portsentinel.block.runner import Runner
from portsentinel.cli.options import PROG
from portsentinel.config.types import InvalidValueError, ports_text, positive_duration
from portsentinel.errors import ConfigError
from portsentinel.model import Action
from portsentinel.store.records import BanRecord, EventRow
from portsentinel.store.schema import parse_network
from portsentinel.store.sqlite import Store

FAR: Final = 1e300  # an open end of a time range
EVENT_LIMIT: Final = 100_000  # newest events of one address that ``why`` summarises
# How far back ``why`` looks for an ended ban, window by window, newest first: a recent ban
# is found by reading only recent rows; the last window is the rest of the store.
BAN_LOOKBACK: Final = (86400.0, 30 * 86400.0, 365 * 86400.0)
SINCE_EXPECTED: Final = (
    "a duration such as 30s, 15m, 1h, 7d, an ISO 8601 time such as 2026-11-25T21:00:00+00:00, "
    "or all"
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@contextmanager
def reading(state_dir: str, err: TextIO | None = None) -> Iterator[Store | None]:
    """The store for reading, or None when the directory has none (a read creates nothing);
    rows the reads skipped as damaged are said on ``err``."""
    if not os.path.exists(os.path.join(state_dir, paths.STORE_NAME)):
        yield None
        return
    store = Store.open(state_dir, offline=None)
    try:
        yield store
        if err is not None:
            say_damaged(store, err)
    finally:
        store.close()


def say_damaged(store: Store, err: TextIO) -> None:
    """One warning per row the store's readers skipped (``store/rows.py``)."""
    for row in store.damaged():
        err.write(f"{PROG}: warning: skipped a damaged row of the state store: {row}\n")


def reference_time(store: Store, now: float) -> float:
    """``now`` for a live store; the newest event's time for a replay's (offline) store."""
    if not store.offline:
        return now
    newest = store.events_for("::/0", limit=1)  # ::/0 holds IPv4 too (as IPv4-mapped keys)
    return newest[0].time if newest else now


def parse_since(text: str) -> tuple[float, bool]:
    """``--since``: (seconds, True) for a duration back from now, (epoch, False) for a time.

    An ISO time without an offset is UTC, the zone every time PortSentinel prints is in.
    ``all`` (as ``report`` takes it) is everything: the epoch.
    """
    if text.strip().lower() == "all":
        return 0.0, False
    try:
        return positive_duration(text), True
    except InvalidValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"not a duration or a time: {text!r}", key="--since", expected=SINCE_EXPECTED
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp(), False


def parse_target(text: str) -> Network:
    try:
        return parse_network(text)
    except ValueError:
        raise ConfigError(
            f"not an address: {text!r}", key="ADDR", expected="an IPv4 or IPv6 address or ADDR/LEN"
        ) from None


def _network(ban: BanRecord) -> Network:
    return ipaddress.ip_network(f"{ban.address}/{ban.prefix}")


def _covers(ban: BanRecord, target: Network) -> bool:
    net = _network(ban)
    return net.version == target.version and target.subnet_of(net)  # type: ignore[arg-type]


def find_ban(store: Store, target: Network, anchor: float) -> BanRecord | None:
    """The live ban covering ``target`` (host or prefix ban), else the newest ended one."""
    live = store.ban_for(str(target))
    if live is not None:
        return live
    end = FAR
    for back in (*BAN_LOOKBACK, None):
        start = -FAR if back is None else anchor - back
        found = [ban for ban in store.bans_between(start, end) if _covers(ban, target)]
        if found:
            return max(found, key=lambda ban: (ban.created, ban.id))
        end = start
    return None


def _iso(epoch: object) -> str | None:
    return iso_time(epoch) if isinstance(epoch, int | float) else None


def ports_by_proto(pairs: Iterable[tuple[str, int]]) -> dict[str, str]:
    """(proto, port) pairs as ``{"tcp": "1-20,22,80"}``, protocols in name order."""
    ports: dict[str, set[int]] = {}
    for proto, port in pairs:
        ports.setdefault(proto, set()).add(port)
    return {proto: ports_text(ports[proto]) for proto in sorted(ports)}


def _evidence_ports(evidence: Mapping[str, Any]) -> dict[str, str]:
    """The evidence's ``["tcp/23", ...]`` list, or the one port a ban was asked for."""
    pairs = []
    for item in evidence.get("ports") or ():
        name, _, number = str(item).partition("/")
        if number.isascii() and number.isdigit():  # "²" is a digit that int() refuses
            pairs.append((name, int(number)))
    port, proto = evidence.get("port"), evidence.get("proto")
    if not pairs and isinstance(port, int) and port > 0 and isinstance(proto, str):
        pairs.append((proto, port))
    return ports_by_proto(pairs)


def _evidence_view(evidence: Mapping[str, Any]) -> dict[str, Any]:
    view = dict(evidence)
    view["ports"] = _evidence_ports(evidence)
    for key in ("first_seen", "last_seen"):
        if key in view:
            view[key] = _iso(view[key])
    return view


def _ban_action(ban: BanRecord) -> str:
    """``block`` or ``command`` (BLOCK_x = 2: KILL_RUN_CMD only)."""
    action = ban.evidence.get("action")
    if isinstance(action, str):
        return action
    return "command" if list(ban.evidence.get("plan") or ()) == ["run_cmd"] else "block"


def ban_view(store: Store, ban: BanRecord) -> dict[str, Any]:
    """A ban for ``why``: the record, its evidence and what each backend did."""
    return {
        "id": ban.id,
        "address": ban.target,
        "since": iso_time(ban.created),
        "until": _iso(ban.expires),
        "state": ban.state.value,
        "action": _ban_action(ban),
        "reason": ban.reason,
        "rule": ban.rule,
        "offence": ban.offence,
        "ended": _iso(ban.lifted_at),
        "lifted_by": ban.lifted_by,
        "offline": ban.offline,
        "evidence": _evidence_view(ban.evidence),
        "actions": [
            {
                "backend": a.backend,
                "state": a.state.value,
                "attempts": a.attempts,
                "error": a.last_error,
                "time": iso_time(a.updated),
            }
            for a in store.actions(ban.id)
        ],
        "changes": [  # a ban cut as a decoy's (store/changes.py)
            {
                "time": iso_time(c.at),
                "change": c.change,
                "before": _iso(c.expires_before),
                "after": _iso(c.expires_after),
                "group": c.detail.get("group", []),
                "evidence": c.detail.get("evidence", {}),
            }
            for c in store.ban_changes(ban.id)
        ],
    }


def probes_view(events: Sequence[EventRow]) -> dict[str, Any] | None:
    """What the events of an address (or prefix) show; None when there are none."""
    if not events:
        return None
    ports = ports_by_proto((e.proto, e.port) for e in events)
    destinations = sorted({e.dst for e in events}, key=ipaddress.ip_address)
    return {
        "count": len(events),
        "complete": len(events) < EVENT_LIMIT,  # False: only the newest EVENT_LIMIT
        "first": iso_time(events[0].time),
        "last": iso_time(events[-1].time),
        "kinds": dict(Counter(e.kind for e in events).most_common()),
        "ports": ports,
        "port_count": len({(e.proto, e.port) for e in events}),
        "sources": sorted({e.src for e in events}, key=ipaddress.ip_address),
        "destinations": destinations,
        "decisions": dict(Counter(e.action for e in events).most_common()),
        "rules": sorted({e.rule for e in events if e.rule}),
        "score": _score(events),
        "scanners": sorted({e.scanner for e in events if e.scanner}),
        "groups": [g.split() for g in dict.fromkeys(e.group for e in events if e.group)],
        "alerts": [
            {"time": iso_time(e.time), "proto": e.proto, "port": e.port, "kind": e.kind}
            for e in events
            if e.action == Action.ALERT.value
        ],
    }


def _score(events: Sequence[EventRow]) -> dict[str, Any] | None:
    """The sequential test (SCAN_RULE trw) as of the source's newest scored event, and where
    it first reached its decision (an acting one, or the first alert): None without trw."""
    scored = [e for e in events if e.score is not None]
    if not scored:
        return None
    newest = scored[-1]
    decided = next((e for e in scored if e.action != Action.IGNORED.value), None)
    return {
        "ratio": newest.score,
        "contacts": newest.contacts,
        "decided_after": decided.contacts if decided is not None else None,
    }


def why_view(store: Store, target: Network, anchor: float) -> dict[str, Any] | None:
    """Everything ``why`` says about ``target``; None when the store has nothing on it."""
    ban = find_ban(store, target, anchor)
    scope = _network(ban) if ban is not None and _network(ban) != target else target
    events = store.events_for(str(scope), limit=EVENT_LIMIT)
    fleet = [
        {"id": d.id, "origin": d.origin, "scenario": d.scenario, "until": iso_time(d.until),
         "state": d.state, "note": d.note}
        for d in store.fleet_decisions(address=str(target.network_address))
    ]  # fmt: skip
    if ban is None and not events and not fleet:
        return None
    probes = probes_view(events)
    rules = [] if probes is None else probes["rules"]
    host = target.prefixlen == target.max_prefixlen
    return {
        "src": str(target.network_address) if host else str(target),
        "rule": ban.rule if ban is not None and ban.rule else (rules[0] if rules else None),
        "ban": None if ban is None else ban_view(store, ban),
        "probes": probes,
        "fleet": fleet,
    }


def add_dropped(view: dict[str, Any], counts: Mapping[str, Counts] | None = None) -> None:
    """A live ban's ``dropped``: what its source sent since, dropped at ingress before the
    daemon saw it (the kernel's element counter; ``block/ingress.py``), or None when the
    kernel cannot be asked (no nftables backend, another namespace, no privilege). ``counts``
    None: read from the kernel now."""
    ban = view.get("ban")
    if ban is None:
        return
    ban["dropped"] = None
    if ban["offline"] or ban["state"] not in ("pending", "active"):
        return
    if counts is None:
        counts = ingress_counts(Runner()) or {}
    found = counts.get(ban["address"])
    if found is not None:
        ban["dropped"] = {"packets": found[0], "bytes": found[1]}


def history_rows(store: Store, start: float, end: float = FAR) -> list[dict[str, Any]]:
    """Bans whose life overlaps ``[start, end)`` and alert decisions in it, oldest first."""
    timed: list[tuple[float, dict[str, Any]]] = [
        (ban.created, _ban_row(ban)) for ban in store.bans_between(start, end)
    ]
    events = store.events_between(start, end)
    seen: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for event in events:  # in time order: an alert's ports are those probed up to it
        pairs = seen.setdefault((event.src, event.proto), [])
        pairs.append((event.proto, event.port))
        if event.action == Action.ALERT.value:
            timed.append((event.time, _alert_row(event, ports_by_proto(pairs))))
    timed.sort(key=lambda item: item[0])
    return [row for _time, row in timed]


def _ban_row(ban: BanRecord) -> dict[str, Any]:
    return {
        "time": iso_time(ban.created),
        "src": ban.target,
        "action": _ban_action(ban),
        "state": ban.state.value,
        "until": _iso(ban.expires),
        "reason": ban.reason,
        "ports": _evidence_ports(ban.evidence),
        "rule": ban.rule,
        "offence": ban.offence,
        "ended": _iso(ban.lifted_at),
        "lifted_by": ban.lifted_by,
        "ban_id": ban.id,
    }


def _alert_row(event: EventRow, ports: dict[str, str]) -> dict[str, Any]:
    return {
        "time": iso_time(event.time),
        "src": event.src,
        "action": event.action,
        "state": "logged",  # BLOCK_x = 0: logged and written to the history file, no ban
        "until": None,
        "reason": f"{event.kind} scan: {event.reason}",
        "ports": ports,
        "rule": event.rule,
        "offence": None,
        "ended": None,
        "lifted_by": None,
        "ban_id": None,
    }
