"""What the report shows, computed from store records: pure functions, no I/O, no clock.

``build_report`` takes the events and bans of a window (as ``Store.events_between`` and
``Store.bans_between`` return them) and reduces them to small, bounded tables: probes per time
bucket and scan kind, the top sources, a port-band x time heat map, the ban timeline and the
bans in force at the window's end. However many records the store holds, the page gets at most
``max_buckets`` columns, ``top`` sources and ``ban_rows`` bans, so it stays quick to draw.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final

from portsentinel.model import Action, ScanKind
from portsentinel.report.scale import HOUR, bucket_edges, bucket_index
from portsentinel.store.records import BanRecord, BanState, EventRow

DEFAULT_TOP: Final = 15
DEFAULT_BAN_ROWS: Final = 40
DEFAULT_BUCKETS: Final = 60

# Strongest response first wins when a source got several: a source that was blocked once is
# a blocked source, whatever its later probes (``ignored``: already blocked) say.
ACTION_RANK: Final = {
    Action.IGNORED.value: 0,
    Action.ALERT.value: 1,
    Action.COMMAND.value: 2,
    Action.BLOCK.value: 3,
}
KIND_ORDER: Final = tuple(kind.value for kind in ScanKind)

# Port bands that double in width: the heat map's rows. Low ports (where services and most
# scans live) get fine rows, the ephemeral range one coarse row; 13 rows cover 0-65535.
PORT_BANDS: Final[tuple[tuple[int, int], ...]] = (
    (0, 15),
    *((1 << bits, (1 << (bits + 1)) - 1) for bits in range(4, 16)),
)

_LIVE: Final = (BanState.PENDING, BanState.ACTIVE)


@dataclass(frozen=True, slots=True)
class KindSeries:
    """Probes per time bucket, one row per scan kind seen (in ``ScanKind`` order)."""

    edges: tuple[float, ...]  # len(buckets) + 1, equally spaced
    kinds: tuple[str, ...]
    counts: tuple[tuple[int, ...], ...]  # counts[kind][bucket]

    def totals(self) -> tuple[int, ...]:
        """Probes per bucket, all kinds together."""
        return tuple(sum(column) for column in zip(*self.counts, strict=True)) or tuple(
            0 for _ in self.edges[1:]
        )


@dataclass(frozen=True, slots=True)
class SourceStats:
    """One source's activity in the window, and its ban (state at the window's end)."""

    address: str
    probes: int
    ports: int  # distinct (protocol, port) pairs
    kinds: tuple[str, ...]
    first: float
    last: float
    action: str  # the strongest action any of its probes got
    ban_state: str | None  # the newest ban covering it, or None


@dataclass(frozen=True, slots=True)
class HeatMap:
    """Probes (and distinct sources) per port band and time bucket."""

    edges: tuple[float, ...]
    bands: tuple[tuple[int, int], ...]  # lowest ports first
    probes: tuple[tuple[int, ...], ...]  # probes[band][bucket]
    sources: tuple[tuple[int, ...], ...]

    @property
    def peak(self) -> int:
        return max((max(row) for row in self.probes), default=0)


@dataclass(frozen=True, slots=True)
class BanBar:
    """One ban's life: from ``created`` to ``ended`` (None: still in force or permanent)."""

    ban_id: int
    target: str
    created: float
    ended: float | None
    expires: float | None
    state: str  # the state at the window's end (a live ban past its expiry is 'expired')
    reason: str
    offence: int
    ports: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PortStats:
    """One (protocol, port) of the window: probes to it, distinct sources, the decisions that
    alerted or blocked (a source's first response) among them."""

    proto: str
    port: int
    probes: int
    sources: int
    responses: int


@dataclass(frozen=True, slots=True)
class Summary:
    probes: int
    sources: int
    ports: int
    bans: int  # bans whose life overlaps the window
    new_bans: int  # created within it
    in_force: int  # in force at its end
    offline: bool
    blocks: int = 0  # decisions that blocked (a source's first block, or a command)
    alerts: int = 0  # decisions that only alerted (BLOCK_x=0): logged, never blocked


