"""Bulk bans: decisions in their thousands, from decision to the kernel and to the store.

A distributed scan or a fleet's decisions bring thousands of bans at once. This times the
response side alone, with the real parts: the nftables table in a fresh network namespace
(nothing is sent, no interface is needed), the daemon's SQLite file, its history and blocked
files. Per configuration (the embedded defaults and Debian's portsentry.conf with
BLOCK_TCP/UDP=1, every path in the run directory) and per path, N ban requests for distinct
addresses in 198.19.0.0/16 and fd00:b::/48 (one per /64):

- ``responder``: the daemon's own path, in an interpreter set as the daemon sets its own
  (``settle_gc``: start-up objects frozen, young collections every 20,000 allocations; a
  0.5 ms switch interval; ``--plain-interpreter`` keeps CPython's defaults, as the benchmark
  ran before). The detection loop's calls, as it makes them for N new
  sources (``Responder.ban`` per decision, ``end_turn`` every 256, the loop's turn): the
  nftables elements go to the kernel from the loop (``first_ban``), the worker thread records
  them, writes the other backends, the files and the log lines, which the loop drains and
  writes to a file as it does to its log. Timed from the first call to the last element in
  the kernel (the loop's calls return once the kernel acknowledged) and to the worker's last
  ban recorded active.
- ``ban_many``: the worker's step alone (``BanManager.ban_many`` in batches of
  ``BAN_BATCH``), as the CLI and a fleet's decisions use it: store, backends (nftables by
  libnftables), store again.

Each run gets a fresh state directory and empty tables (the inet one and its netdev copy);
the counts are checked afterwards against ``nft`` and the SQLite file. With ``--history H``
the store first holds H ended bans (a daemon's past: addresses among the new ones' in key
order, some banned several times, all older than the repeat window), written before the
clock starts. Prints figures and the commands; asserts nothing. Needs root, iproute2 and nft.
Usage: python3 bench/bulk_bans.py [--count N] [--runs R] [--history H]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scan_subjects import PortSentinel  # the scan benchmark's two configurations

from portsentinel.config import load_config
from portsentinel.daemon.service import SWITCH_INTERVAL, settle_gc
from portsentinel.model import Mode, Proto
from portsentinel.respond.backends import Backends, files_for
from portsentinel.respond.bans import BanManager, BanRequest
from portsentinel.respond.worker import BAN_BATCH, Responder
from portsentinel.store.sqlite import Store

TURN = 256  # decisions per loop turn (``pipeline.RING_TURN``)


def _requests(count: int) -> list[BanRequest]:
    reqs = []
    for i in range(count):
        v6 = i % 4 == 3  # a quarter IPv6
        # Distinct hosts, as a fleet's decisions are (IPv6 ones in /64s of their own).
        address = f"fd00:b:0:{i:x}::1" if v6 else f"198.19.{(i >> 8) & 255}.{i & 255}"
        port = 1 + i % 1000
        evidence = {"hits": 1, "ports": [f"tcp/{port}"], "kinds": ["syn"],
                    "first_seen": 1.0e9, "last_seen": 1.0e9}  # fmt: skip
        reqs.append(BanRequest(address, port, Proto.TCP, Mode.ATCP, 1,
                               "syn scan: trigger", "atcp", evidence))  # fmt: skip
    return reqs


def _active(state: Path) -> int:
    with sqlite3.connect(f"file:{state / 'portsentinel.db'}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM bans WHERE state = 'active'").fetchone()[0])


def _elements() -> int:
    out = subprocess.run(["nft", "-j", "list", "table", "inet", "portsentinel"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    count = 0
    for item in json.loads(out)["nftables"]:
        found = item.get("set")
        if found and found["name"] in ("ban4", "ban6"):
            count += len(found.get("elem", []))
    return count


def _history(state: Path, count: int) -> None:
    """``count`` ended bans in a new store, 40 to 70 days old (plain SQL: any schema since 1)."""
    Store.open(str(state)).close()
    rng = random.Random(count)
    old = time.time() - 40 * 86400
    rows = []
    for _ in range(count):
        if rng.random() < 0.25:  # among the new IPv6 ones (theirs end in ::1)
            address, prefix = f"fd00:b:0:{rng.randrange(1 << 16):x}::2", 128
        else:  # among the new IPv4 ones, which stop at 198.19.78.x
            address, prefix = f"198.19.{rng.randrange(79, 256)}.{rng.randrange(256)}", 32
        created = old - rng.random() * 30 * 86400
        rows.append((address, prefix, created, created + 3600, "syn scan: trigger", "atcp",
                     created + 3600, "expiry"))  # fmt: skip
    with sqlite3.connect(state / "portsentinel.db") as conn:
        conn.executemany(
            "INSERT INTO bans (address, prefix, created, expires, state, reason, rule, "
            "lifted_at, lifted_by) VALUES (?, ?, ?, ?, 'expired', ?, ?, ?, ?)",
            rows,
        )
    with sqlite3.connect(state / "portsentinel.db") as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def inside(  # noqa: PLR0917 - the run's parameters
    config: str, state: Path, count: int, path: str, history: int = 0, plain: bool = False
) -> dict[str, float]:
    """One run, in the namespace: the figures as a dict."""
    settings = load_config(config).settings
    if history:
        _history(state, history)
    reqs = _requests(count)
    out: dict[str, float] = {}
    if path == "responder":
        if not plain:  # as ``portsentinel run`` sets its interpreter once started
            settle_gc()
            sys.setswitchinterval(SWITCH_INTERVAL)
        responder = Responder(settings, str(state))
        responder.start()
        with open(state / "daemon.log", "w") as log:
            started = time.perf_counter()
            for i, req in enumerate(reqs, 1):
                responder.ban(req)
                if i % TURN == 0:
                    responder.end_turn()
                    log.writelines(m.text + "\n" for m in responder.messages())
            responder.end_turn()
            out["kernel"] = time.perf_counter() - started
            while responder.bans_added < count:
                log.writelines(m.text + "\n" for m in responder.messages())
                time.sleep(0.001)
            out["store"] = time.perf_counter() - started
            for message in responder.close():
                log.write(message.text + "\n")
    else:
        store = Store.open(str(state))
        backends = Backends(settings)
        lines: list[str] = []
        manager = BanManager(settings, store, backends, log=lines.append, files=files_for(settings))
        started = time.perf_counter()
        for start in range(0, count, BAN_BATCH):
            manager.ban_many(reqs[start : start + BAN_BATCH], time.time())
        out["kernel"] = out["store"] = time.perf_counter() - started
        backends.stop()
        store.close()
    out["in_kernel"] = _elements()
    out["in_store"] = _active(state)
    return out


def _config(run: Path, which: str) -> Path:
    return PortSentinel._config(run, which)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000, help="bans per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--configs", default="default,debian")
    parser.add_argument("--paths", default="responder,ban_many")
    parser.add_argument("--history", type=int, default=0, help="ended bans in the store first")
    parser.add_argument(
        "--plain-interpreter", action="store_true", help="responder: CPython's GC settings"
    )
    parser.add_argument("--inside", nargs=3, metavar=("CONFIG", "STATE", "PATH"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.inside:
        config, state, path = args.inside
        got = inside(config, Path(state), args.count, path, args.history, args.plain_interpreter)
        print(json.dumps(got))
        return 0
    if os.geteuid() != 0:
        print("needs root (a network namespace and nft)", file=sys.stderr)
        return 2
    namespace = f"psbulk-{os.getpid()}"
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    print(f"{args.count} bans per run, a quarter IPv6, {args.history} ended bans in the store "
          f"first, {'CPython defaults' if args.plain_interpreter else 'the daemon settings'} "
          f"for the responder; namespace {namespace}")  # fmt: skip
    figures: dict[tuple[str, str], list[dict[str, float]]] = {}
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        for run in range(args.runs):
            for which in args.configs.split(","):
                for path in args.paths.split(","):
                    with tempfile.TemporaryDirectory() as tmp:
                        config = _config(Path(tmp), which)
                        state = Path(tmp) / "state"
                        state.mkdir()
                        for family in ("inet", "netdev"):  # the bans and their ingress copies
                            subprocess.run(["ip", "netns", "exec", namespace, "nft", "delete",
                                            "table", family, "portsentinel"],
                                           check=False, capture_output=True)  # fmt: skip
                        command = ["ip", "netns", "exec", namespace, sys.executable, __file__,
                                   "--count", str(args.count), "--history", str(args.history),
                                   *(["--plain-interpreter"] if args.plain_interpreter else []),
                                   "--inside", str(config), str(state), path]  # fmt: skip
                        if run == 0 and not figures.get((which, path)):
                            print("  $ " + " ".join([*command[:6], "..."]))
                        done = subprocess.run(command, check=False, capture_output=True, text=True)
                        if done.returncode != 0:
                            print(done.stderr, file=sys.stderr)
                            return 1
                        got = json.loads(done.stdout.strip().splitlines()[-1])
                        figures.setdefault((which, path), []).append(got)
                        print(f"  run {run + 1} {which:7} {path:9}: kernel {got['kernel']:.3f} s, "
                              f"store {got['store']:.3f} s; in the kernel {got['in_kernel']:.0f}, "
                              f"active in the store {got['in_store']:.0f}")  # fmt: skip
    finally:
        subprocess.run(["ip", "netns", "delete", namespace], check=False)
    print(f"\n| config | path | to the kernel, bans/s (median of {args.runs}) | to the store |")
    print("|---|---|---|---|")
    for (which, path), runs in figures.items():
        kernel = statistics.median(args.count / r["kernel"] for r in runs)
        store = statistics.median(args.count / r["store"] for r in runs)
        print(f"| {which} | {path} | {kernel:,.0f} | {store:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
