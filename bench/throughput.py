"""Probe throughput, saturated rate, cost on normal traffic and time to ban, side by side.

PortSentinel next to a C ring reader and the real PortSentry 1.2, measured in one run on this
machine.

Each measurement builds its own closed two-namespace lab (``tests/e2e/netns.py``: veth, no
default route, nothing in the root namespace) and deletes it afterwards. Frames come from the
C sender (``c_reader/sender.c``), pinned to CPU 0; the reader under test is pinned to CPU 1
(on veth the receive softirq runs on the sending CPU, so CPU 1 holds only the reader).
Forged sources are in 198.19.0.0/16, which the target has no route to: its RSTs die at once.

1. Probe throughput: SYN probes (200 sources, the 1,021 ports atcp watches) at 5k ... 400k pps
   and as fast as the sender goes, 2 s a step, against the C reader (same BPF program, dumped
   from ``build_filter``), the daemon (``run --mode atcp``, BLOCK_TCP 0 so nothing cuts the
   load, no --events: the packaged service's shape) and PortSentry 1.2 ``-atcp`` (BLOCK_TCP 0).
   Handled: packets the C reader walked, the daemon's ``ring_handled``, PortSentry's detection
   log lines. Drops: tp_drops, the daemon's ``kernel_drops``, the raw socket's drops column.
2. Saturated: the daemon is stopped (SIGSTOP) while 1 M SYNs fill a 256 MiB ring, then
   continued; its CPU (``/proc/PID/stat`` utime+stime) over the drain gives µs per packet and
   packets per second of one core for capture + decode + detect (+ the decisions). Same for
   the C reader (CLOCK_PROCESS_CPUTIME_ID).
3. Cost on normal traffic: daemon CPU per frame received by the target while iperf3 pushes a
   bulk TCP transfer through it (2,000 SYN probes/s mixed in, every one must be counted), and
   while the mixed pool (90% ACK, 2% UDP, 8% SYN) runs: 500,000 frames at 100 kpps, and
   2,000,000 frames at the sender's maximum (as the capture study measured it).
4. First probe to ban in the kernel: ``bench/ban_latency.py``'s latency run for the daemon
   (nft set element), and the same sender and timing for PortSentry 1.2 with
   ``KILL_ROUTE="/usr/sbin/iptables -I INPUT -s $TARGET$ -j DROP"`` (``nft monitor rules``).

Needs root, iproute2, gcc, nft, iptables, apt-get (portsentry and iperf3 are downloaded and
unpacked under /tmp, never installed). Prints every command and a summary table; asserts
nothing. Usage: python3 bench/throughput.py [--sections 1234] [--samples N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ctools
import netns
import throughput_parts as parts

RATES = (5_000, 10_000, 25_000, 50_000, 100_000, 200_000, 400_000, 0)
STEP_SECONDS = 2.0
MAX_FRAMES = 1_000_000
FAILED_STEPS_TO_STOP = 2
DRAIN_FRAMES = 1_000_000
DRAIN_RING_MIB = 256


def echo(command: str) -> None:
    print(f"  $ {command}", flush=True)


# --- 1. probe throughput --------------------------------------------------------------------


def ladder(name: str, subject: parts.Subject, tools: parts.Tools) -> list[parts.Step]:
    """Step the offered SYN rate up until the subject drops twice in a row."""
    steps: list[parts.Step] = []
    failed = 0
    for rate in RATES:
        count = min(MAX_FRAMES, int(rate * STEP_SECONDS)) if rate else MAX_FRAMES
        burst = ctools.Burst("syn", count, rate, STEP_SECONDS + 3 if rate else 5.0)
        subject.before()
        sent = ctools.send(subject.lab, tools.sender, burst, echo)
        handled, drops = subject.after()
        step = parts.Step(name, rate, sent["sent"], sent["pps"], handled, drops)
        print(f"  {step.row()}", flush=True)
        steps.append(step)
        failed = 0 if step.clean else failed + 1
        if failed >= FAILED_STEPS_TO_STOP:
            break
    return steps


def throughput(tools: parts.Tools, base: Path) -> list[parts.Step]:
    print("\n== 1. probe throughput (SYN probes, 200 sources, 1,021 watched ports)")
    steps: list[parts.Step] = []
    with parts.lab("ptc") as lab:
        steps += ladder("C ring reader", parts.CReader(lab, tools, echo), tools)
    with parts.lab("ptd") as lab, parts.daemon(lab, base / "d1", parts.LOAD, echo) as d:
        steps += ladder("portsentinel", parts.DaemonSubject(lab, d), tools)
    # The same without the daemon's conntrack rule, whose cost to the kernel lowers what the
    # sender reaches: the offered rates then match the C reader's lab.
    with (
        parts.lab("ptn") as lab,
        parts.daemon(lab, base / "d0", parts.LOAD, echo, dry_run=True) as d,
    ):
        steps += ladder("portsentinel --dry-run", parts.DaemonSubject(lab, d), tools)
    with (
        parts.lab("ptp") as lab,
        parts.portsentry(lab, base / "p1", tools, parts.PS_LOAD, echo) as p,
    ):
        steps += ladder("PortSentry 1.2", parts.PortSentrySubject(lab, p), tools)
    return steps


# --- 2. saturated drain --------------------------------------------------------------------


def drain(tools: parts.Tools, base: Path) -> list[parts.Drain]:
    print(f"\n== 2. saturated: {DRAIN_FRAMES:,} SYNs fill a {DRAIN_RING_MIB} MiB ring while the "
          "reader is stopped (SIGSTOP), then it drains (SIGCONT)")  # fmt: skip
    burst = ctools.Burst("syn", DRAIN_FRAMES, 0, 10.0)
    results = []
    with parts.lab("psc") as lab:
        reader = ctools.RingReader.start(lab, tools.reader, tools.filter, echo,
                                         ring_mib=DRAIN_RING_MIB)  # fmt: skip
        os.kill(reader.pid, signal.SIGSTOP)
        sent = ctools.send(lab, tools.sender, burst, echo)
        os.kill(reader.pid, signal.SIGCONT)
        time.sleep(1.0)
        report = reader.finish()
        results.append(parts.Drain("C ring reader", sent["sent"], report["packets"],
                                   report["tp_drops"], report["cpu_seconds"]))  # fmt: skip
    settings = {**parts.LOAD, "CAPTURE_RING_MIB": str(DRAIN_RING_MIB)}
    with parts.lab("psd") as lab, parts.daemon(lab, base / "d2", settings, echo) as d:
        subject = parts.DaemonSubject(lab, d)
        subject.before()
        os.kill(d.pid, signal.SIGSTOP)
        try:
            sent = ctools.send(lab, tools.sender, burst, echo)
            time.sleep(0.1)
            ticks = parts.cpu_ticks(d.pid)
        finally:
            os.kill(d.pid, signal.SIGCONT)
        handled, drops = subject.after()
        cpu = (parts.cpu_ticks(d.pid) - ticks) / parts.CLK_TCK
        results.append(parts.Drain("portsentinel", sent["sent"], handled, drops, cpu))
    for result in results:
        print(f"  {result.row()}")
    return results


# --- 3. cost on normal traffic -------------------------------------------------------------


def cost(tools: parts.Tools, base: Path) -> list[parts.Cost]:
    print("\n== 3. cost on normal traffic (reader CPU per frame the target received)")
    print("  iperf3 frames are GSO super-frames (up to 64 KiB): one skb each on veth")
    rows: list[parts.Cost] = []
    loads: list[tuple[str, Callable[[netns.Lab], parts.Load]]] = []
    if tools.iperf3 is not None:
        run = tools.iperf3
        loads.append(("iperf3 alone", lambda lab: parts.iperf3_load(lab, tools, run, echo)))
        loads.append(
            ("iperf3 + 2k probes/s", lambda lab: parts.iperf3_load(lab, tools, run, echo, 2000))
        )
    else:
        print("  iperf3 could not be fetched: the mixed pool only")
    loads.append(("mixed 100 kpps", lambda lab: parts.mixed_load(lab, tools, echo)))
    # As the capture study measured it: 2,000,000 frames at the sender's maximum.
    loads.append(("mixed, max rate", lambda lab: parts.mixed_load(lab, tools, echo, 2_000_000, 0)))
    for n, (label, load) in enumerate(loads):
        with parts.lab("pcd") as lab, parts.daemon(lab, base / f"d3-{n}", parts.LOAD, echo) as d:
            rows.append(
                parts.measure_cost(label, "portsentinel", parts.DaemonSubject(lab, d), load)
            )
        with parts.lab("pcp") as lab, parts.portsentry(lab, base / f"p3-{n}", tools, parts.PS_LOAD,
                                                         echo) as p:  # fmt: skip
            rows.append(parts.measure_cost(label, "PortSentry 1.2",
                                           parts.PortSentrySubject(lab, p), load))  # fmt: skip
        for row in rows[-2:]:
            print(f"  {row.row()}")
    return rows


# --- 4. first probe to ban ------------------------------------------------------------------


def latency(tools: parts.Tools, base: Path, samples: int) -> list[parts.Latency]:
    print(f"\n== 4. first probe to ban in the kernel ({samples} fresh sources each)")
    results = [parts.portsentry_latency(tools, base / "p4", samples, echo),
               parts.daemon_latency(base / "d4", samples, echo)]  # fmt: skip
    for result in results:
        print(f"  {result.row()}")
    return results


# --- the run ----------------------------------------------------------------------------------


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pst-throughput-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--sections", default="1234", help="which measurements (default 1234)")
    parser.add_argument("--samples", type=int, default=30, help="bans timed per daemon")
    args = parser.parse_args()
    # A plain SIGTERM would skip every ``finally``: make it unwind, so labs and processes go.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    reason = parts.unavailable()
    if reason:
        print(f"throughput: {reason}", file=sys.stderr)
        return 1
    print(parts.machine())
    with workdir() as base:
        tools = parts.Tools.prepare(base, echo)
        report = parts.Report()
        if "1" in args.sections:
            report.steps = throughput(tools, base)
        if "2" in args.sections:
            report.drains = drain(tools, base)
        if "3" in args.sections:
            report.costs = cost(tools, base)
        if "4" in args.sections:
            report.latencies = latency(tools, base, args.samples)
    print("\n" + report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