@dataclass(frozen=True, slots=True)
class Report:
    start: float
    end: float
    summary: Summary
    kinds: KindSeries
    sources: tuple[SourceStats, ...]
    heat: HeatMap
    ports: tuple[PortStats, ...]  # the most probed first
    timeline: tuple[BanBar, ...]  # oldest first
    timeline_hidden: int  # older bans left out of the timeline
    in_force: tuple[BanBar, ...]  # newest first


# --- The window ----------------------------------------------------------------------------


def record_span(
    events: Iterable[EventRow], bans: Iterable[BanRecord]
) -> tuple[float, float] | None:
    """(first, last) time any record mentions, or None for an empty store."""
    times = [e.time for e in events]
    return span_of((min(times), max(times)) if times else None, bans)


def span_of(
    events: tuple[float, float] | None, bans: Iterable[BanRecord]
) -> tuple[float, float] | None:
    """``record_span`` from the events' (first, last) time and the bans."""
    times = [] if events is None else list(events)
    for ban in bans:
        times.append(ban.created)
        if ban.lifted_at is not None:
            times.append(ban.lifted_at)
    return (min(times), max(times)) if times else None


def choose_window(
    span: tuple[float, float] | None, since: float | None, now: float, *, follow_records: bool
) -> tuple[float, float]:
    """The report's ``[start, end)``.

    A live store's window ends ``now``. An offline store (a replay's) holds a capture's own
    times, maybe weeks old: its window ends just after its last record and never starts
    before its first, so the plots show the capture and not a day of emptiness. ``since``
    None means everything the store holds.
    """
    if follow_records and span is not None:
        end = math.nextafter(span[1], math.inf)
        start = span[0] if since is None else max(span[0], end - since)
        return start, end
    if since is not None:
        return now - since, now
    start = span[0] if span is not None and span[0] < now else now - HOUR
    return start, now


# --- The report ----------------------------------------------------------------------------


def build_report(
    events: Sequence[EventRow],
    bans: Sequence[BanRecord],
    start: float,
    end: float,
    *,
    offline: bool = False,
    top: int = DEFAULT_TOP,
    ban_rows: int = DEFAULT_BAN_ROWS,
    max_buckets: int = DEFAULT_BUCKETS,
) -> Report:
    """Everything the page shows, for records within ``[start, end)`` (others are skipped)."""
    inside = [e for e in events if start <= e.time < end]
    overlapping = sorted(
        (b for b in bans if overlaps(b, start, end)), key=lambda b: (b.created, b.id)
    )
    edges = bucket_edges(start, end, max_buckets)
    bars = [ban_bar(b, end) for b in overlapping]
    sources = top_sources(inside, overlapping, end, top)
    timeline = bars[-ban_rows:] if ban_rows > 0 else []
    in_force = sorted((bar for bar in bars if bar.ended is None), key=lambda b: -b.created)
    summary = Summary(
        probes=len(inside),
        sources=len({e.src for e in inside}),
        ports=len({(e.proto, e.port) for e in inside}),
        bans=len(overlapping),
        new_bans=sum(1 for b in overlapping if b.created >= start),
        in_force=len(in_force),
        offline=offline,
        blocks=sum(1 for e in inside if e.action in (Action.BLOCK.value, Action.COMMAND.value)),
        alerts=sum(1 for e in inside if e.action == Action.ALERT.value),
    )
    return Report(
        start=start,
        end=end,
        summary=summary,
        kinds=kind_series(inside, edges),
        sources=tuple(sources),
        heat=heat_map(inside, edges),
        ports=tuple(top_ports(inside, top)),
        timeline=tuple(timeline),
        timeline_hidden=len(bars) - len(timeline),
        in_force=tuple(in_force),
    )


FLEET: Final = "fleet"  # the state shown for a fleet decision applied here
PUSHED_NOTE: Final = " (pushed to the fleet)"


