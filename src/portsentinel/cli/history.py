"""Looking back at what the store recorded: ``why ADDR``, ``history``, and ``replay --state-dir``.

``why`` and ``history`` only read (``Store.open(..., offline=None)``: a live store or a
replay's); a state directory without a store is "nothing recorded", never created by a read.
In a replay's store "now" is the time of its newest event (``reference_time``), so "the last
24 hours" and "active" mean what they meant at the end of the capture.

``record_replay`` writes what a replay found into an offline store, the way the daemon would
have, with the capture's times: one event per decision, and a ban record per first block or
command decision (never applied to any firewall: the store is marked offline).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TextIO

from portsentinel.alert.events import iso_time
from portsentinel.cli.tables import Column, Row, json_line, write_rows
from portsentinel.config.schema import Settings
from portsentinel.config.types import InvalidValueError, ports_text, positive_duration
from portsentinel.detect.detector import Detector
from portsentinel.detect.track import kinds_of
from portsentinel.errors import ConfigError
from portsentinel.model import Action, Decision, Proto
from portsentinel.respond.bans import Backends, BanManager
from portsentinel.store.records import BanRecord, EventRow, LiftedBy
from portsentinel.store.schema import parse_network
from portsentinel.store.sqlite import DB_NAME, Store

if TYPE_CHECKING:
    from portsentinel.cli.replay import ReplayStats

EXIT_OK, EXIT_NOT_FOUND = 0, 1
DEFAULT_STATE_DIR: Final = "/var/lib/portsentinel"
DEFAULT_SINCE: Final = "24h"
FAR: Final = 1e300  # an open end of a time range
EVENT_LIMIT: Final = 100_000  # newest events of one address that ``why`` summarises
EVENT_BATCH: Final = 5_000  # replay events written per transaction
# How far back ``why`` looks for an ended ban, window by window, newest first: a recent ban
# is found by reading only recent rows; the last window is the rest of the store.
BAN_LOOKBACK: Final = (86400.0, 30 * 86400.0, 365 * 86400.0)
SINCE_EXPECTED: Final = (
    "a duration such as 30s, 15m, 1h, 7d, or an ISO 8601 time such as 2026-11-25T21:00:00+00:00"
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Emit = Callable[[Decision], None]


def _wall_clock() -> float:
    return time.time()


# --- Reading the store ------------------------------------------------------------------------


@contextmanager
def reading(state_dir: str) -> Iterator[Store | None]:
    """The store for reading, or None when the directory has none (a read creates nothing)."""
    if not os.path.exists(os.path.join(state_dir, DB_NAME)):
        yield None
        return
    store = Store.open(state_dir, offline=None)
    try:
        yield store
    finally:
        store.close()


def reference_time(store: Store, now: float) -> float:
    """``now`` for a live store; the newest event's time for a replay's (offline) store."""
    if not store.offline:
        return now
    newest = store.events_for("::/0", limit=1)  # ::/0 holds IPv4 too (as IPv4-mapped keys)
    return newest[0].time if newest else now


def parse_since(text: str) -> tuple[float, bool]:
    """``--since``: (seconds, True) for a duration back from now, (epoch, False) for a time.

    An ISO time without an offset is UTC, the zone every time PortSentinel prints is in.
    """
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


# --- Shaping records --------------------------------------------------------------------------


def _iso(epoch: object) -> str | None:
    return iso_time(epoch) if isinstance(epoch, int | float) else None


def _short(epoch: object) -> str:
    if not isinstance(epoch, int | float):
        return "-"
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def ports_by_proto(pairs: Iterable[tuple[str, int]]) -> dict[str, str]:
    """(proto, port) pairs as ``{"tcp": "1-20,22,80"}``, protocols in name order."""
    ports: dict[str, set[int]] = {}
    for proto, port in pairs:
        ports.setdefault(proto, set()).add(port)
    return {proto: ports_text(ports[proto]) for proto in sorted(ports)}


def ports_line(ports: object) -> str:
    """``{"tcp": "1-20", "udp": "53"}`` as ``tcp 1-20; udp 53``; ``-`` for none."""
    if not isinstance(ports, Mapping) or not ports:
        return "-"
    return "; ".join(f"{proto} {text}" for proto, text in ports.items())


def _evidence_ports(evidence: Mapping[str, Any]) -> dict[str, str]:
    """The evidence's ``["tcp/23", ...]`` list, or the one port a ban was asked for."""
    pairs = []
    for item in evidence.get("ports") or ():
        name, _, number = str(item).partition("/")
        if number.isdigit():
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
        "alerts": [
            {"time": iso_time(e.time), "proto": e.proto, "port": e.port, "kind": e.kind}
            for e in events
            if e.action == Action.ALERT.value
        ],
    }


