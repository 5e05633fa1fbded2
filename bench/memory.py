"""Memory under spoofed sources and floods: does anything grow with what an attacker sends?

Three parts, each printed with the commands it ran and the targets next to the figures:

1. In process (no root): 1M packets, each from a distinct source, fed straight into a
   ``Detector`` built from the default settings (atcp; MAX_TRACKED_SOURCES 65536 and the other
   caps at their defaults), IPv4 and IPv6 sources. Each pass is a fresh child process: a timed
   one reporting VmRSS every 100k packets, and one under ``tracemalloc``. Packets are made 10k
   at a time, so the input stays small (it is part of the traced figures: about 2 MiB).
   Target: ≤ 64 MiB for 1M distinct sources.
2. The live daemon (root): ``portsentinel run --mode atcp --dry-run --events FILE`` (every path
   in a temporary directory; a dry run, so bans add no work) in a lab's target namespace
   (``tests/e2e/netns.py``)
   against 1k, 100k and 1M distinct forged sources sent by the C sender
   (``tests/e2e/synflood.c``) from the scanner namespace: IPv4 from 198.18.1.0 on (198.18.0.0/15
   without the lab's /24), IPv6 from fd00:5f::1:0 for 1M, more than the /15 holds. Each count
   gets a fresh daemon; the sender is paced (``--rate``) so the daemon can look at every source.
   VmRSS is sampled every 0.5 s from ``/proc/PID/status``.
3. The flood: the same daemon against the sender at its maximum for ``--flood-seconds`` (≥ 25 s)
   from 130,816 forged IPv4 sources in random order. RSS over time, its growth over the last
   half (flat: ≤ 2 MiB) and its last rise, max RSS against CAPTURE_RING_MIB + 64 MiB, and every
   frame accounted for: sent = frames the daemon's socket counted (``kernel_packets``, its ring
   drops ``kernel_drops`` included) + frames lost before the socket (veth drops + softnet backlog
   drops; ``/proc/net/softnet_stat`` is per CPU and global to the kernel, so its delta is an
   upper bound for the lab's share). Then once more as the packaged service runs: bans on
   (nftables, the state store), no events stream.

Usage: python bench/memory.py [--rate PPS] [--flood-seconds S] [--only detector|live|flood]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))

import floodlab
import netns
from daemon import Daemon, statistics

from portsentinel.config import load_config
from portsentinel.config.setup import Setup, detector_config
from portsentinel.detect.detector import Detector
from portsentinel.model import Mode, Packet
from portsentinel.networks import AddressSet

TARGET_DISTINCT_MIB = 64  # 1M distinct sources
FLOOD_SLACK_MIB = 64  # flood: RSS <= ring + this
FLAT_MIB = 2.0  # growth over the flood's last half that still counts as flat
RING_MIB = 16  # CAPTURE_RING_MIB's default, which the daemon runs with
PORTS = (1, 100)  # all watched by atcp (its default excludes, 113 and 139, lie above)
CHUNK = 10_000
SAMPLE_EVERY = 100_000
FEED_RATE = 400_000.0  # packets per second on the synthetic clock
DEFAULT_RATE = 20_000
FLOOD_FRAMES = 60_000_000
DISTINCT = (
    (1_000, floodlab.SPOOF4_FIRST),
    (100_000, floodlab.SPOOF4_FIRST),
    (1_000_000, floodlab.SPOOF6_FIRST),
)
IDLE_CPU_SHARE = 0.05
DRAIN_DEADLINE = 60.0
SETTLE = 2.0  # seconds after the daemon's start before its idle RSS is read


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


# --- 1. in process ---------------------------------------------------------------------------

DST4 = ipaddress.IPv4Address("198.18.0.1").packed
DST6 = ipaddress.IPv6Address("fd00:5e::1").packed
# Synthetic sources: never on any wire. IPv4 needs more than 198.18.0.0/15 holds.
FIRST4 = int(ipaddress.IPv4Address("16.0.0.0"))
FIRST6 = int(ipaddress.IPv6Address(floodlab.SPOOF6_FIRST))


def default_detector(dst: bytes) -> Detector:
    """A detector as the daemon builds it from the default settings, in atcp mode."""
    setup = Setup(load_config(None), Mode.ATCP, None, "bench", AddressSet(), ())
    return Detector(detector_config(setup), local=frozenset({dst}))


def make_packets(first: int, width: int, dst: bytes, start: int, stop: int) -> list[Packet]:
    """SYNs numbered ``start`` to ``stop - 1``, packet n from source ``first + n``."""
    span = PORTS[1] - PORTS[0] + 1
    return [
        (6, (first + n).to_bytes(width, "big"), dst, 40000, PORTS[0] + n % span, 0x02, 64, False, 0)
        for n in range(start, stop)
    ]


def memory_now(trace: bool) -> int:
    """KiB: traced Python memory with ``trace``, else this process's VmRSS."""
    if trace:
        return tracemalloc.get_traced_memory()[0] // 1024
    return floodlab.rss_kib(os.getpid()) or 0


