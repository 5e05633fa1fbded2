"""The pieces of ``bench/throughput.py``: labs, the three readers under test, loads, latency.

A *subject* is a reader the benchmark can ask "what did you handle, what did the kernel drop,
since ``before``": the C ring reader, the PortSentinel daemon (through its control socket) or
PortSentry 1.2 (its log and its raw socket's drop counter). Every lab, daemon and process
started here is ended in a ``finally``, by pid (``netns.Lab`` and ``portsentry12``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ban_latency
import ctools
import netns
import portsentry12
from daemon import ACTIVE, PORTSENTINEL, Daemon, write_config
from throughput_report import Cost, Drain, Latency, Report, Step

from portsentinel.config.setup import load_setup
from portsentinel.daemon.client import request
from portsentinel.daemon.sources import kernel_filter

__all__ = ["Cost", "Drain", "Latency", "Report", "Step"]

CLK_TCK = os.sysconf("SC_CLK_TCK")
READER_CPU = 1
LOAD = {"BLOCK_TCP": "0", "BLOCK_UDP": "0"}  # detect and log, never block: nothing cuts the load
PS_LOAD = {"BLOCK_TCP": "0", "BLOCK_UDP": "0"}
PS_BAN = {
    "BLOCK_TCP": "1",
    "BLOCK_UDP": "1",
    "KILL_ROUTE": "/usr/sbin/iptables -I INPUT -s $TARGET$ -j DROP",
}
IPERF3_PACKAGES = ("iperf3", "libiperf0", "libsctp1")
IPERF3_PORT = 5201
TOOLS = ("gcc", "nft", "iptables", "apt-get", "dpkg", "taskset", "unshare")
QUIET = 0.6  # seconds a counter must stand still before a step counts as drained
SETTLE_LIMIT = 60.0
STATS_TIMEOUT = 60.0  # a daemon busy draining a full ring answers after the lap


def unavailable() -> str | None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    return netns.unavailable() or (f"needs {', '.join(missing)}" if missing else None)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "?")  # fmt: skip
    return (
        f"machine: nproc {os.cpu_count()}, CPU {model}, kernel {platform.release()}, "
        f"Python {platform.python_version()}; veth between network namespaces on a shared VM"
    )


# --- tools ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    reader: Path
    sender: Path
    filter: Path
    portsentry: Path  # the unpacked tree of Debian's portsentry package
    iperf3: tuple[str, ...] | None  # argv prefix that runs the unpacked iperf3

    @classmethod
    def prepare(cls, base: Path, echo: Callable[[str], None]) -> Tools:
        """Compile the C tools, dump the daemon's own BPF program, fetch portsentry (and
        iperf3 when apt can get it)."""
        reader, sender = ctools.build(base, echo)
        config = write_config(base, LOAD)
        program = kernel_filter(load_setup(str(config), "atcp"))
        ctools.dump_filter(program, base / "atcp.bpf")
        print(f"  filter: {len(program)} instructions from kernel_filter(load_setup(...,'atcp')) "
              f"-> {base / 'atcp.bpf'}")  # fmt: skip
        echo(f"cd {portsentry12.CACHE}/debs && apt-get download portsentry && dpkg -x ... root")
        root = portsentry12.fetch()
        iperf3: tuple[str, ...] | None = None
        try:
            echo(f"apt-get download {' '.join(IPERF3_PACKAGES)} && dpkg -x ... (same cache)")
            tree = portsentry12.fetch_packages(IPERF3_PACKAGES)
            libs = sorted(tree.glob("usr/lib/*/libiperf.so.0"))
            iperf3 = ("env", f"LD_LIBRARY_PATH={libs[0].parent}", str(tree / "usr/bin/iperf3"))
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, IndexError) as exc:
            print(f"  iperf3 unavailable ({exc})")
        return cls(reader, sender, base / "atcp.bpf", root, iperf3)


# --- labs, daemons, counters ---------------------------------------------------------------


@contextlib.contextmanager
def lab(prefix: str) -> Iterator[netns.Lab]:
    """A fresh lab whose target accepts forged sources (rp_filter 0) and whose syslog queue is
    systemd's 512 rather than the kernel's 10 (PortSentry logs through it)."""
    with netns.Lab.create(prefix) as made:
        made.run(made.target, ["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0",
                               "net.ipv4.conf.default.rp_filter=0",
                               f"net.ipv4.conf.{made.TARGET_IF}.rp_filter=0",
                               "net.unix.max_dgram_qlen=512"])  # fmt: skip
        yield made


def pin(pid: int, cpu: int = READER_CPU) -> None:
    """Pin every thread of ``pid`` (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), {cpu})


def cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process, in clock ticks (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def settle(read: Callable[[], int], quiet: float = QUIET, limit: float = SETTLE_LIMIT) -> int:
    """Poll a counter until it has not moved for ``quiet`` seconds; its last value."""
    value, since, end = read(), time.monotonic(), time.monotonic() + limit
    while time.monotonic() < end:
        time.sleep(quiet / 3)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return value


@contextlib.contextmanager
def daemon(
    lab: netns.Lab,
    directory: Path,
    settings: Mapping[str, str],
    echo: Callable[[str], None],
    *,
    dry_run: bool = False,
) -> Iterator[Daemon]:
    """``portsentinel run --mode atcp`` as the packaged service runs it (no --events), every
    path in ``directory``, pinned to the reader CPU; stopped (by pid) on the way out. A dry
    run neither records to the store nor switches connection tracking on."""
    directory.mkdir(parents=True, exist_ok=True)
    config = write_config(directory, settings)
    argv = [*PORTSENTINEL, "run", "--mode", "atcp", "--config", str(config),
            "--state-dir", str(directory), *(["--dry-run"] if dry_run else [])]  # fmt: skip
    echo(f"ip netns exec {lab.target} {shlex.join(argv)}   # {dict(settings)}, SCAN_TRIGGER=0")
    with (directory / "stderr.log").open("wb") as err:
        proc = lab.start(lab.target, argv, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
    running = Daemon(lab, directory, proc)
    try:
        running.wait_for_line(ACTIVE)
        pin(running.pid)
        yield running
    finally:
        running.stop()


@contextlib.contextmanager
def portsentry(
    lab: netns.Lab,
    run: Path,
    tools: Tools,
    overrides: Mapping[str, str],
    echo: Callable[[str], None],
) -> Iterator[portsentry12.PortSentry]:
    run.mkdir(parents=True, exist_ok=True)
    echo(portsentry12.PortSentry.command(lab, run, tools.portsentry) + f"   # {dict(overrides)}")
    started = portsentry12.PortSentry.start(lab, run, tools.portsentry, overrides=overrides,
                                            cpu=READER_CPU)  # fmt: skip
    try:
        yield started
    finally:
        started.stop()


def rx_counters(lab: netns.Lab) -> tuple[int, int]:
    """Packets and bytes the target's veth end has received."""
    out = lab.run(lab.target, ["ip", "-s", "-j", "link", "show", "dev", lab.TARGET_IF]).stdout
    rx = json.loads(out)[0]["stats64"]["rx"]
    return int(rx["packets"]), int(rx["bytes"])


# --- the readers under test ------------------------------------------------------------------


class Subject(Protocol):
    lab: netns.Lab

    def before(self) -> None: ...
    def after(self) -> tuple[int, int]: ...  # handled, dropped since ``before``
    def cpu(self) -> int: ...  # clock ticks so far


class CReader:
    """A fresh C reader per step (its report comes at exit)."""

    def __init__(self, lab: netns.Lab, tools: Tools, echo: Callable[[str], None]) -> None:
        self.lab, self.tools, self.echo = lab, tools, echo
        self.reader: ctools.RingReader | None = None

    def before(self) -> None:
        self.reader = ctools.RingReader.start(self.lab, self.tools.reader, self.tools.filter,
                                              self.echo)  # fmt: skip

    def after(self) -> tuple[int, int]:
        assert self.reader is not None
        time.sleep(QUIET)
        report = self.reader.finish()
        return int(report["packets"]), int(report["tp_drops"])

    def cpu(self) -> int:
        return cpu_ticks(self.reader.pid) if self.reader else 0


class DaemonSubject:
    """The daemon's counters through its control socket (``stats``)."""

    def __init__(self, lab: netns.Lab, running: Daemon) -> None:
        self.lab, self.daemon = lab, running
        self.path = str(running.directory / "control.sock")
        self.base = {"ring_handled": 0, "kernel_drops": 0}

    def stats(self) -> dict[str, int]:
        answer = request(self.path, "stats", timeout=STATS_TIMEOUT)
        assert isinstance(answer, dict)
        return {str(k): int(v) for k, v in answer.items()}

    def before(self) -> None:
        self.base = self.stats()

    def after(self) -> tuple[int, int]:
        handled = settle(lambda: self.stats()["ring_handled"])
        drops = self.stats()["kernel_drops"]
        return handled - self.base["ring_handled"], drops - self.base["kernel_drops"]

    def cpu(self) -> int:
        return cpu_ticks(self.daemon.pid)


class PortSentrySubject:
    """PortSentry's detection lines (one per probe it judged) and its raw socket's drops."""

    def __init__(self, lab: netns.Lab, running: portsentry12.PortSentry) -> None:
        self.lab, self.ps = lab, running
        self.base = (0, 0)

    def before(self) -> None:
        self.base = (self.ps.detections(), self.ps.raw_drops())

    def after(self) -> tuple[int, int]:
        handled = settle(self.ps.detections)
        return handled - self.base[0], self.ps.raw_drops() - self.base[1]

    def cpu(self) -> int:
        return self.ps.cpu_ticks()


# --- loads for the cost measurement ----------------------------------------------------------


@dataclass(frozen=True)
class Load:
    probes: int  # SYN probes sent among the load
    note: str


def iperf3_load(
    lab: netns.Lab,
    tools: Tools,
    iperf3: tuple[str, ...],
    echo: Callable[[str], None],
    probe_rate: int = 0,
) -> Load:
    """A 5 s iperf3 transfer scanner -> target (both ends on CPU 0), with ``probe_rate`` SYN
    probes per second from the C sender alongside (5 s of them; none for 0)."""
    server_argv = ["taskset", "-c", "0", *iperf3, "-s", "-1", "-B", lab.TARGET4]
    client_argv = ["taskset", "-c", "0", *iperf3, "-c", lab.TARGET4, "-t", "5", "-J"]
    echo(f"ip netns exec {lab.target} {shlex.join(server_argv)}")
    server = lab.start(lab.target, server_argv, stdout=subprocess.DEVNULL)
    probes = ctools.Burst("syn", probe_rate * 5, probe_rate, 8.0, first_source="198.19.110.1")
    sent = 0
    try:
        listening(lab, IPERF3_PORT)
        sending = ctools.start_send(lab, tools.sender, probes, echo) if probe_rate else None
        echo(f"ip netns exec {lab.scanner} {shlex.join(client_argv)}")
        client = lab.run(lab.scanner, client_argv, timeout=60)
        if sending is not None:
            sent = int(ctools.finish_send(sending, probes)["syn"])
    finally:
        netns.Lab.stop(server)
    bits = json.loads(client.stdout)["end"]["sum_received"]["bits_per_second"]
    return Load(sent, f"{bits / 1e9:.1f} Gbit/s")


def listening(lab: netns.Lab, port: int, deadline: float = 10.0) -> None:
    """Wait until a TCP socket listens on ``port`` in the target (iperf3 buffers its banner)."""
    end = time.monotonic() + deadline
    while not lab.run(lab.target, ["ss", "-Hltn", f"sport = :{port}"]).stdout.strip():
        if time.monotonic() > end:
            raise RuntimeError(f"nothing listens on port {port}")
        time.sleep(0.05)


def mixed_load(
    lab: netns.Lab,
    tools: Tools,
    echo: Callable[[str], None],
    frames: int = 500_000,
    pps: int = 100_000,
) -> Load:
    """The mixed pool (90 % ACK, 2 % UDP, 8 % SYN probes): by default 500,000 frames at
    100 kpps (40,000 of them SYN probes); ``pps`` 0 is the sender's maximum."""
    burst = ctools.Burst("mixed", frames, pps, 10.0, first_source="198.19.120.1")
    sent = ctools.send(lab, tools.sender, burst, echo)
    return Load(int(sent["syn"]), f"{sent['pps']:.0f} pps")


def measure_cost(
    label: str, name: str, subject: Subject, load: Callable[[netns.Lab], Load]
) -> Cost:
    frames0, bytes0 = rx_counters(subject.lab)
    subject.before()
    ticks0 = subject.cpu()
    done = load(subject.lab)
    counted, drops = subject.after()
    ticks = subject.cpu() - ticks0
    frames1, bytes1 = rx_counters(subject.lab)
    return Cost(label, name, frames1 - frames0, bytes1 - bytes0, ticks / CLK_TCK,
                done.probes, counted, drops, done.note)  # fmt: skip


# --- first probe to ban -----------------------------------------------------------------------


class RuleWatch(ban_latency.ElementWatch):
    """``nft monitor rules``: when each source address first appears in an added rule (an
    ``iptables -I INPUT -s ADDR -j DROP`` through iptables-nft is one)."""

    monitor = ("nft", "monitor", "rules")
    prefixes = ("add rule", "insert rule")  # iptables -I inserts

    def addresses(self, line: str) -> list[str]:
        return ban_latency.ADDRESS.findall(line)


def rules_ready(watch: RuleWatch, lab: netns.Lab) -> None:
    """Wait until the monitor reports (a throw-away rule of our own), then remove that rule."""
    probe = "198.19.255.254"
    rule = ["INPUT", "-s", probe, "-j", "DROP"]
    end = time.monotonic() + ban_latency.WAIT
    while probe not in watch.seen and time.monotonic() < end:
        lab.run(lab.target, ["iptables", "-w", "-I", *rule])
        watch.wait_for([probe], 0.2)
    while lab.run(lab.target, ["iptables", "-w", "-D", *rule], check=False).returncode == 0:
        pass


def portsentry_latency(
    tools: Tools, run: Path, samples: int, echo: Callable[[str], None]
) -> Latency:
    with lab("plp") as made:
        made.run(made.target, ["iptables", "-w", "-P", "INPUT", "ACCEPT"])  # the table exists
        with portsentry(made, run, tools, PS_BAN, echo):
            echo(f"ip netns exec {made.target} nft monitor rules")
            watch = RuleWatch(made)
            try:
                rules_ready(watch, made)
                found = ban_latency.latency(made, watch, samples)
            finally:
                netns.Lab.stop(watch.proc)
    return Latency("PortSentry 1.2: iptables-nft rule (KILL_ROUTE)", samples, found)


def daemon_latency(run: Path, samples: int, echo: Callable[[str], None]) -> Latency:
    with lab("pld") as made:
        running = Daemon.start(made, run, settings=ban_latency.SETTINGS)
        try:
            pin(running.pid)
            argv: Any = running.proc.args
            echo(f"{shlex.join(str(a) for a in argv)}   # {ban_latency.SETTINGS}")
            echo(f"ip netns exec {made.target} {' '.join(ban_latency.MONITOR)}")
            watch = ban_latency.ElementWatch(made)
            try:
                ban_latency.ready(watch, made)
                found = ban_latency.latency(made, watch, samples)
            finally:
                netns.Lab.stop(watch.proc)
        finally:
            running.stop()
    return Latency("portsentinel: nft set element (nftables backend)", samples, found)