def why_view(store: Store, target: Network, anchor: float) -> dict[str, Any] | None:
    """Everything ``why`` says about ``target``; None when the store has nothing on it."""
    ban = find_ban(store, target, anchor)
    scope = _network(ban) if ban is not None and _network(ban) != target else target
    events = store.events_for(str(scope), limit=EVENT_LIMIT)
    if ban is None and not events:
        return None
    probes = probes_view(events)
    rules = [] if probes is None else probes["rules"]
    host = target.prefixlen == target.max_prefixlen
    return {
        "src": str(target.network_address) if host else str(target),
        "rule": ban.rule if ban is not None and ban.rule else (rules[0] if rules else None),
        "ban": None if ban is None else ban_view(store, ban),
        "probes": probes,
    }


# --- why ----------------------------------------------------------------------------------------


def why(
    state_dir: str, address: str, *, as_json: bool, now: float, out: TextIO, err: TextIO
) -> int:
    target = parse_target(address)
    with reading(state_dir) as store:
        view = None if store is None else why_view(store, target, reference_time(store, now))
    if view is None:
        err.write(f"portsentinel: {address.strip()}: nothing recorded\n")
        return EXIT_NOT_FOUND
    out.write(json_line(view) + "\n" if as_json else "".join(why_lines(view)))
    return EXIT_OK


def why_lines(view: Mapping[str, Any]) -> Iterator[str]:
    """The human text of ``why``: a headline, then one ``  name  value`` line per fact."""
    ban, probes = view["ban"], view["probes"]
    yield f"{view['src']}: {_headline(ban, probes)}\n"
    if ban is not None:
        yield from _ban_lines(ban)
    elif view["rule"]:
        yield _field("rule", view["rule"])
    if probes is not None:
        yield from _probe_lines(probes)


def _headline(ban: Mapping[str, Any] | None, probes: Mapping[str, Any] | None) -> str:
    if ban is None:
        alerted = probes is not None and probes["alerts"]
        return "alerted, never banned" if alerted else "probes recorded, never banned"
    live = ban["state"] in ("pending", "active")
    text = f"banned ({ban['state']})" if live else f"was banned ({ban['state']})"
    if "/" in ban["address"]:
        text += f" with its prefix {ban['address']}"
    if ban["offline"]:
        text += ", a replay's record: never applied"
    return text


def _field(name: str, value: object) -> str:
    return f"  {name:<10}{value}\n"


def _ban_lines(ban: Mapping[str, Any]) -> Iterator[str]:
    yield _field("ban", f"#{ban['id']} {ban['action']}, offence {ban['offence']}")
    yield _field("since", ban["since"])
    yield _field("until", "permanent" if ban["until"] is None else ban["until"])
    if ban["ended"] is not None:
        yield _field("ended", f"{ban['ended']} by {ban['lifted_by']}")
    yield _field("reason", ban["reason"])
    yield _field("rule", ban["rule"] or "-")
    yield _field("evidence", _evidence_text(ban["evidence"]))
    actions = ban["actions"]
    if not actions:
        plan = ", ".join(ban["evidence"].get("plan") or ()) or "-"
        none = "none: offline record" if ban["offline"] else "none recorded"
        yield _field("actions", f"{none} (plan: {plan})")
    for i, action in enumerate(actions):
        text = f"{action['backend']} {action['state']}"
        if action["attempts"] > 1:
            text += f" ({action['attempts']} attempts)"
        if action["error"]:
            text += f": {action['error']}"
        yield _field("actions" if i == 0 else "", text)


def _evidence_text(evidence: Mapping[str, Any]) -> str:
    parts = []
    hits = evidence.get("hits")
    if isinstance(hits, int):
        parts.append(f"{hits} hit" if hits == 1 else f"{hits} hits")
    parts.append(f"ports {ports_line(evidence.get('ports'))}")
    if evidence.get("kinds"):
        parts.append("kinds " + ",".join(str(k) for k in evidence["kinds"]))
    if evidence.get("first_seen"):
        parts.append(f"seen {evidence['first_seen']} to {evidence.get('last_seen')}")
    return "; ".join(parts)


