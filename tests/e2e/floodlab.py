"""What the flood benchmarks and ``test_flood_hostile.py`` share: the C sender of forged SYNs
(``synflood.c``, compiled into a temporary directory), the address ranges it forges from, the
counters where packets can be lost on the way, and a sampler of a process's resident memory.

The sender runs in a lab's scanner namespace and writes whole Ethernet frames to the scanner's
veth end (see ``netns.py``): every frame goes to the lab's target and nowhere else. It is
bounded by a packet count and a time limit, and ``timeout`` bounds it once more.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import netns

SOURCE_C = Path(__file__).with_name("synflood.c")
# 198.18.0.0/15 without the lab's own /24 (its addresses and static neighbours): forged
# sources outside the target's only subnet, which it has no route back to, so its RSTs die at
# the route lookup instead of asking ARP about every one of them.
SPOOF4_FIRST = "198.18.1.0"
SPOOF4_COUNT = (1 << 17) - 256  # up to 198.19.255.255
# IPv6 sources for more distinct addresses than 198.18.0.0/15 holds; outside the lab's /64.
SPOOF6_FIRST = "fd00:5f::1:0"
SPOOF6_COUNT = 1 << 24
SLACK = 10.0  # seconds ``timeout`` grants the sender beyond its own limit (pool building)


def unavailable() -> str | None:
    """Why the sender cannot run here (a skip reason), or None."""
    reason = netns.unavailable()
    if reason is None and shutil.which("cc") is None:
        reason = "needs a C compiler (cc) for the flood sender"
    return reason


def build(directory: Path) -> Path:
    """Compile the sender into ``directory``; the path of the program."""
    binary = directory / "synflood"
    subprocess.run(
        ["cc", "-O2", "-Wall", "-Wextra", "-o", str(binary), str(SOURCE_C)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return binary


@dataclass(frozen=True)
class Flood:
    """One run of the sender: ``sources`` distinct addresses from ``first`` on, cycled until
    ``count`` frames or ``seconds`` (``rate`` 0: as fast as it goes), optionally pinned to
    one CPU."""

    first: str = SPOOF4_FIRST
    sources: int = SPOOF4_COUNT
    count: int = 1_000_000
    seconds: float = 10.0
    ports: tuple[int, int] = (1, 1000)
    per_source: int = 1  # distinct ports each forged source sends to
    rate: int = 0
    shuffle: bool = True
    udp: bool = False
    seed: int = 1
    cpu: int | None = None  # pin the sender (and so, on veth, the target's receive path)

    def argv(self, binary: Path, lab: netns.Lab) -> list[str]:
        six = ":" in self.first
        pin = [] if self.cpu is None else ["taskset", "-c", str(self.cpu)]
        return [
            *pin, "timeout", str(self.seconds + SLACK), str(binary),
            "-i", lab.SCANNER_IF,
            "-s", lab.link_address(lab.scanner, lab.SCANNER_IF),
            "-d", lab.link_address(lab.target, lab.TARGET_IF),
            "-t", lab.TARGET6 if six else lab.TARGET4,
            "-f", self.first, "-n", str(self.sources),
            "-c", str(self.count), "-T", str(self.seconds),
            "-p", f"{self.ports[0]}-{self.ports[1]}", "-k", str(self.per_source),
            "-r", str(self.rate),
            "-x", str(self.seed), *(["-S"] if self.shuffle else []), *(["-u"] if self.udp else []),
        ]  # fmt: skip


@dataclass(frozen=True)
class Sent:
    """What the sender reports: frames the kernel took, frames it refused, time, rate."""

    sent: int
    refused: int
    seconds: float
    pps: float


def start(lab: netns.Lab, binary: Path, flood: Flood) -> subprocess.Popen[str]:
    """Start the sender in the scanner namespace; ``result`` waits for its report."""
    return lab.start(
        lab.scanner, flood.argv(binary, lab), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def result(proc: subprocess.Popen[str], deadline: float) -> Sent:
    out, err = proc.communicate(timeout=deadline)
    if proc.returncode != 0 or not out.strip():
        raise AssertionError(f"sender exit {proc.returncode}: {err.strip()}")
    report = json.loads(out.strip().splitlines()[-1])
    return Sent(report["sent"], report["refused"], report["seconds"], report["pps"])


def command_text(lab: netns.Lab, binary: Path, flood: Flood) -> str:
    """The sender's command as run, for a benchmark's printout."""
    return " ".join(["ip", "netns", "exec", lab.scanner, *flood.argv(binary, lab)])


# --- where packets can be lost -------------------------------------------------------------


def softnet_drops() -> int:
    """Column 2 of ``/proc/net/softnet_stat``, summed over CPUs: frames dropped because a
    CPU's input backlog was full. Per CPU and global to the kernel, not to a namespace: take
    it before and after, and read the difference as an upper bound for the lab's share."""
    total = 0
    for line in Path("/proc/net/softnet_stat").read_text().splitlines():
        fields = line.split()
        if len(fields) > 1:
            total += int(fields[1], 16)
    return total


def link_drops(lab: netns.Lab) -> int:
    """Frames the lab's veth pair dropped: the scanner end's tx and the target end's rx."""
    total = 0
    for ns, dev in ((lab.scanner, lab.SCANNER_IF), (lab.target, lab.TARGET_IF)):
        done = lab.run(ns, ["ip", "-j", "-s", "link", "show", "dev", dev], timeout=10)
        stats = json.loads(done.stdout)[0]["stats64"]
        total += stats["tx"]["dropped"] + stats["rx"]["dropped"]
    return total


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine changes every rate."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --- resident memory -----------------------------------------------------------------------


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


class RssSampler:
    """Samples a process's VmRSS every ``period`` seconds in a thread: (seconds since start,
    KiB) pairs, until ``stop`` or the process ends."""

    def __init__(self, pid: int, period: float = 0.5) -> None:
        self.pid = pid
        self.period = period
        self.samples: list[tuple[float, int]] = []
        self._done = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            kib = rss_kib(self.pid)
            if kib is None:
                return
            self.samples.append((time.monotonic() - self._started, kib))
            self._done.wait(self.period)

    def mark(self) -> float:
        """Seconds since the sampler started (to cut the series into phases)."""
        return time.monotonic() - self._started

    def stop(self) -> list[tuple[float, int]]:
        self._done.set()
        self._thread.join(5)
        return self.samples

    def max_kib(self, since: float = 0.0) -> int:
        return max((kib for at, kib in self.samples if at >= since), default=0)