def with_fleet(
    report: Report, decisions: Iterable[tuple[int, str, str, str, float]], pushed: Iterable[int]
) -> Report:
    """The report with the fleet marked: the fleet's decisions this host applied at the
    window's end, ``(id, address, origin, scenario, until)``, in the bans in force (state
    ``fleet``, reason ``fleet: ORIGIN SCENARIO``), and the reason of each local ban whose id is
    in ``pushed`` (it went to the fleet) noted so."""
    sent = set(pushed)
    local = tuple(
        replace(bar, reason=bar.reason + PUSHED_NOTE) if bar.ban_id in sent else bar
        for bar in report.in_force
    )
    fleet = [
        BanBar(ban_id=-ident, target=address, created=report.end, ended=None, expires=until,
               state=FLEET, reason=f"fleet: {origin} {scenario}", offence=0, ports=())
        for ident, address, origin, scenario, until in decisions
        if until > report.end
    ]  # fmt: skip
    fleet.sort(key=lambda b: (b.expires or 0.0, b.target), reverse=True)
    summary = replace(report.summary, in_force=report.summary.in_force + len(fleet))
    return replace(report, in_force=local + tuple(fleet), summary=summary)


def kind_series(events: Iterable[EventRow], edges: Sequence[float]) -> KindSeries:
    """Probes per bucket and kind; kinds unknown to ``ScanKind`` come last, by name."""
    buckets = len(edges) - 1
    per_kind: dict[str, list[int]] = {}
    for e in events:
        row = per_kind.get(e.kind)
        if row is None:
            row = per_kind[e.kind] = [0] * buckets
        row[bucket_index(edges, e.time)] += 1
    order = ordered_kinds(per_kind)
    return KindSeries(tuple(edges), tuple(order), tuple(tuple(per_kind[k]) for k in order))


def ordered_kinds(kinds: Iterable[str]) -> tuple[str, ...]:
    """Kinds in ``ScanKind`` order; names it does not know (a newer store) last, sorted."""
    seen = set(kinds)
    return tuple(k for k in KIND_ORDER if k in seen) + tuple(sorted(seen - set(KIND_ORDER)))


class _Tally:
    """One source's running totals while events are walked (mutable, internal)."""

    __slots__ = ("action", "first", "kinds", "last", "ports", "probes")

    def __init__(self, t: float) -> None:
        self.probes = 0
        self.ports: set[tuple[str, int]] = set()
        self.kinds: set[str] = set()
        self.first = t
        self.last = t
        self.action = -1


def top_sources(
    events: Iterable[EventRow], bans: Sequence[BanRecord], at: float, top: int
) -> list[SourceStats]:
    """The ``top`` sources by probes (then distinct ports, then address), with their bans."""
    tallies: dict[str, _Tally] = {}
    for e in events:
        tally = tallies.get(e.src)
        if tally is None:
            tally = tallies[e.src] = _Tally(e.time)
        tally.probes += 1
        tally.ports.add((e.proto, e.port))
        tally.kinds.add(e.kind)
        tally.first = min(tally.first, e.time)
        tally.last = max(tally.last, e.time)
        tally.action = max(tally.action, ACTION_RANK.get(e.action, 0))
    ranked = sorted(tallies.items(), key=lambda kv: (-kv[1].probes, -len(kv[1].ports), kv[0]))
    names = {rank: action for action, rank in ACTION_RANK.items()}
    result = []
    for address, tally in ranked[:top]:
        ban = ban_covering(address, bans)
        result.append(
            SourceStats(
                address=address,
                probes=tally.probes,
                ports=len(tally.ports),
                kinds=ordered_kinds(tally.kinds),
                first=tally.first,
                last=tally.last,
                action=names.get(tally.action, Action.IGNORED.value),
                ban_state=None if ban is None else state_at(ban, at),
            )
        )
    return result