def _probe_lines(probes: Mapping[str, Any]) -> Iterator[str]:
    count = f"{probes['count']}" + ("" if probes["complete"] else " (the newest only)")
    yield _field("probes", f"{count}, {probes['first']} to {probes['last']}")
    yield _field("kinds", _counts(probes["kinds"]))
    yield _field("ports", f"{ports_line(probes['ports'])} ({probes['port_count']} distinct)")
    if len(probes["sources"]) > 1:
        yield _field("from", _some(probes["sources"]))
    yield _field("to", _some(probes["destinations"]))
    yield _field("decisions", _counts(probes["decisions"]))
    for alert in probes["alerts"]:
        yield _field(
            "alerted", f"{alert['time']} ({alert['proto']} {alert['port']}, {alert['kind']})"
        )


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items())


def _some(items: Sequence[str], most: int = 8) -> str:
    more = f" (+{len(items) - most})" if len(items) > most else ""
    return ", ".join(items[:most]) + more


# --- history ------------------------------------------------------------------------------------


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


def _until_cell(row: Row) -> str:
    if row.get("ban_id") is None:
        return "-"
    until = row.get("until")
    return "permanent" if until is None else str(until)[:19]


HISTORY_COLUMNS: Final = (
    Column("TIME", "time", lambda v: str(v)[:19]),
    Column("SRC", "src"),
    Column("ACTION", "action"),
    Column("STATE", "state"),
    Column("UNTIL", "until", cell=_until_cell),
    Column("REASON", "reason", shrink=True),
    Column("PORTS", "ports", ports_line, shrink=True),
)


def history(state_dir: str, since: str, *, as_json: bool, now: float, out: TextIO) -> int:
    value, relative = parse_since(since)  # a bad --since is an error even without a store
    with reading(state_dir) as store:
        anchor = now if store is None else reference_time(store, now)
        start = anchor - value if relative else value
        rows = [] if store is None else history_rows(store, start)
    empty = f"nothing recorded since {_short(start)}"
    write_rows(rows, HISTORY_COLUMNS, out, as_json=as_json, empty=empty)
    return EXIT_OK


# --- replay --state-dir -------------------------------------------------------------------------


class ReplayRecorder:
    """Records a replay's decisions as the daemon would have, with the capture's times.

    Called with each decision as the detector takes it, so a ban's evidence is the source's
    state at that moment, as it is live. Bans are records only: the store is offline.
    """

    def __init__(self, store: Store, settings: Settings, detector: Detector) -> None:
        if not store.offline:
            raise ValueError("replay records go into an offline store only")
        self.store = store
        self.detector = detector
        # Ban length and plan by the daemon's own rules; the backends are never started.
        self._rules = BanManager(settings, store, Backends(settings), log=lambda _line: None)
        self._rows: list[EventRow] = []
        self._last: float | None = None
        self.events = 0
        self.bans = 0

    def __call__(self, decision: Decision) -> None:
        self._rows.append(EventRow.from_decision(decision, decision.time))
        self._last = decision.time
        if decision.first and decision.action in (Action.BLOCK, Action.COMMAND):
            self.flush()  # the ban's events first, as a reader would expect
            self._ban(decision)
        elif len(self._rows) >= EVENT_BATCH:
            self.flush()

    def flush(self) -> None:
        self.events += self.store.add_events(self._rows)
        self._rows = []

    def finish(self) -> None:
        """Write what is buffered; end bans whose time ran out before the capture did."""
        self.flush()
        if self._last is not None:
            self._expire(self._last)

    def _ban(self, decision: Decision) -> None:
        now = decision.time
        self._expire(now)
        if self.store.ban_for(decision.src) is not None:
            return  # an earlier replay's ban still holds at this time (the daemon's rule)
        level = 1 if decision.action is Action.BLOCK else 2
        plan = self._rules.plan(level)
        if not plan:
            return  # nothing configured to act with: the daemon records no ban either
        seconds, offence = self._rules.length(decision.src, now)
        record = self.store.begin_ban(
            decision.src,
            None,
            created=now,
            expires=None if seconds is None else now + seconds,
            reason=f"{decision.kind.value} scan: {decision.reason.value}",
            rule=decision.rule,
            evidence=self._evidence(decision, plan),
            offence=offence,
        )
        self.store.activate(record.id)
        self.bans += 1

    def _expire(self, now: float) -> None:
        for record in self.store.due_for_expiry(now):
            ended = now if record.expires is None else record.expires
            self.store.lift(record.id, ended, LiftedBy.EXPIRY)

    def _evidence(self, decision: Decision, plan: list[str]) -> dict[str, object]:
        evidence: dict[str, object] = {
            "hits": decision.hits,
            "plan": plan,
            "port": decision.port,
            "proto": decision.proto.key,
            "mode": decision.mode.value if decision.mode is not None else None,
            "action": decision.action.value,
        }
        state = self.detector.source(ipaddress.ip_address(decision.src).packed)
        if state is not None:
            evidence.update(
                hits=state.hits,
                ports=[f"{Proto(k >> 16).key}/{k & 0xFFFF}" for k in state.ports],
                kinds=[k.value for k in kinds_of(state.kinds)],
                first_seen=state.first_seen,
                last_seen=state.last_seen,
                destinations=state.destinations,
            )
        return evidence


