"""The report's reader: one snapshot up to the watermark, indexed look-ups, bounded answers.
(That its numbers equal the events' is tests/unit/report/test_aggregate.py.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from portsentinel.store import rollup_read
from portsentinel.store.sqlite import EventRow, Store

T0 = 1_764_000_000.0


def event(t: float, src: str = "198.18.0.7", port: int = 80) -> EventRow:
    return EventRow(t, src, "198.18.0.1", "tcp", port, "SYN", "alert", "below trigger")


def test_the_reader_sees_its_snapshot_not_later_events(tmp_path: Path) -> None:
    with Store.open(str(tmp_path)) as daemon, Store.open(str(tmp_path), offline=None) as cli:
        daemon.add_events([event(T0 + i) for i in range(5)])
        with cli.rollup_reader() as reader:
            assert reader.w == 5
            daemon.add_events([event(T0 + 10), event(T0 + 3600)])  # meanwhile
            assert reader.span() == (T0, T0 + 4)
            assert not reader.events_from(T0 + 5)
            assert reader.ports(T0 - 1e6, T0 + 1e6) == {("tcp", 80): [5, 5]}
            assert reader.first_last("198.18.0.7", T0, T0 + 1e6) == (T0, T0 + 4)
        with cli.rollup_reader() as reader:
            assert reader.w == 7
            assert reader.events_from(T0 + 5)
            assert reader.port_sources([("tcp", 80), ("udp", 80)], T0) == {
                ("tcp", 80): 1, ("udp", 80): 0,
            }  # fmt: skip


def test_a_source_that_is_no_address_is_still_found(tmp_path: Path) -> None:
    with Store.open(str(tmp_path)) as store:
        store._conn.execute(
            "INSERT INTO events (time, src, dst, proto, port, kind, action, reason) VALUES "
            f"({T0}, 'not-an-address', '198.18.0.1', 'tcp', 1, 'SYN', 'alert', 'r')"
        )
        with store.rollup_reader() as reader:
            assert reader.first_last("not-an-address", 0, 2 * T0) == (T0, T0)


def test_split_gives_whole_units_and_raw_edges() -> None:
    assert rollup_read._split(90.0, 400.0, 60) == (2, 6, 120.0, 360.0)
    assert rollup_read._split(120.0, 360.0, 60) == (2, 6, 120.0, 360.0)
    assert rollup_read._split(100.0, 150.0, 60) == (0, 0, 150.0, 150.0)  # none whole: all raw


PLANS = {
    "edges": (rollup_read.SQL_PORTS_EDGES, {"events": "INDEX events_time"}),
    "ports": (rollup_read.SQL_PORTS_ROLLED, {"roll_ports": "PRIMARY KEY"}),
    "first": (rollup_read.SQL_FIRST, {"events": "INDEX events_src_key_time"}),
    "last": (rollup_read.SQL_LAST, {"events": "INDEX events_src_key_time"}),
    "after": (rollup_read.SQL_AFTER, {"events": "INDEX events_time"}),
    "span": (rollup_read.SQL_SPAN, {"events": "INDEX events_time"}),
    "cells": (rollup_read.SQL_HEAT, {"roll_cells": "PRIMARY KEY", "events": "INDEX events_time"}),
}


@pytest.mark.parametrize("name", PLANS)
def test_the_readers_queries_use_their_indexes(tmp_path: Path, name: str) -> None:
    sql, expected = PLANS[name]
    with Store.open(str(tmp_path)) as store:
        store._conn.create_function("ps_bucket", 1, lambda t: 0)
        names = re.findall(r":(\w+)", sql)
        params: Any = dict.fromkeys(names, 1) if names else (1,) * sql.count("?")
        plan = " | ".join(
            row[3] for row in store._conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        )
    for table, index in expected.items():
        assert re.search(rf"(SCAN|SEARCH) {table} USING .*{index}", plan), plan
    assert not re.search(r"SCAN events(?! USING)", plan), plan  # never all the events
