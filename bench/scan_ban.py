"""Real nmap scans against PortSentinel and Debian's PortSentry 1.2, side by side: how fast
each bans the scanner, and how many ports answered the scanner before the ban.

Every scan gets a fresh lab (``tests/e2e/netns.py``: two namespaces joined by veth, 198.18.0.0/15
and fd00::/8 only, no default route) and a fresh daemon with a fresh state directory in its
target namespace, so the scanner (198.18.0.2 / fd00:5e::2) is always new to the daemon, nothing
of an earlier ban is left in the kernel (1.2's iptables rules outlive it), and both daemons
start from the same idle state: started, then left alone for ``--settle`` seconds. The rows
alternate within each scan kind and run, so 1.2 and PortSentinel see the same conditions.

Rows: ``portsentry12``: Debian's portsentry 1.2 (``apt-get download`` + ``dpkg -x``, never
installed; ``bench/portsentry12.py``), ``-atcp`` and ``-audp`` as two processes as Debian's
service runs them, Debian's portsentry.conf with BLOCK_TCP=1, BLOCK_UDP=1 and KILL_ROUTE
``/usr/sbin/iptables -I INPUT -s $TARGET$ -j DROP`` (Debian's own KILL_ROUTE is ``route add
... reject``; the iptables rule is what ``nft monitor`` can time, as in bench/throughput.py),
its KILL_HOSTS_DENY as shipped (1.2 writes hosts.deny before it runs KILL_ROUTE). IPv4 only:
1.2 has no IPv6. ``default``: ``portsentinel run --mode atcp,audp`` with the embedded defaults
(BLOCK on, nftables backend; only the path settings point into a temporary directory).
``debian``: the same with Debian's portsentry.conf (``tests/fixtures/config/debian``; its ignore
file from portsentry.ignore.static, BLOCK_TCP=1, BLOCK_UDP=1; hosts.deny into the temporary
directory). ``hold`` (not run unless named in ``--only``): the embedded defaults with
KERNEL_HOLD=1. Each PortSentinel row with and without ``--events FILE``. Daemons are pinned to
``--cpu`` (default 1), nmap and tcpdump to the other CPU.

Per scan (``nmap -n -Pn -T4 --max-retries 1 --host-timeout 60s KIND -p PORTS TARGET``, -Pn so
the first packet is a probe; the target's ICMP rate limits lifted, per destination and the
namespace's global budget, so every closed UDP port answers at once): tcpdump on the target's
veth (nanosecond kernel timestamps) and ``nft monitor`` in the target namespace (the set
element for PortSentinel, ``nft monitor rules`` for 1.2's iptables-nft rule; each line timed
on receipt with ``time.time()``) give
- first probe -> ban: the first probe's kernel timestamp on the target's veth to the ban's
  monitor line;
- first probe -> last answer: to the target's last reply in the capture, both by the kernel's
  clock. Once the ban is in the kernel the scanner gets no answer, so this is when the ban
  took effect, within the gap between two probes; unlike the monitor line it does not wait
  for ``nft monitor`` to be scheduled and its line read (measured: the monitor line came
  0.6-5.8 ms after the last answer for PortSentinel, 0.2-0.7 ms for 1.2, medians of the runs
  of 2026-12-07 in bench/README.md);
- detect -> ban: the daemon's own record of its first decision to the ban. Sources: 1.2, its
  syslog line's receipt (the log receiver of portsentry12.py); PortSentinel with --events, the
  first event's ``time`` (the loop turn that read the probe); without, the receipt of its
  first ``attackalert`` line on standard error, which it writes at the end of a loop turn (it
  can come after the ban: a negative figure). The source is printed with each figure; probe
  -> detect is the first probe to that record;
- ports answered before the ban: distinct target ports from which a reply (TCP RST or SYN-ACK,
  ICMP/ICMPv6 port unreachable, UDP) left the target for the scanner before the ban; also
  all replies in the capture, which ends ``--after-ban`` seconds after the ban (nmap is stopped
  then: a banned scan only waits for time-outs).

``--src DIR`` runs another tree's PortSentinel (before/after): the script re-runs itself with
PYTHONPATH starting at DIR, which the daemons (``python -m portsentinel``) inherit.
``--before DIR`` runs each PortSentinel row twice in turn, the second time (``(before)``) with
DIR first in the daemon's PYTHONPATH: both trees and 1.2 alternate within each run and kind.
``--trace`` times the stages of the first ban inside each PortSentinel daemon
(``bench/tracehook``, ``bench/scan_trace.py``) and prints them per scan and as medians.

Needs root, iproute2, nft, nmap, tcpdump, taskset, unshare, iptables (iptables-nft) and apt-get
(for 1.2). Every daemon and firewall command runs in a lab's target namespace; every file in a
temporary directory (``--keep`` keeps it: logs with receipt times, captures). The capture and
its tally are ``bench/scan_capture.py``, the daemons and their ban watch
``bench/scan_subjects.py``. Prints a line per scan (with the load average when it began), a
table per scan kind and the commands; asserts nothing.
Usage: python3 bench/scan_ban.py [--runs N] [--kinds sS,sU] [--only portsentry12,default,debian]
[--events both|on|off] [--no-ipv6] [--ports 1-1024] [--cpu 1] [--src DIR] [--before DIR]
[--trace] [--keep]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ban_latency
import netns
import portsentry12
import scan_trace
from scan_capture import capture, tally
from scan_subjects import BanWatch, PortSentinel, PortSentry12, Subject

import portsentinel

TOOLS = ("ip", "nft", "nmap", "tcpdump", "taskset", "unshare", "iptables", "apt-get", "dpkg")
KINDS = ("sS", "sF", "sN", "sX", "sU")
NMAP_TIMEOUT = 60  # nmap's --host-timeout, seconds; the script ends it at +10 s in any case
NO_BAN_GRACE = 3.0  # after nmap ended without a ban, how long to wait for one
# The target's ICMP limits lifted (per destination and the namespace's global budget), so
# every closed UDP port answers at once: the replies count how fast the ban came, not the
# kernel's limiter (Debian's defaults: 1 per second and destination, 1000/s with a burst of 50).
ICMP_UNLIMITED = (
    "net.ipv4.icmp_ratelimit=0",
    "net.ipv6.icmp.ratelimit=0",
    "net.ipv4.icmp_msgs_per_sec=1000000",
    "net.ipv4.icmp_msgs_burst=1000000",
)


# --- what runs: rows and scans ---------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    config: str  # portsentry12, default, debian
    events: bool = False
    before: str = ""  # --before: another tree's src/ for this row's daemon

    @property
    def name(self) -> str:
        events = " --events" if self.events else ""
        return self.config + events + (" (before)" if self.before else "")

    @property
    def detect_source(self) -> str:
        if self.config == "portsentry12":
            return "syslog receipt"
        return "event time" if self.events else "log receipt"


@dataclass(frozen=True)
class Scan:
    kind: str  # nmap's scan letters: sS, sF, sN, sX, sU
    six: bool

    @property
    def proto(self) -> int:
        return 17 if self.kind == "sU" else 6

    @property
    def name(self) -> str:
        return f"-{self.kind}" + (" -6" if self.six else "")


@dataclass
class Result:
    row: Row
    scan: Scan
    load: float = 0.0  # the 1-minute load average when the scan began
    first_probe: float | None = None
    detected: float | None = None
    banned: float | None = None
    probes_before: int = 0
    answered_before: int = 0
    answered: int = 0
    replies: int = 0
    last_answer: float | None = None
    stages: dict[str, float] | None = None  # --trace: where the first ban's time went
    notes: list[str] = field(default_factory=list)

    def to_ban(self, start: float | None) -> float | None:
        """Milliseconds from ``start`` to the ban."""
        if start is None or self.banned is None:
            return None
        return (self.banned - start) * 1000

    def to_last_answer(self) -> float | None:
        """Milliseconds from the first probe to the target's last answer (kernel clock)."""
        if self.first_probe is None or self.last_answer is None or self.banned is None:
            return None
        return (self.last_answer - self.first_probe) * 1000

    def probe_to_detect(self) -> float | None:
        if self.first_probe is None or self.detected is None:
            return None
        return (self.detected - self.first_probe) * 1000

    def line(self) -> str:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f} ms"

        return (
            f"{self.row.name:<22} {self.scan.name:<7} load {self.load:.2f}: "
            f"first probe -> ban {ms(self.to_ban(self.first_probe))}"
            f" (-> last answer {ms(self.to_last_answer())})"
            f", detect -> ban {ms(self.to_ban(self.detected))} ({self.row.detect_source})"
            f", probe -> detect {ms(self.probe_to_detect())}; probes before ban "
            f"{self.probes_before}, ports answered before ban {self.answered_before} "
            f"(of {self.answered} answered, {self.replies} replies)"
            + (f"  [{'; '.join(self.notes)}]" if self.notes else "")
            + (f"\n    {scan_trace.line(self.stages)}" if self.stages else "")
        )


