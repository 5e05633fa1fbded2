"""The report from the rollups equals ``build_report`` of the events, number for number.

Real SQLite stores, random events across minute and day edges (sources that come back,
ports in every band, every action, unknown kinds), windows of every shape: everything,
windows starting and ending mid-minute and mid-day, short ones (buckets under a minute, all
raw events), after purges and with events waiting to be folded.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from portsentinel.report.aggregate import report_from_rollups
from portsentinel.report.data import build_report
from portsentinel.store.records import EventRow
from portsentinel.store.sqlite import NewBan, Store

T0 = 1_764_000_000.0 - 1234.567  # not on a minute's or a day's edge
DAY = 86400.0
ACTIONS = ("ignored", "ignored", "ignored", "alert", "block", "command", "weird")
KINDS = ("SYN", "FIN", "UDP", "XMAS", "NEWKIND")


def random_events(rng: random.Random, count: int, span: float) -> list[EventRow]:
    rows = []
    for _ in range(count):
        kind = rng.choice(KINDS)
        proto = "udp" if kind == "UDP" else "tcp"
        src = rng.choice(
            [f"198.18.0.{rng.randrange(1, 30)}", f"fd00:5e::{rng.randrange(1, 9):x}", "198.18.9.9"]
        )
        port = rng.choice([rng.randrange(0, 1024), rng.randrange(0, 65536), 22, 80, 65535])
        t = T0 + rng.random() * span
        if rng.random() < 0.1:
            t = T0 + round(rng.random() * span / 60) * 60  # exactly on a minute's edge
        rows.append(EventRow(t, src, "198.18.0.1", proto, port, kind, rng.choice(ACTIONS),
                             "scan trigger reached", "atcp", "scan_trigger", 1, 1))  # fmt: skip
    return rows


def fill(state: Path, rows: list[EventRow], bans: int = 5) -> None:
    with Store.open(str(state)) as store:
        for i in range(0, len(rows), 97):
            store.add_events(rows[i : i + 97])
        news = [
            NewBan(f"198.18.0.{i + 1}", None, T0 + i * 3000.0, T0 + i * 3000.0 + 3600,
                   "SYN scan", "atcp", {"ports": ["tcp/80"]}, 1)
            for i in range(bans)
        ]  # fmt: skip
        store.begin_bans(news)


def compare(state: Path, windows: list[tuple[float, float]], top: int = 15) -> None:
    with Store.open(str(state), offline=None) as store:
        events = store.events_between(-1e300, 1e300)
        bans = store.bans_between(-1e300, 1e300)
        with store.rollup_reader() as reader:
            for start, end in windows:
                assert not reader.events_from(end) or end <= max(e.time for e in events)
                if reader.events_from(end):
                    continue  # not the rollups' case (the CLI reads the events then)
                want = build_report(events, bans, start, end, top=top)
                got = report_from_rollups(reader, bans, start, end, top=top)
                assert got == want, (start - T0, end - T0)


def windows(last: float) -> list[tuple[float, float]]:
    end = last + 1e-3
    return [
        (T0 - 5.0, end),  # everything
        (T0 + 0.5 * DAY + 7.25, end),  # mid-day, mid-minute start
        (T0 + 2 * DAY - 600.0, end),  # the last few minutes: buckets under a minute
        (end - 3600.0, end),  # the last hour
        (end - 7 * 3600.0 + 0.125, end),
        (T0 + 3.0, end + 10 * DAY),  # ends long after the last event
    ]


@pytest.mark.parametrize("seed", range(4))
def test_random_stores_report_the_same_numbers(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    rows = random_events(rng, 3000, 2 * DAY)
    fill(tmp_path, rows)
    compare(tmp_path, windows(max(r.time for r in rows)))


def test_ties_rank_alike_and_top_zero(tmp_path: Path) -> None:
    # Every source and port probed the same number of times: distinct counts break ties.
    rows = [EventRow(T0 + i, f"198.18.1.{i % 40}", "198.18.0.1", "tcp", 1000 + i % 37, "SYN",
                     "alert", "r") for i in range(40 * 37)]  # fmt: skip
    fill(tmp_path, rows, bans=0)
    end = T0 + 40 * 37
    compare(tmp_path, [(T0, end), (T0 + 100.5, end)], top=5)
    compare(tmp_path, [(T0, end)], top=0)


def test_purges_and_waiting_events_keep_the_numbers_exact(tmp_path: Path) -> None:
    rng = random.Random(11)
    rows = random_events(rng, 2000, 2 * DAY)
    fill(tmp_path, rows)
    with Store.open(str(tmp_path)) as store:
        store.roll_up()
        assert store.purge_events(T0 + 0.7 * DAY, batch=50) > 0  # folded events go
        store.add_events(random_events(rng, 500, 2 * DAY))  # some before the cut: waiting
        store.roll_up(chunks=0)
        assert store.purge_events(T0 + 0.3 * DAY + 17.5, batch=50) >= 0
    last = T0 + 2 * DAY
    compare(tmp_path, windows(last))


def test_an_empty_store_and_an_empty_window(tmp_path: Path) -> None:
    fill(tmp_path, [], bans=3)
    compare(tmp_path, [(T0, T0 + DAY), (T0, T0 + 60.0)])
    rows = random_events(random.Random(3), 50, 3600.0)
    with Store.open(str(tmp_path)) as store:
        store.add_events(rows)
    compare(tmp_path, [(T0 - 10 * DAY, T0 - 5 * DAY)])  # before every event
