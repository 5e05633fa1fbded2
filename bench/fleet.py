"""The fleet (issue 12) measured on Debian's crowdsec 1.4.6 LAPI, in namespaces (``fleetlab``).

1. Propagation: ``portsentinel block ADDR --for 1h`` on host A (an operator's ban: strong
   evidence, pushed at once; a scan's ban waits ``FLEET_PUSH_DELAY`` first), N times with
   0.3-1.2 s gaps. ``nft monitor`` in each namespace stamps the element's arrival: in A's
   ``ban4`` (the local ban), in B's ``fleet4`` (PortSentinel's pull, CROWDSEC_POLL_INTERVAL)
   and in C's ``crowdsec-blacklists`` (crowdsec-firewall-bouncer 0.0.25, update_frequency as
   the poll). Median, p95 and max of A -> B and A -> C.
2. Push throughput: the pusher (``fleet/push``) with N operator bans in a fresh store, from
   LAPI's namespace: alerts per second with CROWDSEC_BATCH_MAX 100 and with 1.
3. Outage: LAPI stopped for ``--outage`` seconds (60) while A bans K addresses; A's outbox
   depth at the end of the outage, then the time from LAPI's restart to the outbox drained
   and to the last ban in B's fleet4; LAPI's decisions on those addresses counted (one each).
4. The sweep rule's cost per check as LAPI's alerts grow: LAPI filled with weak-evidence
   reports (100 per POST) up to each level, then the rule's two questions for a source timed
   30 times (``GET /v1/alerts`` with the machine's token, ``GET /v1/decisions`` with the key).

Needs root, iproute2, nft, crowdsec, crowdsec-firewall-bouncer. Prints figures and the
commands; asserts nothing.
Usage: python3 bench/fleet.py [--bans N] [--push N] [--outage S] [--levels 0,1000,...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path[:0] = [str(HERE.parent / "tests" / "e2e"), str(HERE.parent / "tests"), str(SRC)]

import fleetlab  # noqa: E402
import netns  # noqa: E402
from daemon import PORTSENTINEL, Daemon  # noqa: E402

URL = "http://{}:8080"


# --- inside LAPI's namespace (``--inner``) ------------------------------------------------------
def _inner_push(args: dict[str, Any]) -> dict[str, Any]:
    from portsentinel.fleet.credentials import parse_machine  # noqa: PLC0415
    from portsentinel.fleet.lapi import Lapi  # noqa: PLC0415
    from portsentinel.fleet.push import Pusher  # noqa: PLC0415
    from portsentinel.store.sqlite import Store  # noqa: PLC0415

    machine = parse_machine(Path(args["creds"]).read_text(), args["creds"])
    out: dict[str, Any] = {}
    for batch in args["batches"]:
        with tempfile.TemporaryDirectory() as d, Store.open(d) as store:
            now = time.time()
            base = args["base"] + batch * 4096
            for i in range(args["count"]):
                address = f"198.{18 + (base + i) // 65536 % 2}.{(base + i) // 256 % 256}.{i % 256}"
                rec = store.begin_ban(
                    address,
                    None,
                    created=now,
                    expires=now + 3600,
                    reason="manual block",
                    rule=None,
                    evidence={},
                    offence=1,
                )
                store.activate(rec.id)
            lapi = Lapi(URL.format("127.0.0.1"), machine=machine)
            lapi.login()
            pusher = Pusher(
                store,
                lapi,
                host="bench",
                delay=0,
                cap=86400,
                batch=batch,
                outbox_max=1_000_000,
                log=lambda _line: None,
            )
            pusher.scan(time.time())
            started = time.perf_counter()
            while store.outbox_depth():
                pusher.send(time.time())
            took = time.perf_counter() - started
            out[str(batch)] = {
                "count": pusher.stats.pushed,
                "seconds": took,
                "failures": pusher.stats.failures,
            }
    return out


def _inner_sweep(args: dict[str, Any]) -> dict[str, Any]:
    from portsentinel.fleet import alerts  # noqa: PLC0415
    from portsentinel.fleet.credentials import parse_machine  # noqa: PLC0415
    from portsentinel.fleet.lapi import Lapi  # noqa: PLC0415

    machine = parse_machine(Path(args["creds"]).read_text(), args["creds"])
    lapi = Lapi(URL.format("127.0.0.1"), machine=machine, api_key=args["key"], timeout=60)
    filled, out = 0, dict[str, Any]()
    for level in args["levels"]:
        while filled < level:
            now = time.time()
            n = min(100, level - filled)
            body = [
                alerts.report_alert(
                    f"198.19.{(filled + i) // 256 % 256}.{(filled + i) % 256}",
                    ["tcp/22"],
                    now - 1,
                    now,
                    now,
                    host="filler",
                )
                for i in range(n)
            ]
            lapi.post_alerts(body)
            filled += n
        probe = f"198.18.200.{len(out) + 1}"
        now = time.time()
        lapi.post_alerts([alerts.report_alert(probe, ["tcp/23"], now - 1, now, now, host="h")])
        reports, decisions = [], []
        for _ in range(30):
            t0 = time.perf_counter()
            found = lapi.reports(probe, since=60)
            t1 = time.perf_counter()
            lapi.decisions(probe)
            t2 = time.perf_counter()
            reports.append(t1 - t0)
            decisions.append(t2 - t1)
        out[str(level)] = {"found": len(found), "reports": reports, "decisions": decisions}
    return out


# --- the driver ---------------------------------------------------------------------------------
class Monitor:
    """A set of a namespace polled every ``EVERY`` seconds (``nft -j list set``): the first
    time each address was seen in it. (``nft monitor`` cannot decode the fleet sets' events:
    "Received event for an unknown set".)"""

    EVERY = 0.02

    def __init__(self, lab: netns.Lab, ns: str, family: str, table: str, name: str) -> None:
        self.seen: dict[str, float] = {}
        self._args = (lab, ns, family, table, name)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            found = fleetlab.nft_set(*self._args) or set()
            stamp = time.time()
            for address in found:
                self.seen.setdefault(address, stamp)
            self._stop.wait(self.EVERY)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _cli(lab: netns.Lab, ns: str, d: Path, *args: str) -> None:
    argv = [*PORTSENTINEL, *args, "--state-dir", str(d), "--config", str(d / "portsentinel.conf")]
    lab.run(ns, argv, check=True, timeout=60)


def _wait(check: Any, deadline: float) -> float | None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if check():
            return time.monotonic()
        time.sleep(0.05)
    return None


def _stats(values: list[float]) -> str:
    if not values:
        return "no samples"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"median {statistics.median(ordered) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
        f"max {ordered[-1] * 1000:.0f} ms (n={len(ordered)})"
    )


def _settings(lapi: str, creds: Path, key: Path, poll: float) -> dict[str, str]:
    return {
        "CROWDSEC_LAPI_URL": URL.format(lapi),
        "CROWDSEC_CREDENTIALS_FILE": str(creds),
        "CROWDSEC_BOUNCER_KEY_FILE": str(key),
        "CROWDSEC_POLL_INTERVAL": f"{poll}s",
    }


def _inner(fleet: fleetlab.Fleet, what: str, args: dict[str, Any]) -> dict[str, Any]:
    done = fleet.lab.run(
        fleet.lapi_ns, [sys.executable, __file__, "--inner", what, json.dumps(args)], timeout=1800
    )
    return dict(json.loads(done.stdout))


def run(opts: argparse.Namespace, directory: Path) -> None:
    with netns.Lab.create() as lab:
        fleet = fleetlab.Fleet(lab, directory)
        try:
            fleet.build()
            fleet.start_lapi()
            a_creds, a_key = fleet.enroll("a", URL.format("198.19.1.1"))
            b_creds, b_key = fleet.enroll("b", URL.format("198.19.2.1"))
            bench_creds, bench_key = fleet.enroll("bench", URL.format("127.0.0.1"))
            fleet.start_bouncer(update=f"{opts.poll:g}s")
            a = Daemon.start(
                lab,
                directory / "a",
                mode="atcp",
                settings=_settings("198.19.1.1", a_creds, a_key, opts.poll),
            )
            b = Daemon.start(
                lab,
                directory / "b",
                mode="atcp",
                ns=fleet.b_ns,
                settings=_settings("198.19.2.1", b_creds, b_key, opts.poll),
            )
            try:
                _propagation(opts, fleet, a)
                _outage(opts, fleet, a)
            finally:
                for d in (a, b):
                    d.stop()
            print(f"\n3. push throughput ({opts.push} operator bans, distinct addresses):")
            pushed = _inner(
                fleet,
                "push",
                {"creds": str(bench_creds), "count": opts.push, "batches": [100, 1], "base": 0},
            )
            for batch, r in pushed.items():
                print(
                    f"   CROWDSEC_BATCH_MAX={batch}: {r['count']} alerts in {r['seconds']:.2f} s "
                    f"= {r['count'] / r['seconds']:.0f} alerts/s, {r['failures']} failures"
                )
            print("\n4. the sweep rule's cost per check as LAPI's alerts grow:")
            levels = [int(x) for x in opts.levels.split(",")]
            swept = _inner(
                fleet,
                "sweep",
                {"creds": str(bench_creds), "key": bench_key.read_text().strip(), "levels": levels},
            )
            for level, r in swept.items():
                print(
                    f"   {int(level):>6} filler reports (and ~{opts.push * 2 + opts.bans} bans): "
                    f"GET /v1/alerts {_stats(r['reports'])}; GET /v1/decisions "
                    f"{_stats(r['decisions'])}; found {r['found']}"
                )
        finally:
            fleet.close()


def _propagation(opts: argparse.Namespace, fleet: fleetlab.Fleet, a: Daemon) -> None:
    lab = fleet.lab
    mons = {
        "A": Monitor(lab, lab.target, "inet", "portsentinel", "ban4"),
        "B": Monitor(lab, fleet.b_ns, "inet", "portsentinel", "fleet4"),
        "C": Monitor(lab, fleet.c_ns, "ip", "crowdsec", "crowdsec-blacklists"),
    }
    time.sleep(1.0)  # the monitors run
    addresses = [f"198.18.50.{i + 1}" for i in range(opts.bans)]
    for address in addresses:
        _cli(lab, lab.target, a.directory, "block", address, "--for", "1h")
        time.sleep(random.uniform(0.3, 1.2))
    _wait(lambda: all(x in mons["B"].seen and x in mons["C"].seen for x in addresses), 60)
    for m in mons.values():
        m.stop()
    print(f"1. propagation, {opts.bans} operator bans on A, poll {opts.poll:g} s on B and C:")
    for host in ("B", "C"):
        took = [
            mons[host].seen[x] - mons["A"].seen[x]
            for x in addresses
            if x in mons[host].seen and x in mons["A"].seen
        ]
        print(f"   A's ban4 -> {host}: {_stats(took)}; missing {len(addresses) - len(took)}")


def _outage(opts: argparse.Namespace, fleet: fleetlab.Fleet, a: Daemon) -> None:
    from portsentinel.store.sqlite import Store  # noqa: PLC0415

    lab = fleet.lab

    def depth() -> int:
        with Store.open(str(a.directory)) as store:
            return sum(store.outbox_depth().values())

    addresses = [f"198.18.60.{i + 1}" for i in range(opts.outage_bans)]
    mon = Monitor(lab, fleet.b_ns, "inet", "portsentinel", "fleet4")
    fleet.stop_lapi()
    stopped = time.monotonic()
    gap = opts.outage / (len(addresses) + 1)
    for i, address in enumerate(addresses, 1):
        _cli(lab, lab.target, a.directory, "block", address, "--for", "1h")
        time.sleep(max(0.0, stopped + i * gap - time.monotonic()))
    time.sleep(max(0.0, opts.outage - (time.monotonic() - stopped)))
    held = depth()
    fleet.start_lapi()
    back = time.monotonic()
    drained = _wait(lambda: depth() == 0, 400)
    arrived = _wait(lambda: all(x in mon.seen for x in addresses), 120)
    mon.stop()
    found = json.loads(fleet.cscli("decisions", "list", "-a", "-o", "json") or "[]")
    ours = [
        d["value"]
        for al in found
        for d in al.get("decisions") or []
        if d["value"] in set(addresses)
    ]
    outage = back - stopped
    for line in a.stderr().splitlines():
        if "fleet" in line and ("back" in line or "again" in line or "failed" in line):
            print(f"   A: {line[-150:]}")
    print(
        f"\n2. LAPI stopped {outage:.0f} s (with its start) while A banned {len(addresses)}: "
        f"outbox held {held}; after the restart (LAPI answering), drained in "
        f"{(drained - back) if drained else float('nan'):.1f} s, all in B's fleet4 in "
        f"{(arrived - back) if arrived else float('nan'):.1f} s; LAPI holds {len(ours)} "
        f"decisions on them ({len(set(ours))} addresses)"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--inner":
        fn = {"push": _inner_push, "sweep": _inner_sweep}[sys.argv[2]]
        print(json.dumps(fn(json.loads(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bans", type=int, default=30)
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--push", type=int, default=1000)
    parser.add_argument("--outage", type=float, default=60.0)
    parser.add_argument("--outage-bans", type=int, default=20)
    parser.add_argument("--levels", default="0,1000,10000,50000")
    opts = parser.parse_args()
    reason = fleetlab.unavailable()
    if reason:
        sys.exit(f"cannot run: {reason}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # the lab is cleaned up
    print(f"$ python3 bench/fleet.py {' '.join(sys.argv[1:])}  (load {os.getloadavg()[0]:.1f})")
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as d:
        run(opts, Path(d))


if __name__ == "__main__":
    main()
