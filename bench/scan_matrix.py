"""The live daemon against real nmap scans: which mode sees which scan, and how fast.

Builds a two-namespace lab (see ``tests/e2e/netns.py``; needs root, iproute2, nft and nmap),
then, for each way of running the daemon (``atcp,audp``, ``stcp,sudp``, ``tcp,udp``), runs every
scan the modes can see, one at a time, over IPv4 and IPv6, and prints a matrix: detected (an
event for every scanned port), the event kinds, and the time from the scan's start to its first
event. Then one full-range ``nmap -sS -T5 -p-`` against ``atcp`` watching every port: probes
seen and kernel drops, from the daemon's ``adminalert: statistics:`` shutdown line.

Prints figures; asserts nothing. Usage: python bench/scan_matrix.py [--skip-matrix] [--limit N]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))

import netns
from daemon import (
    FAMILIES,
    Daemon,
    Event,
    Family,
    Scan,
    expected_kind,
    first_alert_delay,
    quick_icmp,
    run_scans,
    scan_events,
    scans_for,
    statistics,
)

RUNS = (("atcp", "audp"), ("stcp", "sudp"), ("tcp", "udp"))
FULL_SCAN_TIMEOUT = 600


def port_settings(modes: tuple[str, str]) -> dict[str, str]:
    """TCP_PORTS/UDP_PORTS: exactly the scanned ports; BLOCK 0 so no scan is cut short."""
    ports: dict[str, set[int]] = {"tcp": set(), "udp": set()}
    for mode in modes:
        for scan in scans_for(mode):
            ports[scan.proto].update(scan.ports)
    return {
        "TCP_PORTS": ",".join(map(str, sorted(ports["tcp"]))),
        "UDP_PORTS": ",".join(map(str, sorted(ports["udp"]))),
        "BLOCK_TCP": "0",
        "BLOCK_UDP": "0",
    }


def every_port(scan: Scan, family: Family) -> Callable[[list[Event]], bool]:
    """Have the events reached every port of the scan from this family?"""
    return lambda events: set(scan.ports) <= {e["port"] for e in scan_events(events, scan, family)}


def matrix(lab: netns.Lab, base: Path) -> None:
    print("first alert: from the start of nmap (its own start-up included) to the first event")
    print(f"{'mode':<6} {'scan':<5} {'family':<6} {'detected':<9} {'kind':<8} first alert")
    for modes in RUNS:
        daemon = Daemon.start(
            lab, base / "-".join(modes), mode=",".join(modes), settings=port_settings(modes)
        )
        try:
            for mode in modes:
                for scan in scans_for(mode):
                    for family in FAMILIES:
                        started = run_scans(lab, [(scan, family)])[(scan.flag, family.name)]
                        daemon.wait_for_events(
                            every_port(scan, family), f"{mode} {scan.flag}", check=False
                        )
                        events = scan_events(daemon.events(), scan, family)
                        detected = set(scan.ports) <= {e["port"] for e in events}
                        kinds = ",".join(sorted({e["kind"] for e in events})) or "-"
                        if kinds not in ("-", expected_kind(mode, scan)):
                            kinds += "(!)"
                        delay = first_alert_delay(events, started)
                        shown = f"{delay * 1000:7.1f} ms" if delay is not None else "      -"
                        print(
                            f"{mode:<6} {scan.flag:<5} {family.name:<6} "
                            f"{'yes' if detected else 'NO':<9} {kinds:<8} {shown}"
                        )
        finally:
            code, _stderr = daemon.stop()
            if code != 0:
                print(f"  daemon {modes} exited {code}")


def full_range(lab: netns.Lab, base: Path, limit: int) -> None:
    daemon = Daemon.start(
        lab,
        base / "full",
        mode="atcp",
        settings={"ADVANCED_PORTS_TCP": str(limit), "BLOCK_TCP": "0"},
    )
    argv = ["timeout", str(FULL_SCAN_TIMEOUT), "nmap", "-n", "-Pn", "-sS", "-T5", "-p-",
            lab.TARGET4]  # fmt: skip
    started = time.monotonic()
    done = lab.run(lab.scanner, argv, check=False, timeout=FULL_SCAN_TIMEOUT + 10)
    took = time.monotonic() - started
    # Let the daemon's loop catch up with its ring before it is stopped.
    daemon.wait_for_events(lambda ev: len(ev) >= limit - 3, "the last probes", 10, check=False)
    code, stderr = daemon.stop()
    stats = statistics(stderr)
    print(f"\nfull range: nmap -sS -T5 -p- {lab.TARGET4} (atcp, ADVANCED_PORTS_TCP={limit})")
    print(f"  nmap exit {done.returncode} in {took:.1f} s; daemon exit {code}")
    for key in ("kernel_packets", "kernel_drops", "kernel_freezes", "packets", "probes",
                "in_use", "reply_checks", "reply_checks_skipped", "decode_errors"):  # fmt: skip
        print(f"  {key:<22} {stats.get(key, '-')}")
    print(f"  {'events':<22} {len(daemon.events())}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--skip-matrix", action="store_true", help="only the full-range scan")
    parser.add_argument("--limit", type=int, default=65536, help="ADVANCED_PORTS_TCP of it")
    args = parser.parse_args()
    reason = netns.unavailable() or (None if shutil.which("nmap") else "needs nmap")
    if reason:
        print(f"scan_matrix: {reason}", file=sys.stderr)
        return 1
    base = Path(tempfile.mkdtemp(prefix="scan-matrix-"))
    with netns.Lab.create(prefix="psx") as lab:
        quick_icmp(lab)
        if not args.skip_matrix:
            matrix(lab, base)
        full_range(lab, base, args.limit)
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        print(f"scan_matrix: {exc}: {exc.stderr}", file=sys.stderr)
        sys.exit(1)
