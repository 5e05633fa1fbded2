"""Rollups: the events summed into small tables, so that a report over millions of events
reads thousands of rows (schema version 4; the report's reader is ``store/rollup_read.py``).

Three tables, each keyed so that the report's questions are range scans:

- ``roll_cells``: per minute, port band, source and scan kind: probes, alerts, blocks,
  commands, responses (anything but ``ignored``). Probes over time, the heat map (distinct
  sources per cell: a source is one row per cell), the top sources' probes and kinds.
- ``roll_pairs``: per (source, protocol, port): probes and the ``last`` time. A pair has an
  event in ``[a, b)`` exactly when ``last >= a``, provided no event lies at or after ``b``
  (the reader checks that): distinct ports of a source, distinct sources of a port.
- ``roll_ports``: per day and (protocol, port): probes and responses.

Each is keyed so that a chunk of new events lands on a few neighbouring pages (the current
minute, the current day, a scanner's own pairs), not all over the file: a key or an index
led by the port would have a chunk rewrite most of its pages, and the fold would slow down
as the store grows.

They are NOT kept by the insert path: ``add_events`` costs what it did. ``roll_up`` folds the
events after the ``rolled_to`` watermark (``roll_state``) into them, a bounded chunk of ids per
transaction, in the same transaction as the watermark: a crash leaves them consistent, and a
repeat folds nothing twice. The daemon's worker calls it on a timer; the report catches up
what is left before it reads. A version 3 store upgrades with empty rollups and watermark 0:
its events are folded by the same chunks (the backfill), never in one long transaction.

``purge_events`` (``forget``) takes the purged events' sums back out in the same transaction
as the delete, oldest events first, so ``last`` stays right: what remains of a pair is never
older than what went.
"""

from __future__ import annotations

import sqlite3
from typing import Final

ROLL_CHUNK: Final = 50_000  # events folded per transaction
ROLL_CACHE_KIB: Final = 16_384  # page cache while folding (then the connection's own again)
MINUTE: Final = 60
DAY: Final = 86_400


def floor_sql(column: str, width: int) -> str:
    """SQL for the exact ``floor(column / width)`` of a REAL: the quotient, corrected by
    comparing whole multiples (exact in a double), so the bucket edge is where Python's
    ``//`` puts it."""
    q = f"CAST({column} / {width} AS INTEGER)"
    return f"({q} - ({q} * {width} > {column}) + (({q} + 1) * {width} <= {column}))"


def band_sql(column: str) -> str:
    """SQL for ``report.data.port_band``: the index of the doubling port band."""
    whens = " ".join(f"WHEN {column} < {1 << (band + 4)} THEN {band}" for band in range(12))
    return f"(CASE {whens} ELSE 12 END)"


# Per event: probes, alerts, blocks, commands, responses.
COUNTS_SQL: Final = "1, action = 'alert', action = 'block', action = 'command', action <> 'ignored'"
MINUTE_SQL: Final = floor_sql("time", MINUTE)
DAY_SQL: Final = floor_sql("time", DAY)
BAND_SQL: Final = band_sql("port")

# --- Schema version 4 ----------------------------------------------------------------------

V4: Final[tuple[str, ...]] = (
    """CREATE TABLE roll_cells (
        minute INTEGER NOT NULL,
        band INTEGER NOT NULL,
        src TEXT NOT NULL,
        kind TEXT NOT NULL,
        probes INTEGER NOT NULL,
        alerts INTEGER NOT NULL,
        blocks INTEGER NOT NULL,
        commands INTEGER NOT NULL,
        responses INTEGER NOT NULL,
        PRIMARY KEY (minute, band, src, kind)
    ) WITHOUT ROWID""",
    """CREATE TABLE roll_pairs (
        src TEXT NOT NULL,
        proto TEXT NOT NULL,
        port INTEGER NOT NULL,
        probes INTEGER NOT NULL,
        last REAL NOT NULL,
        PRIMARY KEY (src, proto, port)
    ) WITHOUT ROWID""",
    """CREATE TABLE roll_ports (
        proto TEXT NOT NULL,
        port INTEGER NOT NULL,
        day INTEGER NOT NULL,
        probes INTEGER NOT NULL,
        responses INTEGER NOT NULL,
        PRIMARY KEY (day, proto, port)
    ) WITHOUT ROWID""",
    "CREATE TABLE roll_state (id INTEGER PRIMARY KEY CHECK (id = 1), rolled_to INTEGER NOT NULL)",
    "INSERT INTO roll_state (id, rolled_to) VALUES (1, 0)",
)