def detector_child(count: int, six: bool, trace: bool) -> None:
    """One pass (``--detector-child``): feed ``count`` distinct-source SYNs; print JSON."""
    first, width, dst = (FIRST6, 16, DST6) if six else (FIRST4, 4, DST4)
    detector = default_detector(dst)
    feed = detector.feed
    if trace:
        tracemalloc.start()
    before = memory_now(trace)
    series: list[int] = []
    spent = 0.0
    for start in range(0, count, CHUNK):
        batch = make_packets(first, width, dst, start, min(count, start + CHUNK))
        nows = [(start + n) / FEED_RATE for n in range(len(batch))]
        began = time.perf_counter()
        for pkt, now in zip(batch, nows, strict=True):
            feed(pkt, now)
        detector.tick(nows[-1])
        spent += time.perf_counter() - began
        done = start + len(batch)
        if done % SAMPLE_EVERY == 0 or done == count:
            series.append(memory_now(trace))
    report = {
        "us_per_packet": spent / count * 1e6,
        "before_kib": before,
        "series_kib": series,
        "peak_kib": tracemalloc.get_traced_memory()[1] // 1024 if trace else proc_status("VmHWM"),
        "tracked": detector.stats.tracked_sources,
        "evicted": detector.stats.sources_evicted,
    }
    print(json.dumps(report))


def proc_status(key: str) -> int:
    """A KiB figure of this process's ``/proc/self/status``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


@dataclass(frozen=True)
class ChildReport:
    us_per_packet: float
    before_kib: int
    series_kib: list[int]
    peak_kib: int
    tracked: int
    evicted: int


def run_child(count: int, six: bool, *, trace: bool) -> ChildReport:
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--detector-child",
        str(count),
        *(["--six"] if six else []),
        *(["--trace"] if trace else []),
    ]
    print(f"  $ {shlex.join(argv)}")
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=900)
    return ChildReport(**json.loads(done.stdout))


def in_process(count: int) -> None:
    print(f"\n== 1. in process: {count} distinct sources into Detector (default settings, atcp)")
    for six in (False, True):
        timed = run_child(count, six, trace=False)
        traced = run_child(count, six, trace=True)
        family = "IPv6 fd00:5f::1:0 + n" if six else "IPv4 16.0.0.0 + n (synthetic)"
        print(
            f"  {family}: {timed.us_per_packet:.2f} µs/packet (loop included, untraced); "
            f"tracked {timed.tracked}, evicted {timed.evicted}"
        )
        traced_mib = " ".join(f"{kib / 1024:.1f}" for kib in traced.series_kib)
        print(
            f"    tracemalloc: peak {mib(traced.peak_kib)}, end {mib(traced.series_kib[-1])};"
            f" every 100k packets (MiB): {traced_mib}"
        )
        second_half = traced.series_kib[-1] - traced.series_kib[len(traced.series_kib) // 2]
        rss_mib = " ".join(f"{kib / 1024:.0f}" for kib in timed.series_kib)
        print(
            f"    VmRSS: {mib(timed.before_kib)} before, {mib(timed.series_kib[-1])} after, "
            f"VmHWM {mib(timed.peak_kib)}; every 100k packets (MiB): {rss_mib}"
        )
        ok = traced.peak_kib <= TARGET_DISTINCT_MIB * 1024
        print(
            f"    target ≤ {TARGET_DISTINCT_MIB} MiB for 1M distinct sources: {verdict(ok)} "
            f"(tracemalloc peak); second half {second_half / 1024:+.1f} MiB"
        )


# --- 2. and 3. the live daemon ---------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """One daemon run against one sender run; sample times in seconds from the daemon's
    start, ``flood_from``/``flood_to`` the sender's span."""

    flood: floodlab.Flood
    sent: floodlab.Sent
    stats: dict[str, int]
    samples: list[tuple[float, int]]
    idle_kib: int
    flood_from: float
    flood_to: float
    softnet: int
    link: int
    exit_code: int

    @property
    def peak_kib(self) -> int:
        return max(kib for _, kib in self.samples)

    def during(self) -> list[tuple[float, int]]:
        """(seconds into the flood, KiB) while the sender ran."""
        return [
            (at - self.flood_from, kib)
            for at, kib in self.samples
            if self.flood_from <= at <= self.flood_to
        ]