class Commands:
    """The exact command lines of the first scan of each kind of thing, for the report."""

    def __init__(self) -> None:
        self.lines: dict[str, str] = {}

    def note(self, key: str, line: str) -> None:
        self.lines.setdefault(key, line)


# --- one scan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    root: Path | None  # portsentry 1.2's unpacked tree
    base: Path
    ports: str
    cpu: str  # the daemons' CPUs ("" for no pinning)
    other_cpu: str  # nmap's and tcpdump's
    settle: float
    after_ban: float
    trace: bool = False


def nmap_argv(scan: Scan, ports: str, cpu: str, target: str) -> list[str]:
    return [*(["taskset", "-c", cpu] if cpu else []), "nmap", "-n", "-Pn", "-T4",
            "--max-retries", "1", "--host-timeout", f"{NMAP_TIMEOUT}s",
            *(["-6"] if scan.six else []), f"-{scan.kind}", "-p", ports, target]  # fmt: skip


def start_subject(lab: netns.Lab, row: Row, run: Path, setup: Setup, cmd: Commands) -> Subject:
    if row.config == "portsentry12":
        assert setup.root is not None
        every = ",".join(map(str, sorted(os.sched_getaffinity(0))))
        return PortSentry12(lab, run, setup.root, setup.cpu or every, cmd.note)
    return PortSentinel(lab, run, row.config, events=row.events, cpu=setup.cpu, note=cmd.note,
                        trace=setup.trace, src=row.before)  # fmt: skip