# --- Folding events in ---------------------------------------------------------------------

_RANGE: Final = "FROM events WHERE id > :lo AND id <= :hi"
_FOLD: Final[tuple[str, ...]] = (
    f"""INSERT INTO roll_cells
        SELECT {MINUTE_SQL} AS m, {BAND_SQL} AS b, src, kind, count(*), sum(action = 'alert'),
            sum(action = 'block'), sum(action = 'command'), sum(action <> 'ignored')
        {_RANGE} GROUP BY m, b, src, kind
        ON CONFLICT DO UPDATE SET probes = probes + excluded.probes,
            alerts = alerts + excluded.alerts, blocks = blocks + excluded.blocks,
            commands = commands + excluded.commands, responses = responses + excluded.responses""",
    f"""INSERT INTO roll_pairs
        SELECT src, proto, port, count(*), max(time) {_RANGE} GROUP BY src, proto, port
        ON CONFLICT DO UPDATE SET probes = probes + excluded.probes,
            last = max(last, excluded.last)""",
    f"""INSERT INTO roll_ports
        SELECT proto, port, {DAY_SQL} AS d, count(*), sum(action <> 'ignored')
        {_RANGE} GROUP BY proto, port, d
        ON CONFLICT DO UPDATE SET probes = probes + excluded.probes,
            responses = responses + excluded.responses""",
)
_CHUNK_END: Final = "SELECT max(id) FROM (SELECT id FROM events WHERE id > ? ORDER BY id LIMIT ?)"


def watermark(conn: sqlite3.Connection) -> int:
    """The last event id folded into the rollups."""
    return int(conn.execute("SELECT rolled_to FROM roll_state").fetchone()[0])


def fold_chunk(conn: sqlite3.Connection, chunk: int = ROLL_CHUNK) -> int:
    """Fold the next ``chunk`` event ids after the watermark (inside the caller's write
    transaction); returns how many events were folded (0: up to date)."""
    lo = watermark(conn)
    hi = conn.execute(_CHUNK_END, (lo, chunk)).fetchone()[0]
    if hi is None:
        return 0
    params = {"lo": lo, "hi": hi}
    for statement in _FOLD:
        conn.execute(statement, params)
    conn.execute("UPDATE roll_state SET rolled_to = ?", (hi,))
    return int(conn.execute(f"SELECT count(*) {_RANGE}", params).fetchone()[0])


def behind(conn: sqlite3.Connection) -> bool:
    """Whether events wait to be folded."""
    w = watermark(conn)
    return conn.execute("SELECT 1 FROM events WHERE id > ? LIMIT 1", (w,)).fetchone() is not None


# --- Taking purged events back out ---------------------------------------------------------