def top_ports(events: Iterable[EventRow], top: int) -> list[PortStats]:
    """The ``top`` (protocol, port) pairs by probes (then by sources, then in port order)."""
    probes: dict[tuple[str, int], int] = {}
    sources: dict[tuple[str, int], set[str]] = {}
    responses: dict[tuple[str, int], int] = {}
    for e in events:
        key = (e.proto, e.port)
        probes[key] = probes.get(key, 0) + 1
        sources.setdefault(key, set()).add(e.src)
        if e.action != Action.IGNORED.value:
            responses[key] = responses.get(key, 0) + 1
    ranked = sorted(probes, key=lambda k: (-probes[k], -len(sources[k]), k[1], k[0]))
    return [
        PortStats(proto, port, probes[(proto, port)], len(sources[(proto, port)]),
                  responses.get((proto, port), 0))
        for proto, port in ranked[:top]
    ]  # fmt: skip


def heat_map(events: Iterable[EventRow], edges: Sequence[float]) -> HeatMap:
    """Probes and distinct sources per port band (rows) and time bucket (columns). Rows stop
    at the highest band any probe reached: advanced modes watch ports below 1024 and the
    ephemeral bands above stay empty (an empty window keeps every row)."""
    buckets = len(edges) - 1
    probes = [[0] * buckets for _ in PORT_BANDS]
    sources: list[list[set[str]]] = [[set() for _ in range(buckets)] for _ in PORT_BANDS]
    for e in events:
        band = port_band(e.port)
        column = bucket_index(edges, e.time)
        probes[band][column] += 1
        sources[band][column].add(e.src)
    used = [band for band, row in enumerate(probes) if any(row)]
    rows = used[-1] + 1 if used else len(PORT_BANDS)
    return HeatMap(
        tuple(edges),
        PORT_BANDS[:rows],
        tuple(tuple(row) for row in probes[:rows]),
        tuple(tuple(len(cell) for cell in row) for row in sources[:rows]),
    )


def port_band(port: int) -> int:
    """The index in ``PORT_BANDS`` of the band holding ``port`` (out-of-range ports clamp)."""
    return max(min(port, 65535).bit_length() - 4, 0)


# --- Bans ----------------------------------------------------------------------------------


def state_at(ban: BanRecord, at: float) -> str:
    """The ban's state as of ``at``: a live ban whose expiry time has come reads 'expired'
    (a stopped daemon, or a replay's records, never lifted it, but it is no longer in force).
    """
    if ban.state in _LIVE and ban.expires is not None and ban.expires <= at:
        return BanState.EXPIRED.value
    return ban.state.value


def life_end(ban: BanRecord, at: float) -> float | None:
    """When the ban stopped being in force, as of ``at``; None while it still is."""
    if ban.state not in _LIVE:
        return ban.lifted_at if ban.lifted_at is not None else ban.created
    if ban.expires is not None and ban.expires <= at:
        return ban.expires
    return None


def ban_bar(ban: BanRecord, at: float) -> BanBar:
    ports = ban.evidence.get("ports", ())
    return BanBar(
        ban_id=ban.id,
        target=ban.target,
        created=ban.created,
        ended=life_end(ban, at),
        expires=ban.expires,
        state=state_at(ban, at),
        reason=ban.reason,
        offence=ban.offence,
        ports=tuple(str(p) for p in ports) if isinstance(ports, list | tuple) else (),
    )


def ban_covering(address: str, bans: Sequence[BanRecord]) -> BanRecord | None:
    """The newest ban whose network holds ``address`` (host bans and prefix bans alike)."""
    try:
        host = ipaddress.ip_address(address)
    except ValueError:
        return None
    found = None
    for ban in bans:
        if ban.target == address or _holds(ban, host):
            found = ban if found is None or ban.created >= found.created else found
    return found


def _holds(ban: BanRecord, host: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if "/" not in ban.target:
        return False
    try:
        return host in ipaddress.ip_network(ban.target, strict=False)
    except ValueError:
        return False


def overlaps(ban: BanRecord, start: float, end: float) -> bool:
    if ban.created >= end:
        return False
    ended = life_end(ban, end)
    return ended is None or ended >= start