def scan_once(row: Row, scan: Scan, number: int, setup: Setup, cmd: Commands) -> Result:
    """One scan in a fresh lab against a fresh daemon; the lab is gone when this returns."""
    result = Result(row, scan, load=os.getloadavg()[0])
    run = setup.base / f"{number:04d}-{row.config}{'-events' if row.events else ''}"
    run.mkdir(parents=True)
    with netns.Lab.create("psb") as lab:
        # systemd's syslog queue (1.2 logs through it), not the kernel's 10
        lab.run(lab.target, ["sysctl", "-qw", *ICMP_UNLIMITED, "net.unix.max_dgram_qlen=512"])
        scanner, target = (lab.SCANNER6, lab.TARGET6) if scan.six else (lab.SCANNER4, lab.TARGET4)
        subject = start_subject(lab, row, run, setup, cmd)
        try:
            time.sleep(setup.settle)
            argv = nmap_argv(scan, setup.ports, setup.other_cpu, target)
            cmd.note(f"nmap {scan.name}", f"ip netns exec {lab.scanner} {shlex.join(argv)}")
            note = functools.partial(cmd.note, "capture")
            with capture(lab, run / "scan.pcap", setup.other_cpu, note) as notes:
                nmap = lab.start(lab.scanner, argv, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)  # fmt: skip
                result.banned = watch_scan(subject.watch, nmap, scanner, setup.after_ban)
                netns.Lab.stop(nmap)
                time.sleep(0.05)  # the last replies onto the capture
            result.notes.extend(notes)
        finally:
            result.notes.extend(subject.stop())
        result.detected = subject.detection(scanner)
    counted = tally((run / "scan.pcap").read_bytes(), scanner, target, scan.proto, result.banned)
    result.first_probe = counted.first_probe
    result.probes_before = counted.probes_before
    result.answered_before = counted.answered_before
    result.answered = counted.answered
    result.replies = counted.replies
    result.last_answer = counted.last_answer
    trace = scan_trace.load(run / "trace.json") if setup.trace else None
    if trace is not None:
        result.stages = scan_trace.breakdown(trace, counted.first_probe)
    if result.banned is None:
        result.notes.append("no ban")
    return result


