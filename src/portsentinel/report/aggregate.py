"""The report from the store's rollups: the same ``Report`` as ``data.build_report``, with the
events summed in SQLite (``store/rollup_read.py``) instead of read into Python.

``build_report`` stays the definition of every number (and its tests the reference): this
module asks the rollups the same questions and gets the same answers, in memory that does not
grow with the events. It needs no event at or after the window's end (the distinct counts of
``roll_pairs`` rely on it): ``RollupReader.events_from`` says so, and the caller takes the
events path then (a live store whose clock went back).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from portsentinel.model import Action
from portsentinel.report.data import (
    DEFAULT_BAN_ROWS,
    DEFAULT_BUCKETS,
    DEFAULT_TOP,
    PORT_BANDS,
    HeatMap,
    KindSeries,
    PortStats,
    Report,
    SourceStats,
    Summary,
    ban_bar,
    ban_covering,
    ordered_kinds,
    overlaps,
    state_at,
)
from portsentinel.report.scale import bucket_edges, bucket_index
from portsentinel.store.records import BanRecord
from portsentinel.store.rollup_read import RollupReader, SourceRow


def report_from_rollups(
    reader: RollupReader,
    bans: Sequence[BanRecord],
    start: float,
    end: float,
    *,
    offline: bool = False,
    top: int = DEFAULT_TOP,
    ban_rows: int = DEFAULT_BAN_ROWS,
    max_buckets: int = DEFAULT_BUCKETS,
) -> Report:
    """``data.build_report`` of the reader's events (see the module docstring)."""
    overlapping = sorted(
        (b for b in bans if overlaps(b, start, end)), key=lambda b: (b.created, b.id)
    )
    edges = bucket_edges(start, end, max_buckets)
    bucket = partial(bucket_index, edges)
    bars = [ban_bar(b, end) for b in overlapping]
    timeline = bars[-ban_rows:] if ban_rows > 0 else []
    in_force = sorted((bar for bar in bars if bar.ended is None), key=lambda b: -b.created)
    kinds, probes, alerts, blocks = _kinds(reader.kinds(start, end, edges, bucket), edges)
    ports = reader.ports(start, end)
    summary = Summary(
        probes=probes,
        sources=reader.source_count(start, end, edges, bucket),
        ports=len(ports),
        bans=len(overlapping),
        new_bans=sum(1 for b in overlapping if b.created >= start),
        in_force=len(in_force),
        offline=offline,
        blocks=blocks,
        alerts=alerts,
    )
    sources = [
        _source(reader, row, overlapping, start, end)
        for row in reader.top_sources(start, end, edges, bucket, top)
    ]
    return Report(
        start=start,
        end=end,
        summary=summary,
        kinds=kinds,
        sources=tuple(sources),
        heat=_heat(reader.heat(start, end, edges, bucket), edges),
        ports=tuple(_top_ports(reader, ports, start, top)),
        timeline=tuple(timeline),
        timeline_hidden=len(bars) - len(timeline),
        in_force=tuple(in_force),
    )


def _kinds(
    rows: list[tuple[int, str, int, int, int]], edges: Sequence[float]
) -> tuple[KindSeries, int, int, int]:
    """The series, and the window's probes, alerts and blocks."""
    per_kind: dict[str, list[int]] = {}
    probes = alerts = blocks = 0
    for column, kind, count, alerted, blocked in rows:
        per_kind.setdefault(kind, [0] * (len(edges) - 1))[column] += count
        probes, alerts, blocks = probes + count, alerts + alerted, blocks + blocked
    order = ordered_kinds(per_kind)
    series = KindSeries(tuple(edges), order, tuple(tuple(per_kind[k]) for k in order))
    return series, probes, alerts, blocks


def _heat(rows: list[tuple[int, int, int, int]], edges: Sequence[float]) -> HeatMap:
    """As ``data.heat_map``: rows up to the highest band probed (all of them if none)."""
    buckets = len(edges) - 1
    probes = [[0] * buckets for _ in PORT_BANDS]
    sources = [[0] * buckets for _ in PORT_BANDS]
    for band, column, count, distinct in rows:
        probes[band][column] = count
        sources[band][column] = distinct
    used = [band for band, row in enumerate(probes) if any(row)]
    rows_shown = used[-1] + 1 if used else len(PORT_BANDS)
    return HeatMap(
        tuple(edges),
        PORT_BANDS[:rows_shown],
        tuple(tuple(row) for row in probes[:rows_shown]),
        tuple(tuple(row) for row in sources[:rows_shown]),
    )


def _source(
    reader: RollupReader, row: SourceRow, bans: Sequence[BanRecord], start: float, end: float
) -> SourceStats:
    first, last = reader.first_last(row.src, start, end)
    if row.blocks:
        action = Action.BLOCK.value
    elif row.commands:
        action = Action.COMMAND.value
    elif row.alerts:
        action = Action.ALERT.value
    else:
        action = Action.IGNORED.value
    ban = ban_covering(row.src, bans)
    return SourceStats(
        address=row.src,
        probes=row.probes,
        ports=row.ports,
        kinds=ordered_kinds(row.kinds),
        first=first,
        last=last,
        action=action,
        ban_state=None if ban is None else state_at(ban, end),
    )


def _top_ports(
    reader: RollupReader, ports: dict[tuple[str, int], list[int]], start: float, top: int
) -> list[PortStats]:
    """As ``data.top_ports``: by probes, then sources, then port order. Distinct sources are
    looked up for the ports that can still rank: those with at least the ``top``-th probes."""
    if top <= 0 or not ports:
        return []
    counts = sorted((totals[0] for totals in ports.values()), reverse=True)
    floor = counts[min(top, len(counts)) - 1]
    candidates = [key for key, totals in ports.items() if totals[0] >= floor]
    sources = reader.port_sources(candidates, start)
    ranked = sorted(candidates, key=lambda k: (-ports[k][0], -sources[k], k[1], k[0]))
    return [
        PortStats(proto, port, ports[(proto, port)][0], sources[(proto, port)],
                  ports[(proto, port)][1])
        for proto, port in ranked[:top]
    ]  # fmt: skip
