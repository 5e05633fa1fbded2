"""The report over a large store: memory and time of `portsentinel report` at 1 M and 10 M events.

Builds (once, cached under /tmp/portsentinel-bench-cache/report-N/) a live state store with N
events over 30 days: 2,000 scanning sources, each in a few bursts of SYN/FIN/UDP probes over
ports 1-65535 (most below 1024), the decisions as the daemon records them (a block, then
"already blocked"), and a ban per source. Then runs `portsentinel report --since all` and
`--since 24h` in a child process per run and prints its wall time and peak resident memory
(`ru_maxrss` of the child). Prints figures and the commands; asserts nothing.
Usage: python3 bench/report_scale.py [--events N ...] [--runs R]
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from portsentinel.store.records import EventRow
from portsentinel.store.sqlite import NewBan, Store

CACHE = Path("/tmp/portsentinel-bench-cache")
DAY = 86400.0
SOURCES = 2000
KINDS = ("SYN", "SYN", "SYN", "FIN", "UDP")


def build(state: Path, count: int, seed: int = 7) -> None:
    """A store of ``count`` events (and a ban per source), written in batches."""
    rng = random.Random(seed)
    state.mkdir(parents=True, exist_ok=True)
    end = time.time()
    start = end - 30 * DAY
    store = Store.open(str(state))
    try:
        per_source = count // SOURCES
        batch: list[EventRow] = []
        bans: list[int] = []
        written = 0
        for i in range(SOURCES):
            src = f"198.{18 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"
            t = rng.uniform(start, end - DAY / 2)
            for n in range(per_source):
                t += rng.expovariate(50.0)  # bursts at ~50 probes/s
                kind = rng.choice(KINDS)
                port = rng.randrange(1, 1024) if rng.random() < 0.8 else rng.randrange(1, 65536)
                action, reason = ("block", "scan trigger reached") if n == 0 else (
                    "ignored", "already blocked")  # fmt: skip
                proto = "udp" if kind == "UDP" else "tcp"
                batch.append(EventRow(t, src, "198.18.0.1", proto, port, kind, action, reason,
                                      "atcp", "scan_trigger", n + 1, n + 1))  # fmt: skip
                if len(batch) >= 50_000:
                    written += store.add_events(batch)
                    batch.clear()
            first = t - per_source / 50.0
            [ban] = store.begin_bans([NewBan(src, None, first, first + 3600, "SYN scan",
                                             "scan_trigger", {"hits": per_source}, 1)])  # fmt: skip
            bans.append(ban.id)
        written += store.add_events(batch)
        store.activate_many(bans)
    finally:
        store.close()
    print(f"  built {state}: {written:,} events, {SOURCES:,} bans")


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
