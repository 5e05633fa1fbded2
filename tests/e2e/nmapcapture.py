"""Real nmap captures, made in a ``netns.Lab``: what the replay end-to-end test and
``bench/replay_vs_read.py`` share.

tcpdump listens on the target's veth end (pcap, Ethernet, snaplen 128) while nmap scans the
target from the scanner namespace. Nothing listens in the target unless ``listen`` opened a
port, so every other port answers with an RST (TCP) or an ICMP port unreachable (UDP). Every
packet stays inside the lab (198.18.0.0/24, fd00:5e::/64, no default route). A recording is
complete only when tcpdump wrote every packet its filter received and the kernel dropped
none; ``record`` raises otherwise.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import netns

SNAPLEN = 128
BUFFER_KIB = 32768  # tcpdump's kernel buffer: a -T5 full-range scan is ~130k packets in 1-2 s
NMAP_TIMEOUT = 600.0
READY_TIMEOUT = 10.0
SETTLE = 0.5  # after nmap ends, for the target's last answers to reach tcpdump


class RecordingError(RuntimeError):
    """The capture could not be made, or is incomplete."""


@dataclass(frozen=True)
class Recording:
    path: Path
    argv: tuple[str, ...]  # the nmap command, as run in the scanner namespace
    captured: int  # packets, as tcpdump counted them
    seconds: float  # nmap's run time


def unavailable() -> str | None:
    """Why a capture cannot be made here (a skip reason), or None."""
    missing = [tool for tool in ("nmap", "tcpdump") if shutil.which(tool) is None]
    return netns.unavailable() or (f"needs {', '.join(missing)}" if missing else None)


def full_range_syn(target: str) -> list[str]:
    """The issue's capture: every TCP port, SYN scan, the fastest timing."""
    six = ["-6"] if ":" in target else []
    return ["nmap", "-n", "-Pn", "--disable-arp-ping", *six, "-sS", "-T5", "-p-", target]


# A TCP listener on both families, for an open port in a scan; it prints "ready" once
# listening and ends by itself after LISTEN_LIFETIME seconds if the lab has not ended it.
LISTENER = """
import socket, sys, time
server = socket.create_server(("", int(sys.argv[1])), family=socket.AF_INET6, dualstack_ipv6=True)
print("ready", flush=True)
time.sleep(float(sys.argv[2]))
"""
LISTEN_LIFETIME = 300.0


def listen(lab: netns.Lab, port: int) -> None:
    """Open TCP ``port`` in the target (IPv4 and IPv6) for as long as the lab lasts."""
    proc = lab.start(
        lab.target,
        [sys.executable, "-c", LISTENER, str(port), str(LISTEN_LIFETIME)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RecordingError(f"the listener on port {port} did not start ({proc.poll()})")


def record(lab: netns.Lab, path: Path, nmap: Sequence[str]) -> Recording:
    """Run ``nmap`` in the scanner namespace while tcpdump records the target's veth to
    ``path``; raise ``RecordingError`` unless both succeed and no packet was dropped."""
    # Immediate mode: tcpdump ended by a signal loses what waits in ring blocks not yet
    # handed over (~20 % of a short scan was lost so, with 0 reported dropped).
    tcpdump = ["tcpdump", "-n", "-i", lab.TARGET_IF, "-s", str(SNAPLEN), "-B", str(BUFFER_KIB),
               "--immediate-mode", "-Z", "root", "-w", str(path)]  # fmt: skip
    dump = lab.start(
        lab.target,
        tcpdump,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert dump.stderr is not None
    _wait_listening(dump)
    began = time.monotonic()
    try:
        scan = lab.run(lab.scanner, list(nmap), timeout=NMAP_TIMEOUT, check=False)
    finally:
        seconds = time.monotonic() - began
        time.sleep(SETTLE)
        lab.stop(dump)
    report = dump.stderr.read()
    if scan.returncode != 0:
        raise RecordingError(f"nmap failed ({scan.returncode}): {scan.stderr.strip()}")
    captured, seen = _count(report, "captured"), _count(report, "received by filter")
    dropped = _count(report, "dropped by kernel")
    if captured is None or seen is None or dropped is None:
        raise RecordingError(f"tcpdump did not report its counts: {report.strip()}")
    if dropped or captured != seen:
        raise RecordingError(
            f"tcpdump wrote {captured} of {seen} packets received ({dropped} dropped by the kernel)"
        )
    return Recording(path, tuple(nmap), captured, seconds)


def _wait_listening(dump: subprocess.Popen[str]) -> None:
    """tcpdump says "listening on" once its socket is bound: no packet is missed after it."""
    assert dump.stderr is not None
    end = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < end:
        line = dump.stderr.readline()
        if "listening on" in line:
            return
        if not line and dump.poll() is not None:
            break
    raise RecordingError(f"tcpdump did not start (status {dump.poll()})")


def _count(report: str, what: str) -> int | None:
    found = re.search(rf"(\d+) packets? {what}", report)
    return int(found.group(1)) if found else None