def cpu_ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # utime + stime


def wait_idle(pid: int, deadline: float = DRAIN_DEADLINE) -> None:
    """Wait until the daemon has drained its ring: < 5% of a CPU over half a second."""
    hertz = os.sysconf("SC_CLK_TCK")
    end = time.monotonic() + deadline
    before = cpu_ticks(pid)
    while before is not None and time.monotonic() < end:
        time.sleep(0.5)
        after = cpu_ticks(pid)
        if after is None or (after - before) / hertz < IDLE_CPU_SHARE * 0.5:
            return
        before = after


def live_phase(
    lab: netns.Lab, binary: Path, directory: Path, flood: floodlab.Flood, *, service: bool = False
) -> Phase:
    """A fresh daemon, its idle RSS, the sender's run, the drain, the stop. ``service``: as
    the packaged service runs it (bans on through nftables and the store, no events stream)
    instead of a dry run with an events stream."""
    daemon = Daemon.start(lab, directory, mode="atcp", dry_run=not service, events=not service)
    sampler = floodlab.RssSampler(daemon.pid)
    try:
        time.sleep(SETTLE)
        idle = floodlab.rss_kib(daemon.pid) or 0
        softnet, link = floodlab.softnet_drops(), floodlab.link_drops(lab)
        print(f"  $ {floodlab.command_text(lab, binary, flood)}")
        began = sampler.mark()
        sent = floodlab.result(floodlab.start(lab, binary, flood), flood.seconds + 60)
        ended = sampler.mark()
        wait_idle(daemon.pid)
        softnet, link = floodlab.softnet_drops() - softnet, floodlab.link_drops(lab) - link
    finally:
        code, stderr = daemon.stop()
        samples = sampler.stop()
    return Phase(flood, sent, statistics(stderr), samples, idle, began, ended, softnet, link, code)


def account(phase: Phase) -> str:
    """Where every frame went, and how many are missing, if any."""
    packets = phase.stats.get("kernel_packets", 0)
    drops = phase.stats.get("kernel_drops", 0)
    missing = phase.sent.sent - packets - phase.link - phase.softnet
    rest = "" if missing == 0 else f"; unaccounted {missing:+d}"
    return (
        f"sent {phase.sent.sent} = socket {packets} (handled {packets - drops}, ring drops "
        f"{drops}) + veth drops {phase.link} + softnet drops {phase.softnet} (global){rest}"
    )


def sender_line(phase: Phase) -> str:
    s = phase.sent
    return (
        f"sender {s.pps / 1e3:.1f} kpps for {s.seconds:.1f} s ({s.sent} frames, {s.refused} "
        f"refused); daemon exit {phase.exit_code}"
    )


def report_distinct(count: int, phase: Phase) -> None:
    s = phase.stats
    growth = phase.peak_kib - phase.idle_kib
    print(f"  {count} sources: {sender_line(phase)}")
    print(f"    {account(phase)}")
    print(
        f"    tracked {s.get('tracked_sources')}, evicted {s.get('sources_evicted')}; VmRSS idle "
        f"{mib(phase.idle_kib)}, max {mib(phase.peak_kib)} (+{mib(growth)}), "
        f"after {mib(phase.samples[-1][1])}"
    )


def last_rise(series: Sequence[tuple[float, int]]) -> float:
    """When the series last went up by more than 0.5 MiB over its previous maximum."""
    top, when = 0, 0.0
    for at, kib in series:
        if kib > top + 512:
            when = at
        top = max(top, kib)
    return when