@dataclass(frozen=True)
class Recorded:
    """What ``record_replay`` did: the replay's statistics and what went into the store."""

    stats: ReplayStats
    path: str
    events: int
    bans: int

    def summary(self) -> str:
        return f"recorded {self.events} events and {self.bans} bans in {self.path} (offline)"


def record_replay(
    capture: str, detector: Detector, emit: Emit, *, state_dir: str, settings: Settings
) -> Recorded:
    """``run_replay`` that also records into ``state_dir``'s offline store.

    The store is opened first, so a live store there (refused) stops the replay before it
    starts. What was seen is written even when the capture turns out unreadable half-way.
    """
    # The CLI imports this module for its parser, the daemon included; it never replays.
    from portsentinel.cli.replay import run_replay  # noqa: PLC0415

    store = Store.open(state_dir, offline=True)
    try:
        recorder = ReplayRecorder(store, settings, detector)

        def both(decision: Decision) -> None:
            emit(decision)
            recorder(decision)

        try:
            stats = run_replay(capture, detector, both)
        finally:
            recorder.finish()
        return Recorded(stats, store.path, recorder.events, recorder.bans)
    finally:
        store.close()


# --- Command line -------------------------------------------------------------------------------


def add_parsers(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``why`` and ``history`` on the CLI's verb subparsers."""
    why_parser = verbs.add_parser(
        "why",
        help="the evidence behind a ban or an alert of ADDR (or of the prefix banned with it)",
        description=(
            "Show the current or last ban of ADDR (or of its IPv6 prefix), what each backend "
            "did, and the probes the store recorded from it. Exit 1 when nothing is recorded."
        ),
    )
    why_parser.add_argument("address", metavar="ADDR", help="an address, or ADDR/LEN")
    _add_common(why_parser, "one JSON object")
    why_parser.set_defaults(handler=_cmd_why)

    history_parser = verbs.add_parser(
        "history",
        help="past bans (all states) and alert decisions, newest last",
    )
    history_parser.add_argument(
        "--since",
        default=DEFAULT_SINCE,
        metavar="WHEN",
        help=f"a duration back (30s, 15m, 1h, 7d) or an ISO 8601 time (default {DEFAULT_SINCE})",
    )
    _add_common(history_parser, "JSON Lines, one ban or alert per line")
    history_parser.set_defaults(handler=_cmd_history)


def add_replay_state_option(parser: argparse.ArgumentParser) -> None:
    """``replay --state-dir DIR``: without it a replay keeps everything in memory."""
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        default=None,
        help="also record the decisions and bans into DIR's store, marked offline (records "
        "only, never applied to a firewall); list, why and history then read it",
    )


def _add_common(parser: argparse.ArgumentParser, json_help: str) -> None:
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        default=DEFAULT_STATE_DIR,
        help=f"state directory to read (default {DEFAULT_STATE_DIR})",
    )
    parser.add_argument("--json", action="store_true", help=json_help)


def _cmd_why(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    return why(args.state_dir, args.address, as_json=args.json, now=_wall_clock(), out=out, err=err)


def _cmd_history(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    return history(args.state_dir, args.since, as_json=args.json, now=_wall_clock(), out=out)
