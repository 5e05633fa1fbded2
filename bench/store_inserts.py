"""The store's insert path: events per second through ``Store.add_events``, as the daemon's
worker flushes them, into a store that already holds many events.

Uses the report benchmark's store of N events (default 1 M: 2,000 sources in bursts over 30
days; built once under /tmp/portsentinel-bench-cache/report-N/ by bench/report_scale.py),
copies it to a temporary directory per run, then times ``add_events`` of ``--count`` new scan
events (a burst of fresh sources, each probing many ports, as a scan looks) in batches of
``--batch`` rows (the worker flushes what a loop turn decided: 256 is a busy turn). Also times
``begin_bans`` + ``activate_many`` of ``--bans`` bans in batches of 256 (the ban worker's
step). With code that keeps the report's rollups, the copy is first folded (once, cached as
report-N-rolled/) and each run also times ``roll_up`` of its own events: the worker's extra
work, off the flush path. Prints the median rates; asserts nothing.
Usage: python3 bench/store_inserts.py [--prefill N] [--count N] [--batch B] [--runs R] [--base DIR]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report_scale import CACHE, build  # the report benchmark's store shape

from portsentinel.store.records import EventRow
from portsentinel.store.sqlite import NewBan, Store


def scan_rows(count: int, start: float, seed: int) -> list[EventRow]:
    """``count`` events of 100 fresh sources scanning ports at about 1,000 probes a second."""
    rng = random.Random(seed)
    rows = []
    t = start
    for i in range(count):
        src = f"198.19.{(seed + i // (count // 100 or 1)) & 255}.{(i // 256) & 255}"
        t += rng.expovariate(1000.0)
        port = rng.randrange(1, 65536)
        action = "block" if i % 500 == 0 else "ignored"
        rows.append(EventRow(t, src, "198.18.0.1", "tcp", port, "SYN", action,
                             "scan trigger reached", "atcp", "scan_trigger", 1, 1))  # fmt: skip
    return rows


def one_run(base: Path, count: int, batch: int, bans: int, seed: int) -> dict[str, float]:
    """Rates of one run on a fresh copy of the prefilled store: ``bans`` (first), ``events``
    (add_events), ``fold`` (roll_up of those events, if the code keeps rollups)."""
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ps-inserts-") as tmp:
        shutil.copy(base / "portsentinel.db", Path(tmp) / "portsentinel.db")
        store = Store.open(tmp)
        try:
            news = [
                NewBan(f"198.20.{(i >> 8) & 255}.{i & 255}", None, time.time(), None, "SYN scan",
                       "scan_trigger", {"hits": 1}, 1)
                for i in range(bans)
            ]  # fmt: skip
            started = time.perf_counter()
            for i in range(0, bans, 256):
                with store.batch():
                    made = store.begin_bans(news[i : i + 256])
                    store.activate_many([ban.id for ban in made])
            out["bans"] = bans / (time.perf_counter() - started)
            rows = scan_rows(count, time.time(), seed)
            started = time.perf_counter()
            for i in range(0, count, batch):
                store.add_events(rows[i : i + batch])
            out["events"] = count / (time.perf_counter() - started)
            if hasattr(store, "roll_up"):
                started = time.perf_counter()
                folded = store.roll_up()
                out["fold"] = folded / (time.perf_counter() - started)
        finally:
            store.close()
    return out


def rolled_base(base: Path) -> Path:
    """A copy of ``base`` upgraded and folded once (a daemon's store keeps up), so that a
    run folds only its own events; the code without rollups uses ``base`` as it is."""
    if not hasattr(Store, "roll_up"):
        return base
    rolled = base.with_name(base.name + "-rolled")
    if not (rolled / "portsentinel.db").exists():
        rolled.mkdir(parents=True, exist_ok=True)
        shutil.copy(base / "portsentinel.db", rolled / "portsentinel.db")
        with Store.open(str(rolled)) as store:
            store.roll_up()
    return rolled


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefill", type=int, default=1_000_000)
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--bans", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--base", type=Path, help="a store directory to copy (default: built)")
    args = parser.parse_args()
    base = args.base or CACHE / f"report-{args.prefill}"  # shared with bench/report_scale.py
    if not (base / "portsentinel.db").exists():
        build(base, args.prefill)
    base = rolled_base(base)
    runs = []
    for run in range(args.runs):
        rates = one_run(base, args.count, args.batch, args.bans, seed=run)
        runs.append(rates)
        print("  run", run + 1, ", ".join(f"{k} {v:,.0f}/s" for k, v in rates.items()))
    median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    print(f"\nstore holding {args.prefill:,} events, batches of {args.batch}, median of "
          f"{args.runs}: add_events {median['events']:,.0f} events/s; "
          f"begin_bans + activate_many {median['bans']:,.0f} bans/s")  # fmt: skip
    if "fold" in median:
        both = 1 / (1 / median["events"] + 1 / median["fold"])
        print(f"roll_up {median['fold']:,.0f} events/s; insert and fold together "
              f"{both:,.0f} events/s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
