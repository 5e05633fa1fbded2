"""The report's questions, answered from the rollups (``store/rollup.py``) in one snapshot.

``Store.rollup_reader`` folds what waits, opens a read transaction and hands out a
``RollupReader`` that sees the events with ids up to the watermark ``w`` and nothing newer,
whatever the daemon writes meanwhile: the rollups and the few raw events at a window's edges
(the parts of a minute or a day the rollups cannot split) come from the same snapshot, so the
numbers are those of the events up to ``w``, exactly.

Whole minutes and days come from the rollups; the part of the window before the first whole
one and after the last come from ``events`` (index ranges on ``events_time``). Every answer is
small: rows per bucket and kind, per band and bucket, per (protocol, port) at most 131,072,
and the top sources ``LIMIT``-ed in SQL, so memory does not grow with the events.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from portsentinel.store.rollup import BAND_SQL, DAY, MINUTE
from portsentinel.store.schema import host_text_key

_EDGES: Final = "id <= :w AND ((time >= :a AND time < :t_lo) OR (time >= :t_hi AND time < :b))"
_CELLS: Final = f"""WITH cells (bucket, band, src, kind, probes, alerts, blocks, commands) AS (
    SELECT (minute - :m0) / :mstep, band, src, kind, probes, alerts, blocks, commands
    FROM roll_cells WHERE minute >= :m_lo AND minute < :m_hi
    UNION ALL
    SELECT ps_bucket(time), {BAND_SQL}, src, kind, 1, action = 'alert', action = 'block',
        action = 'command'
    FROM events WHERE {_EDGES})"""
SQL_KINDS: Final = (
    f"{_CELLS} SELECT bucket, kind, sum(probes), sum(alerts), sum(blocks) + sum(commands) "
    "FROM cells GROUP BY bucket, kind"
)
SQL_HEAT: Final = (
    f"{_CELLS} SELECT band, bucket, sum(probes), count(DISTINCT src) FROM cells "
    "GROUP BY band, bucket"
)
SQL_SOURCE_COUNT: Final = f"{_CELLS} SELECT count(DISTINCT src) FROM cells"
SQL_TOP_SOURCES: Final = f"""{_CELLS}
    SELECT s.src, s.probes, coalesce(p.ports, 0) AS ports, s.kinds, s.blocks, s.commands,
        s.alerts
    FROM (SELECT src, sum(probes) AS probes, json_group_array(DISTINCT kind) AS kinds,
            sum(blocks) AS blocks, sum(commands) AS commands, sum(alerts) AS alerts
          FROM cells GROUP BY src) AS s
    LEFT JOIN (SELECT src, count(*) AS ports FROM roll_pairs WHERE last >= :a
               GROUP BY src) AS p USING (src)
    ORDER BY s.probes DESC, ports DESC, s.src LIMIT :top"""
SQL_PORTS_ROLLED: Final = (
    "SELECT proto, port, sum(probes), sum(responses) FROM roll_ports "
    "WHERE day >= :m_lo AND day < :m_hi GROUP BY proto, port"
)
SQL_PORTS_EDGES: Final = (
    f"SELECT proto, port, count(*), sum(action <> 'ignored') FROM events WHERE {_EDGES} "
    "GROUP BY proto, port"
)
SQL_PORT_SOURCES: Final = (
    "SELECT proto, port, count(*) FROM roll_pairs WHERE last >= :a AND (proto, port) IN "
    "(SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:keys)) "
    "GROUP BY proto, port"
)
SQL_FIRST: Final = (
    "SELECT time FROM events INDEXED BY events_src_key_time WHERE src_key = :key "
    "AND time >= :a AND time < :b AND id <= :w ORDER BY time LIMIT 1"
)
SQL_LAST: Final = SQL_FIRST.replace("ORDER BY time", "ORDER BY time DESC")
SQL_FIRST_SLOW: Final = (
    "SELECT min(time), max(time) FROM events WHERE src = :src AND time >= :a AND time < :b "
    "AND id <= :w"
)
SQL_AFTER: Final = "SELECT 1 FROM events INDEXED BY events_time WHERE time >= ? AND id <= ? LIMIT 1"
SQL_SPAN: Final = (
    "SELECT (SELECT time FROM events INDEXED BY events_time WHERE id <= :w "
    "ORDER BY time LIMIT 1), (SELECT time FROM events INDEXED BY events_time "
    "WHERE id <= :w ORDER BY time DESC LIMIT 1)"
)


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One of the top sources, from the rollups: its window's totals."""

    src: str
    probes: int
    ports: int
    kinds: tuple[str, ...]
    blocks: int
    commands: int
    alerts: int


