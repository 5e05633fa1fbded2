"""The rollups: exact SQL buckets and bands, folding by chunks, purges taken back out."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from portsentinel.report.data import port_band
from portsentinel.store import rollup, schema
from portsentinel.store.sqlite import EventRow, Store

T0 = 1_764_000_000.0


def event(t: float, src: str = "198.18.0.7", port: int = 80, action: str = "alert") -> EventRow:
    return EventRow(t, src, "198.18.0.1", "tcp", port, "SYN", action, "below trigger")


def test_floor_sql_puts_every_edge_where_python_does() -> None:
    conn = sqlite3.connect(":memory:")
    values = [T0, T0 - 1e-6, T0 + 59.999999, 59.99999999999999, 60.0, 0.0, -0.5, -60.0, -61.0]
    values += [k * 60 + d for k in range(-3, 3) for d in (-1e-9, 0.0, 1e-9)]
    values += [T0 + 0.1 * i for i in range(1200)]
    for width in (rollup.MINUTE, rollup.DAY):
        sql = f"SELECT {rollup.floor_sql('?1', width)}"
        for t in values:
            assert conn.execute(sql, (t,)).fetchone()[0] == t // width, (t, width)


def test_band_sql_is_port_band_for_every_port() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE p (port INTEGER)")
    conn.executemany("INSERT INTO p VALUES (?)", [(p,) for p in range(65536)])
    bands = conn.execute(f"SELECT port, {rollup.BAND_SQL} FROM p ORDER BY port").fetchall()
    assert bands == [(p, port_band(p)) for p in range(65536)]


def rows(conn: sqlite3.Connection, table: str) -> list[tuple[object, ...]]:
    columns = "proto, port, day, probes, responses" if table == "roll_ports" else "*"
    return conn.execute(f"SELECT {columns} FROM {table} ORDER BY 1, 2, 3").fetchall()


def test_folding_goes_by_chunks_and_never_twice(tmp_path: Path) -> None:
    with Store.open(str(tmp_path)) as store:
        store.add_events([event(T0 + i, port=i % 3, action="block" if i == 0 else "ignored")
                          for i in range(10)])  # fmt: skip
        conn = store._conn
        assert rollup.behind(conn)
        with schema.transaction(conn):
            assert rollup.fold_chunk(conn, chunk=4) == 4
        assert rollup.watermark(conn) == 4
        assert store.roll_up(chunks=1) == 10 - 4  # the rest fits in one chunk
        assert store.roll_up() == 0
        assert not rollup.behind(conn)
        minute = int(T0 // 60)
        assert rows(conn, "roll_cells") == [(minute, 0, "198.18.0.7", "SYN", 10, 0, 1, 0, 1)]
        assert rows(conn, "roll_pairs") == [
            ("198.18.0.7", "tcp", 0, 4, T0 + 9), ("198.18.0.7", "tcp", 1, 3, T0 + 7),
            ("198.18.0.7", "tcp", 2, 3, T0 + 8),
        ]  # fmt: skip
        day = int(T0 // 86400)
        assert rows(conn, "roll_ports") == [("tcp", 0, day, 4, 1), ("tcp", 1, day, 3, 0),
                                            ("tcp", 2, day, 3, 0)]  # fmt: skip


def test_a_purge_takes_the_oldest_events_and_their_sums_out(tmp_path: Path) -> None:
    with Store.open(str(tmp_path)) as store:
        # Inserted newest first: a purge by id would take the newest ones.
        store.add_events([event(T0 + 100 - i, port=80) for i in range(100)])
        store.roll_up()
        with store._write() as conn:
            assert rollup.purge_batch(conn, T0 + 50, 10) == 10
        left = [e.time for e in store.events_between(0, 2 * T0)]
        assert min(left) == T0 + 11  # T0 + 1 .. T0 + 10 went (T0 + 100 - 99 is the oldest)
        conn = store._conn
        assert conn.execute("SELECT probes, last FROM roll_pairs").fetchone() == (90, T0 + 100)
        assert conn.execute("SELECT sum(probes) FROM roll_cells").fetchone()[0] == 90
        assert store.purge_events(T0 + 1000) == 90
        assert rows(conn, "roll_cells") == rows(conn, "roll_pairs") == []
        assert rows(conn, "roll_ports") == []
        # Every event gone: the next ids start over, and the watermark with them.
        assert rollup.watermark(conn) == 0
        store.add_events([event(T0 + 2000)])
        assert store.roll_up() == 1
        assert conn.execute("SELECT sum(probes) FROM roll_cells").fetchone()[0] == 1


def test_a_purge_leaves_waiting_events_to_the_fold(tmp_path: Path) -> None:
    with Store.open(str(tmp_path)) as store:
        store.add_events([event(T0 + i) for i in range(5)])
        store.roll_up()
        store.add_events([event(T0 - 10 + i) for i in range(5)])  # older, not folded yet
        assert store.purge_events(T0 + 2) == 7
        store.roll_up()
        assert store._conn.execute("SELECT probes FROM roll_pairs").fetchone() == (3,)


@pytest.fixture
def v3_file(tmp_path: Path) -> str:
    """A version 3 store holding events, as the previous release left it."""
    state = str(tmp_path / "state")
    os.makedirs(state)
    raw = sqlite3.connect(os.path.join(state, "portsentinel.db"), isolation_level=None)
    for step in schema.MIGRATIONS[:3]:
        step.apply(raw)
    raw.execute("PRAGMA user_version = 3")
    raw.execute("INSERT INTO meta VALUES ('created_at', '1.0'), ('offline', '0')")
    raw.executemany(
        "INSERT INTO events (time, src, dst, proto, port, kind, action, reason) "
        "VALUES (?, '198.18.0.9', '198.18.0.1', 'udp', ?, 'UDP', 'alert', 'r')",
        [(T0 + i, i) for i in range(120)],
    )
    raw.close()
    return state


def test_a_version_3_store_is_upgraded_then_backfilled_in_chunks(v3_file: str) -> None:
    with Store.open(v3_file) as store:
        assert store.schema_version() == schema.SCHEMA_VERSION == 8
        assert rollup.watermark(store._conn) == 0
        assert rollup.behind(store._conn)
        with schema.transaction(store._conn):
            assert rollup.fold_chunk(store._conn, chunk=50) == 50
    with Store.open(v3_file) as store:  # opening again changes nothing: the step ran once
        assert rollup.watermark(store._conn) == 50
        assert store.roll_up() == 70
        conn = store._conn
        assert conn.execute("SELECT sum(probes), count(*) FROM roll_pairs").fetchone() == (120, 120)
        assert conn.execute("SELECT sum(alerts) FROM roll_cells").fetchone() == (120,)