_PURGED: Final = "temp.purged"
_UNFOLD: Final[tuple[str, ...]] = (
    "CREATE TEMP TABLE IF NOT EXISTS purged (id INTEGER PRIMARY KEY)",
    f"DELETE FROM {_PURGED}",
    "CREATE TEMP TABLE IF NOT EXISTS gone_cells (minute, band, src, kind, probes, alerts, "
    "blocks, commands, responses, PRIMARY KEY (minute, band, src, kind))",
    "CREATE TEMP TABLE IF NOT EXISTS gone_pairs (src, proto, port, probes, "
    "PRIMARY KEY (src, proto, port))",
    "CREATE TEMP TABLE IF NOT EXISTS gone_ports (proto, port, day, probes, responses, "
    "PRIMARY KEY (day, proto, port))",
    "DELETE FROM temp.gone_cells",
    "DELETE FROM temp.gone_pairs",
    "DELETE FROM temp.gone_ports",
)
_GONE: Final = f"FROM events WHERE id IN (SELECT id FROM {_PURGED}) AND id <= :w"
_SUBTRACT: Final[tuple[str, ...]] = (
    f"""INSERT INTO temp.gone_cells SELECT {MINUTE_SQL} AS m, {BAND_SQL} AS b, src, kind,
        count(*), sum(action = 'alert'), sum(action = 'block'), sum(action = 'command'),
        sum(action <> 'ignored') {_GONE} GROUP BY m, b, src, kind""",
    f"INSERT INTO temp.gone_pairs SELECT src, proto, port, count(*) {_GONE} "
    "GROUP BY src, proto, port",
    f"INSERT INTO temp.gone_ports SELECT proto, port, {DAY_SQL} AS d, count(*), "
    f"sum(action <> 'ignored') {_GONE} GROUP BY proto, port, d",
    """UPDATE roll_cells SET probes = roll_cells.probes - g.probes,
        alerts = roll_cells.alerts - g.alerts, blocks = roll_cells.blocks - g.blocks,
        commands = roll_cells.commands - g.commands,
        responses = roll_cells.responses - g.responses
        FROM temp.gone_cells AS g WHERE roll_cells.minute = g.minute
        AND roll_cells.band = g.band AND roll_cells.src = g.src AND roll_cells.kind = g.kind""",
    """DELETE FROM roll_cells WHERE (minute, band, src, kind) IN
        (SELECT minute, band, src, kind FROM temp.gone_cells) AND probes <= 0""",
    """UPDATE roll_pairs SET probes = roll_pairs.probes - g.probes FROM temp.gone_pairs AS g
        WHERE roll_pairs.src = g.src AND roll_pairs.proto = g.proto
        AND roll_pairs.port = g.port""",
    """DELETE FROM roll_pairs WHERE (src, proto, port) IN
        (SELECT src, proto, port FROM temp.gone_pairs) AND probes <= 0""",
    """UPDATE roll_ports SET probes = roll_ports.probes - g.probes,
        responses = roll_ports.responses - g.responses FROM temp.gone_ports AS g
        WHERE roll_ports.proto = g.proto AND roll_ports.port = g.port
        AND roll_ports.day = g.day""",
    """DELETE FROM roll_ports WHERE (day, proto, port) IN
        (SELECT day, proto, port FROM temp.gone_ports) AND probes <= 0""",
)
# Oldest first (``events_time``): what remains of a pair is never older than what went.
SQL_OLDEST: Final = "SELECT id FROM events WHERE time < ? ORDER BY time LIMIT ?"
_PICK: Final = f"INSERT INTO {_PURGED} {SQL_OLDEST}"


def purge_batch(conn: sqlite3.Connection, before: float, batch: int) -> int:
    """Delete up to ``batch`` of the oldest events older than ``before`` and take the folded
    ones back out of the rollups (inside the caller's write transaction); how many went."""
    for statement in _UNFOLD:
        conn.execute(statement)
    conn.execute(_PICK, (before, batch))
    w = watermark(conn)
    for statement in _SUBTRACT:
        conn.execute(statement, {"w": w})
    deleted = conn.execute(f"DELETE FROM events WHERE id IN (SELECT id FROM {_PURGED})").rowcount
    # Ids are max + 1: with the newest events gone, the next ones could reuse folded ids.
    newest = conn.execute("SELECT max(id) FROM events").fetchone()[0] or 0
    if newest < w:
        conn.execute("UPDATE roll_state SET rolled_to = ?", (newest,))
    return int(deleted)