def report_flood(phase: Phase) -> None:
    s = phase.stats
    during = phase.during()
    length = phase.flood_to - phase.flood_from
    half = [kib for at, kib in during if at >= length / 2]
    growth = (max(half) - half[0]) / 1024 if half else 0.0
    print(f"  {sender_line(phase)}")
    print(f"    {account(phase)}")
    rate = s.get("ring_handled", 0) / phase.sent.seconds / 1e3
    print(
        f"    the daemon handled {rate:.1f} kpps on average; tracked {s.get('tracked_sources')}, "
        f"evicted {s.get('sources_evicted')}"
    )
    series = " ".join(f"{kib / 1024:.0f}" for _, kib in during[::5])
    print(f"    VmRSS every 2.5 s of the flood (MiB): {series}")
    flat = "flat" if growth <= FLAT_MIB else "NOT flat"
    print(
        f"    idle {mib(phase.idle_kib)}, max {mib(phase.peak_kib)}; growth over the last half "
        f"{growth:+.1f} MiB: {flat} (≤ {FLAT_MIB:.0f} MiB); last rise at "
        f"{last_rise(during):.1f} s of {length:.1f} s"
    )
    bound = RING_MIB + FLOOD_SLACK_MIB
    ok = phase.peak_kib <= bound * 1024
    print(
        f"    target max RSS ≤ ring {RING_MIB} + {FLOOD_SLACK_MIB} = {bound} MiB: {verdict(ok)} "
        f"({mib(phase.peak_kib)})"
    )


def print_daemon_command(lab: netns.Lab, directory: Path) -> None:
    """Start and stop one daemon just to show its command line as the phases run it."""
    probe = Daemon.start(lab, directory, mode="atcp", dry_run=True)
    probe.stop()
    args = probe.proc.args  # ip netns exec NS python -m portsentinel run ...
    assert isinstance(args, list)
    argv = [str(arg) for arg in args]
    print(f"  daemon: {shlex.join(argv)}  (a fresh one per run, in its own directory)")


def distinct_sources(lab: netns.Lab, binary: Path, tmp: Path, rate: int) -> None:
    print(f"\n== 2. live daemon, distinct sources, sender paced at {rate} pps")
    for count, first in DISTINCT:
        seconds = count / rate + 30 if rate else 60
        flood = floodlab.Flood(
            first=first, sources=count, count=count, rate=rate, seconds=seconds, ports=PORTS
        )
        report_distinct(count, live_phase(lab, binary, tmp / f"d{count}", flood))


def max_flood(lab: netns.Lab, binary: Path, tmp: Path, seconds: float) -> None:
    print(
        f"\n== 3. flood at the sender's maximum for {seconds:.0f} s, "
        f"{floodlab.SPOOF4_COUNT} forged IPv4 sources in random order"
    )
    flood = floodlab.Flood(count=FLOOD_FRAMES, seconds=seconds, ports=PORTS)
    report_flood(live_phase(lab, binary, tmp / "flood", flood))
    print("  the same as the packaged service runs: bans on (nftables, store), no --events")
    report_flood(live_phase(lab, binary, tmp / "flood-service", flood, service=True))


def live(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as name, netns.Lab.create("psm") as lab:
        tmp = Path(name)
        binary = floodlab.build(tmp)
        print(f"\n  $ cc -O2 -Wall -Wextra -o {binary} {floodlab.SOURCE_C}")
        print_daemon_command(lab, tmp / "probe")
        if args.only != "flood":
            distinct_sources(lab, binary, tmp, args.rate)
        max_flood(lab, binary, tmp, args.flood_seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--rate", type=int, default=DEFAULT_RATE, help="distinct-source runs: pps (0: maximum)"
    )
    parser.add_argument("--flood-seconds", type=float, default=25.0)
    parser.add_argument("--count", type=int, default=1_000_000, help="in-process packets")
    parser.add_argument(
        "--only", choices=("detector", "live", "flood"), help="one part (flood: part 3 only)"
    )
    parser.add_argument("--detector-child", type=int, metavar="N", help=argparse.SUPPRESS)
    parser.add_argument("--six", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.detector_child is not None:
        detector_child(args.detector_child, args.six, args.trace)
        return 0
    print(
        f"machine: {os.cpu_count()} CPUs, kernel {os.uname().release}, "
        f"Python {sys.version.split()[0]}"
    )
    print(f"load average before: {floodlab.load_average()} (other work on the machine skews rates)")
    if args.only in (None, "detector"):
        in_process(args.count)
    if args.only != "detector":
        reason = floodlab.unavailable()
        if reason:
            print(f"live parts skipped: {reason}")
            return 1
        live(args)
    print(f"load average after: {floodlab.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
