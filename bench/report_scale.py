"""The report over a large store: memory and time of `portsentinel report` at 1 M and 10 M events.

Builds (once, cached under /tmp/portsentinel-bench-cache/report-N/) a live state store with N
events over 30 days: 2,000 scanning sources, each in a burst of SYN/FIN/UDP probes over
ports 1-65535 (80 % below 1024) at about 50 a second, the decisions as the daemon records them
(a block, then "already blocked"), and a ban per source. The events are written straight into
the ``events`` table (the columns ``Store.add_events`` writes, in batches of 100,000): 10 M
through the store's API would take many minutes. The store is made by ``Store.open`` of the
code on ``PYTHONPATH``, so the same command builds a store for an older release to compare.

If the code keeps rollups (``Store.roll_up``), they are then brought up to date, once, and
that time is printed apart: a daemon's worker folds the events as they come, so a report
never finds millions waiting. Then it runs `portsentinel report --since all` and
`--since 24h` in a child process per run and prints its wall time and peak resident memory
(`ru_maxrss` of the child). Prints figures and the commands; asserts nothing.
Usage: python3 bench/report_scale.py [--events N ...] [--runs R] [--since S ...]
"""

from __future__ import annotations

import argparse
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

from portsentinel.store.schema import host_text_key
from portsentinel.store.sqlite import NewBan, Store

CACHE = Path("/tmp/portsentinel-bench-cache")
DAY = 86400.0
SOURCES = 2000
KINDS = ("SYN", "SYN", "SYN", "FIN", "UDP")
BATCH = 100_000
INSERT = (
    "INSERT INTO events (time, src, dst, proto, port, kind, action, reason, mode, rule, hits, "
    "ports_seen, flags, ip_options, src_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def build(state: Path, count: int, seed: int = 7) -> None:
    """A store of ``count`` events (and a ban per source), written in batches."""
    rng = random.Random(seed)
    state.mkdir(parents=True, exist_ok=True)
    end = time.time()
    start = end - 30 * DAY
    started = time.perf_counter()
    store = Store.open(str(state))
    conn = store._conn  # the bench's own bulk path; the store's API writes the bans
    try:
        per_source = count // SOURCES
        batch: list[tuple[object, ...]] = []
        written = 0
        news = []
        for i in range(SOURCES):
            src = f"198.{18 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"
            key = host_text_key(src)[1]
            t = rng.uniform(start, end - DAY / 2)
            for n in range(per_source):
                t += rng.expovariate(50.0)  # bursts at ~50 probes/s
                kind = KINDS[int(rng.random() * 5)]
                port = int(rng.random() * 1023) + 1 if rng.random() < 0.8 else (
                    int(rng.random() * 65535) + 1)  # fmt: skip
                action, reason = ("block", "scan trigger reached") if n == 0 else (
                    "ignored", "already blocked")  # fmt: skip
                proto = "udp" if kind == "UDP" else "tcp"
                batch.append((t, src, "198.18.0.1", proto, port, kind, action, reason, "atcp",
                              "scan_trigger", n + 1, n + 1, None, 0, key))  # fmt: skip
                if len(batch) >= BATCH:
                    written += _insert(conn, batch)
            first = t - per_source / 50.0
            news.append(NewBan(src, None, first, first + 3600, "SYN scan", "scan_trigger",
                               {"hits": per_source}, 1))  # fmt: skip
        written += _insert(conn, batch)
        store.activate_many([ban.id for ban in store.begin_bans(news)])
    finally:
        store.close()
    print(f"  built {state}: {written:,} events, {SOURCES:,} bans, "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip


def _insert(conn: sqlite3.Connection, batch: list[tuple[object, ...]]) -> int:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(INSERT, batch)
    conn.execute("COMMIT")
    count = len(batch)
    batch.clear()
    return count


def fold(state: Path) -> None:
    """Bring the rollups up to date (what the daemon's worker does as events come)."""
    if not hasattr(Store, "roll_up"):
        return  # a release without rollups
    started = time.perf_counter()
    with Store.open(str(state)) as store:
        folded = store.roll_up()
    if folded:
        seconds = time.perf_counter() - started
        print(f"  folded {folded:,} events into the rollups in {seconds:.1f} s "
              f"({folded / seconds:,.0f} events/s)")  # fmt: skip


def measure(state: Path, since: str, out: Path) -> tuple[float, float]:
    """(seconds, peak MB) of one `portsentinel report` child."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "portsentinel", "report", "--state-dir", str(state),
                    "--since", since, "--html", str(out)], check=True)  # fmt: skip
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        print("  (peak not above an earlier child's: a fresh interpreter per size is better)")
    return seconds, peak / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--since", nargs="+", default=["all", "24h"])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one measurement in a fresh process, so ru_maxrss is this report's alone
        state, since, out = args.child
        seconds, peak = measure(Path(state), since, Path(out))
        print(f"{seconds:.3f} {peak:.1f}")
        return 0
    rows = []
    for count in args.events:
        state = CACHE / f"report-{count}"
        if not (state / "portsentinel.db").exists():
            build(state, count)
        fold(state)
        size = (state / "portsentinel.db").stat().st_size / 2**20
        for since in args.since:
            times, peaks = [], []
            for _ in range(args.runs):
                done = subprocess.run([sys.executable, __file__, "--child", str(state), since,
                                       str(CACHE / "report.html")],
                                      capture_output=True, text=True, check=True)  # fmt: skip
                seconds, peak = (float(x) for x in done.stdout.split()[-2:])
                times.append(seconds)
                peaks.append(peak)
            rows.append((count, size, since, statistics.median(times), max(peaks)))
            print(f"  {count:,} events ({size:.0f} MB store), --since {since}: "
                  f"{statistics.median(times):.2f} s, peak {max(peaks):.0f} MB")  # fmt: skip
    print("\n| events in the store | --since | wall time (median) | peak memory (max) |")
    print("|---|---|---|---|")
    for count, size, since, seconds, peak in rows:
        print(f"| {count:,} ({size:.0f} MB) | {since} | {seconds:.2f} s | {peak:.0f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