def _split(start: float, end: float, width: int) -> tuple[int, int, float, float]:
    """Whole ``width``-second units inside ``[start, end)`` as ``(lo, hi)`` (maybe empty)
    and the raw edges' inner bounds ``t_lo``, ``t_hi``."""
    lo = int(-((-start) // width))
    hi = int(end // width)
    if hi <= lo:
        return 0, 0, end, end  # no whole unit: the raw part is all of [start, end)
    return lo, hi, float(lo * width), float(hi * width)


class RollupReader:
    """The report's queries on one snapshot (see the module docstring)."""

    def __init__(self, conn: sqlite3.Connection, w: int) -> None:
        self._conn = conn
        self.w = w

    def span(self) -> tuple[float, float] | None:
        """(first, last) event time, or None if there is no event."""
        first, last = self._conn.execute(SQL_SPAN, {"w": self.w}).fetchone()
        return None if first is None else (float(first), float(last))

    def events_from(self, end: float) -> bool:
        """Whether an event lies at or after ``end`` (then ``roll_pairs`` cannot split)."""
        return self._conn.execute(SQL_AFTER, (end, self.w)).fetchone() is not None

    def _cells(
        self, start: float, end: float, edges: Sequence[float], bucket: Callable[[float], int]
    ) -> dict[str, object]:
        step = edges[1] - edges[0]
        whole = step >= MINUTE and step % MINUTE == 0 and edges[0] % MINUTE == 0
        m_lo, m_hi, t_lo, t_hi = _split(start, end, MINUTE) if whole else (0, 0, end, end)
        self._conn.create_function("ps_bucket", 1, bucket, deterministic=True)
        return {
            "w": self.w, "a": start, "b": end, "m_lo": m_lo, "m_hi": m_hi, "t_lo": t_lo,
            "t_hi": t_hi, "m0": int(edges[0] // MINUTE) if whole else 0,
            "mstep": int(step // MINUTE) if whole else 1,
        }  # fmt: skip

    def kinds(
        self, start: float, end: float, edges: Sequence[float], bucket: Callable[[float], int]
    ) -> list[tuple[int, str, int, int, int]]:
        """(bucket, kind, probes, alerts, blocks + commands) of the window."""
        params = self._cells(start, end, edges, bucket)
        return list(self._conn.execute(SQL_KINDS, params))

    def heat(
        self, start: float, end: float, edges: Sequence[float], bucket: Callable[[float], int]
    ) -> list[tuple[int, int, int, int]]:
        """(band, bucket, probes, distinct sources) of the window."""
        return list(self._conn.execute(SQL_HEAT, self._cells(start, end, edges, bucket)))

    def source_count(
        self, start: float, end: float, edges: Sequence[float], bucket: Callable[[float], int]
    ) -> int:
        params = self._cells(start, end, edges, bucket)
        return int(self._conn.execute(SQL_SOURCE_COUNT, params).fetchone()[0])

    def top_sources(
        self,
        start: float,
        end: float,
        edges: Sequence[float],
        bucket: Callable[[float], int],
        top: int,
    ) -> list[SourceRow]:
        """The ``top`` sources by probes, then distinct ports, then address (see
        ``events_from``: the distinct ports need no event at or after ``end``)."""
        params = {**self._cells(start, end, edges, bucket), "top": top}
        return [
            SourceRow(src, probes, ports, tuple(json.loads(kinds)), blocks, commands, alerts)
            for src, probes, ports, kinds, blocks, commands, alerts in self._conn.execute(
                SQL_TOP_SOURCES, params
            )
        ]

    def first_last(self, src: str, start: float, end: float) -> tuple[float, float]:
        """A source's first and last event time in the window (index look-ups)."""
        params: dict[str, object] = {"a": start, "b": end, "w": self.w, "src": src}
        try:
            params["key"] = host_text_key(src)[1]
        except ValueError:  # not an address we wrote: no key to look up by
            first, last = self._conn.execute(SQL_FIRST_SLOW, params).fetchone()
            return float(first), float(last)
        first = self._conn.execute(SQL_FIRST, params).fetchone()[0]
        last = self._conn.execute(SQL_LAST, params).fetchone()[0]
        return float(first), float(last)

    def ports(self, start: float, end: float) -> dict[tuple[str, int], list[int]]:
        """(protocol, port) -> [probes, responses] of every port probed in the window."""
        d_lo, d_hi, t_lo, t_hi = _split(start, end, DAY)
        found: dict[tuple[str, int], list[int]] = {}
        for proto, port, probes, responses in self._conn.execute(
            SQL_PORTS_ROLLED, {"m_lo": d_lo, "m_hi": d_hi}
        ):
            if probes:
                found[(proto, port)] = [probes, responses]
        params = {"w": self.w, "a": start, "b": end, "t_lo": t_lo, "t_hi": t_hi}
        for proto, port, probes, responses in self._conn.execute(SQL_PORTS_EDGES, params):
            totals = found.setdefault((proto, port), [0, 0])
            totals[0] += probes
            totals[1] += responses
        return found

    def port_sources(
        self, keys: Sequence[tuple[str, int]], start: float
    ) -> dict[tuple[str, int], int]:
        """Distinct sources of each (protocol, port) since ``start`` (no event at or after
        the end): one pass over ``roll_pairs``, whatever the number of ports asked."""
        found = dict.fromkeys(keys, 0)
        params = {"a": start, "keys": json.dumps(list(keys))}
        for proto, port, count in self._conn.execute(SQL_PORT_SOURCES, params):
            found[(proto, port)] = count
        return found
