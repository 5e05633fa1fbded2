"""What each index on ``bans`` costs a burst of bans: ``Store.begin_bans`` of loop-sent bans
(written ``active``, their nftables action held in the row, as the daemon's path writes them),
into a store that already holds a history of ended bans, with every index and with each
secondary one dropped.

N new bans (default 20,000) for random IPv4 hosts (in 10.0.0.0/8; nothing is sent), in
batches of 4,096 (``BAN_BATCH``), each batch one transaction; the store first holds H ended
bans (default 300,000) of random hosts of the same range, 40-70 days old (so none counts as
an earlier offence). Each variant runs on a fresh copy of that store; CPU time of the
inserting thread and wall time, the best of R runs (default 3). The indexes each query
needs are in tests/unit/store/test_sqlite.py's PLANS. Prints figures; asserts nothing; needs
no root.
Usage: python3 bench/ban_indexes.py [--count N] [--history H] [--runs R] [--own-cache]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from portsentinel.store.sqlite import NewBan, Store

SECONDARY = ("bans_live", "bans_live_expires", "bans_address_created", "bans_created")
EVIDENCE = {"hits": 1, "ports": ["tcp/80"], "kinds": ["syn"], "first_seen": 1.0e9,
            "last_seen": 1.0e9, "plan": ["nftables"], "port": 80, "proto": "tcp",
            "mode": "atcp"}  # fmt: skip
OWN_CACHE = False  # --own-cache: the connection's own page cache throughout
HELD = '{"backend":"nftables","set":"ban4","table":"inet portsentinel","timeout":3600}'


def _host(value: int) -> str:
    return f"10.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"


def _base(directory: Path, history: int, hosts: list[int]) -> None:
    Store.open(str(directory)).close()
    now = time.time()
    rows = []
    for n, value in enumerate(hosts):
        created = now - 40 * 86400 - n * 30 * 86400 / max(history, 1)
        rows.append((_host(value), created, created + 3600, created + 3600))
    with sqlite3.connect(directory / "portsentinel.db") as conn:
        conn.executemany(
            "INSERT INTO bans (address, prefix, created, expires, state, reason, lifted_at, "
            "lifted_by) VALUES (?, 32, ?, ?, 'expired', 'syn scan', ?, 'expiry')",
            rows,
        )
    with sqlite3.connect(directory / "portsentinel.db") as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _burst(store: Store, size: int) -> contextlib.AbstractContextManager[None]:
    """``Store.burst`` (its larger page cache), or nothing in a tree from before it or with
    ``--own-cache``."""
    burst = None if OWN_CACHE else getattr(store, "burst", None)
    return contextlib.nullcontext() if burst is None else burst(size)


def _run(base: Path, bans: list[NewBan], drop: tuple[str, ...]) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="ps-indexes-") as tmp:
        shutil.copy(base / "portsentinel.db", tmp)
        with Store.open(tmp) as store:
            for name in drop:
                store._conn.execute(f"DROP INDEX {name}")
            cpu, wall = time.thread_time(), time.perf_counter()
            for start in range(0, len(bans), 4096):
                with _burst(store, len(bans[start : start + 4096])), store.batch():
                    store.begin_bans(bans[start : start + 4096])
            return time.thread_time() - cpu, time.perf_counter() - wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--history", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--own-cache", action="store_true", help="no Store.burst: 512 KiB")
    args = parser.parse_args()
    global OWN_CACHE  # noqa: PLW0603 - a switch of the whole run
    OWN_CACHE = args.own_cache
    rng = random.Random(14)
    hosts = rng.sample(range(1 << 24), args.count + args.history)  # distinct hosts, random order
    now = time.time()
    bans = [NewBan(_host(value), None, now, now + 3600, "syn scan: trigger", "atcp", EVIDENCE, 1,
                   True, "nftables", HELD) for value in hosts[: args.count]]  # fmt: skip
    print(f"{args.count:,} bans into a store holding {args.history:,} ended ones; best of "
          f"{args.runs}, per ban")  # fmt: skip
    print("| indexes | CPU, us | wall, us |\n|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="ps-indexes-base-") as tmp:
        _base(Path(tmp), args.history, hosts[args.count :])
        for drop in [(), *((name,) for name in SECONDARY), SECONDARY]:
            runs = [_run(Path(tmp), bans, drop) for _ in range(args.runs)]
            cpu, wall = (min(r[i] for r in runs) / args.count * 1e6 for i in (0, 1))
            what = "all" if not drop else "all four dropped" if len(drop) > 1 else f"- {drop[0]}"
            print(f"| {what} | {cpu:.1f} | {wall:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