def watch_scan(
    watch: BanWatch, nmap: subprocess.Popen[Any], scanner: str, after_ban: float
) -> float | None:
    """The ban time of ``scanner`` (None if none came); returns ``after_ban`` seconds after the
    ban, or once nmap ended and no ban followed within NO_BAN_GRACE."""
    end = time.monotonic() + NMAP_TIMEOUT + 10
    ended: float | None = None
    while time.monotonic() < end:
        banned = watch.wait_ban(scanner, 0.05)
        if banned is not None:
            time.sleep(max(0.0, banned + after_ban - time.time()))
            return banned
        if nmap.poll() is not None:
            ended = ended or time.monotonic()
            if time.monotonic() - ended > NO_BAN_GRACE:
                return None
    return None


# --- the report -------------------------------------------------------------------------------


def percentile(values: Sequence[float], share: float) -> float:
    return ban_latency.percentile(values, share)


def spread(values: Sequence[float]) -> str:
    if not values:
        return "- / -"
    return f"{statistics.median(values):.2f} / {percentile(values, 0.95):.2f}"


def report(results: Sequence[Result], rows: Sequence[Row], scans: Sequence[Scan]) -> None:
    print("\nmedian / p95 in ms (p95: nearest rank); ports: median of the distinct target ports "
          "that answered the scanner before the ban (median of all in the capture); last "
          "answer: the target's last reply in the capture, by the kernel's clock (a banned "
          "scanner gets none)")  # fmt: skip
    header = (
        "| row | scans banned | first probe -> ban | first probe -> last answer | "
        "detect -> ban (source) | probe -> detect | probes before ban | "
        "ports answered before ban (all) |"
    )
    for scan in scans:
        print(f"\nnmap {scan.name}")
        print(header)
        print("|---|---|---|---|---|---|---|---|")
        for row in rows:
            mine = [r for r in results if r.row == row and r.scan == scan]
            if not mine:
                continue
            banned = [r for r in mine if r.banned is not None]
            first = [d for r in banned if (d := r.to_ban(r.first_probe)) is not None]
            answers = [d for r in banned if (d := r.to_last_answer()) is not None]
            detect = [d for r in banned if (d := r.to_ban(r.detected)) is not None]
            probe_detect = [d for r in mine if (d := r.probe_to_detect()) is not None]
            before = [r.answered_before for r in mine]
            total = [r.answered for r in mine]
            probes = [r.probes_before for r in banned]
            print(
                f"| {row.name} | {len(banned)} of {len(mine)} | {spread(first)} | "
                f"{spread(answers)} | "
                f"{spread(detect)} ({row.detect_source}) | {spread(probe_detect)} | "
                f"{statistics.median(probes) if probes else '-'} | "
                f"{statistics.median(before):g} ({statistics.median(total):g}) |"
            )
    traced = [r for r in results if r.stages]
    if traced:
        print("\n--trace, medians in ms (bench/scan_trace.py says what each stage is)")
        for scan in scans:
            for row in rows:
                found = [r.stages for r in traced if r.row == row and r.scan == scan and r.stages]
                if found:
                    stages = scan_trace.line(scan_trace.medians(found))
                    print(f"  {row.name:<22} {scan.name:<7} {stages}")


# --- the run ----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3, help="scans per row and kind (default 3)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="nmap scan kinds: sS,sF,...")
    parser.add_argument("--only", default="portsentry12,default,debian", help="rows to run")
    parser.add_argument("--events", choices=("both", "on", "off"), default="both",
                        help="PortSentinel rows with --events, without, or both")  # fmt: skip
    parser.add_argument("--no-ipv6", action="store_true", help="skip the nmap -6 scans")
    parser.add_argument("--ports", default="1-1024", help="nmap -p (default 1-1024)")
    parser.add_argument("--cpu", default="1", help="the daemons' CPUs ('' for no pinning)")
    parser.add_argument("--settle", type=float, default=1.0, help="idle seconds before a scan")
    parser.add_argument("--after-ban", type=float, default=1.0,
                        help="seconds the capture goes on after the ban")  # fmt: skip
    parser.add_argument("--src", help="run PortSentinel from this src/ tree (before/after)")
    parser.add_argument("--before", help="also run each PortSentinel row from this src/ tree, "
                        "alternating with this tree's")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the logs and captures")
    parser.add_argument("--trace", action="store_true",
                        help="time the first ban's stages inside PortSentinel")  # fmt: skip
    return parser.parse_args()


def use_tree(src: str | None) -> None:
    """With --src, re-run this script with PYTHONPATH starting at that tree, so the daemons
    (``python -m portsentinel``, which inherits it) and this script use the same code."""
    if not src:
        return
    tree = str(Path(src).resolve())
    current = os.environ.get("PYTHONPATH", "")
    if current.split(os.pathsep)[0] == tree:
        return
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (tree, current) if p))
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def plan(args: argparse.Namespace) -> tuple[list[Row], list[Scan]]:
    only = {name.strip() for name in args.only.split(",")}
    unknown = only - {"portsentry12", "default", "debian", "hold"}
    if unknown:
        raise SystemExit(f"--only: unknown rows {sorted(unknown)}")
    events = {"both": (False, True), "on": (True,), "off": (False,)}[args.events]
    rows = [Row("portsentry12")] if "portsentry12" in only else []
    rows += [Row(c, e) for c in ("default", "debian", "hold") if c in only for e in events]
    if args.before:  # each PortSentinel row again, run from that tree, right after it
        tree = str(Path(args.before).resolve())
        rows = [r for row in rows for r in (row, Row(row.config, row.events, tree))
                if r.config != "portsentry12" or not r.before]  # fmt: skip
    kinds = [k.strip().lstrip("-") for k in args.kinds.split(",")]
    if set(kinds) - set(KINDS):
        raise SystemExit(f"--kinds: unknown {sorted(set(kinds) - set(KINDS))}")
    scans = [Scan(k, False) for k in kinds]
    if not args.no_ipv6:
        scans += [Scan(k, True) for k in kinds]
    return rows, scans


def other_cpu(cpu: str) -> str:
    """nmap's and tcpdump's CPU: one the daemons are not pinned to ("" when none is left)."""
    if not cpu:
        return ""
    taken: set[int] = set()
    for part in cpu.split(","):
        low, _sep, high = part.partition("-")
        taken.update(range(int(low), int(high or low) + 1))
    free = sorted(os.sched_getaffinity(0) - taken)
    return str(free[0]) if free else ""


def main() -> int:
    args = parse_args()
    use_tree(args.src)
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))  # unwind: labs go
    rows, scans = plan(args)
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    reason = netns.unavailable() or (f"needs {', '.join(missing)}" if missing else None)
    if reason:
        print(f"scan_ban: {reason}", file=sys.stderr)
        return 1
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"kernel {platform.release()} (uname -r); nproc {os.cpu_count()}; "
          f"load average {load}; Python {platform.python_version()}")  # fmt: skip
    print(f"portsentinel {getattr(portsentinel, '__version__', '?')} from "
          f"{Path(portsentinel.__file__).parent}")  # fmt: skip
    root = None
    if any(row.config == "portsentry12" for row in rows):
        root = portsentry12.fetch()
        print(f"portsentry 1.2: apt-get download portsentry && dpkg -x ... {root}")
    base = Path(tempfile.mkdtemp(prefix="pst-scan-ban-"))
    setup = Setup(root, base, args.ports, args.cpu, other_cpu(args.cpu), args.settle,
                  args.after_ban, args.trace)  # fmt: skip
    cmd = Commands()
    results: list[Result] = []
    number = 0
    try:
        for run in range(args.runs):
            for scan in scans:
                for row in rows:
                    if row.config == "portsentry12" and scan.six:
                        continue  # 1.2 has no IPv6
                    number += 1
                    try:
                        result = scan_once(row, scan, number, setup, cmd)
                    except (RuntimeError, subprocess.SubprocessError, netns.LabError) as exc:
                        result = Result(row, scan, notes=[f"failed: {exc}"])
                    results.append(result)
                    print(f"run {run + 1} {result.line()}", flush=True)
        report(results, rows, scans)
        print("\ncommands (the first scan of each; lab names differ per scan):")
        for key, line in cmd.lines.items():
            print(f"  {key}: {line}")
    finally:
        if args.keep:
            print(f"run directories kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
