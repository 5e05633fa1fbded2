"""What ``bench/scan_ban.py`` reads off the target's veth: tcpdump's capture and its tally.

``capture`` runs tcpdump in a lab's target namespace (nanosecond kernel timestamps, one
classic pcap file); ``tally`` reads the file back: the scan's probes that reached the target
and the replies that left it for the scanner (TCP RST or SYN-ACK, any UDP, ICMP or ICMPv6 port
unreachable), each against the ban time. Parsing is plain ``struct`` on Ethernet frames (veth),
IPv4 and IPv6 without extension headers, which is what nmap sends and the kernel answers.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import shlex
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))

import netns

SNAPLEN = 160  # an ICMPv6 port unreachable quoting the IPv6 and UDP headers is 110 bytes
TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58
RST, SYN_ACK = 0x04, 0x12
PCAP_MICRO, PCAP_NANO = 0xA1B2C3D4, 0xA1B23C4D


@contextlib.contextmanager
def capture(
    lab: netns.Lab, path: Path, cpu: str, note: Callable[[str], None]
) -> Iterator[list[str]]:
    """tcpdump on the target's veth while the block runs (``cpu``: its CPU list, "" for any).
    Yields a list that receives a note once tcpdump has stopped, if the kernel dropped any."""
    pin = ["taskset", "-c", cpu] if cpu else []
    argv = [*pin, "tcpdump", "-i", lab.TARGET_IF, "-n", "-s", str(SNAPLEN), "-Z", "root",
            "--time-stamp-precision=nano", "-w", str(path)]  # fmt: skip
    note(f"ip netns exec {lab.target} {shlex.join(argv)}")
    proc = lab.start(lab.target, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    notes: list[str] = []
    try:
        line = proc.stderr.readline().decode(errors="replace")
        if "listening on" not in line:
            raise RuntimeError(f"tcpdump did not start: {line.strip()}")
        yield notes
    finally:
        netns.Lab.stop(proc)
        rest = proc.stderr.read().decode(errors="replace")
        dropped = re.search(r"(\d+) packets? dropped by kernel", rest)
        if dropped and dropped.group(1) != "0":
            notes.append(f"tcpdump: {dropped.group(0)}")


def read_pcap(data: bytes) -> Iterator[tuple[float, bytes]]:
    """(timestamp, frame) of each record of a classic pcap file, micro- or nanoseconds."""
    if len(data) < 24:
        return
    for order in ("<", ">"):
        magic = struct.unpack_from(order + "I", data)[0]
        if magic in (PCAP_MICRO, PCAP_NANO):
            break
    else:
        raise ValueError("not a pcap file")
    scale = 1e-9 if magic == PCAP_NANO else 1e-6
    offset = 24
    while offset + 16 <= len(data):
        sec, frac, length, _orig = struct.unpack_from(order + "IIII", data, offset)
        offset += 16
        yield sec + frac * scale, data[offset : offset + length]
        offset += length


def decode(frame: bytes) -> tuple[str, str, int, bytes] | None:
    """An Ethernet frame -> (source, destination, IP protocol, layer-4 bytes); None if it is
    neither IPv4 nor IPv6."""
    if len(frame) < 14:
        return None
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    ip = frame[14:]
    if ethertype == 0x0800 and len(ip) >= 20:
        header = (ip[0] & 0x0F) * 4
        src, dst = ipaddress.IPv4Address(ip[12:16]), ipaddress.IPv4Address(ip[16:20])
        return str(src), str(dst), ip[9], ip[header:]
    if ethertype == 0x86DD and len(ip) >= 40:
        src6, dst6 = ipaddress.IPv6Address(ip[8:24]), ipaddress.IPv6Address(ip[24:40])
        return str(src6), str(dst6), ip[6], ip[40:]
    return None


def reply_port(proto: int, l4: bytes) -> tuple[int, int] | None:
    """The (protocol, target port) a reply answers for: TCP RST or SYN-ACK, any UDP, ICMP or
    ICMPv6 port unreachable (the port of the datagram it quotes); None for anything else."""
    if proto == TCP and len(l4) >= 14:
        flags = l4[13]
        if flags & RST or flags & SYN_ACK == SYN_ACK:
            return TCP, struct.unpack_from("!H", l4, 0)[0]
    elif proto == UDP and len(l4) >= 8:
        return UDP, struct.unpack_from("!H", l4, 0)[0]
    elif proto == ICMP and len(l4) >= 8 + 20 + 4 and l4[0] == 3 and l4[1] == 3:
        inner = l4[8:]
        header = (inner[0] & 0x0F) * 4
        if len(inner) >= header + 4:
            return inner[9], struct.unpack_from("!H", inner, header + 2)[0]
    elif proto == ICMP6 and len(l4) >= 8 + 40 + 4 and l4[0] == 1 and l4[1] == 4:
        inner = l4[8:]
        return inner[6], struct.unpack_from("!H", inner, 42)[0]
    return None


@dataclass(frozen=True)
class Tally:
    first_probe: float | None  # kernel timestamp of the scan's first probe on the veth
    probes_before: int  # probes that reached the target before the ban
    answered_before: int  # distinct target ports that answered before the ban
    answered: int  # distinct target ports that answered in the whole capture
    replies: int  # reply packets in the whole capture
    # Kernel timestamp of the last answer in the capture: once the ban is in the kernel the
    # target answers no more, so this is the ban's moment by the kernel's own clock, within
    # the gap between two probes (no monitor process to be scheduled).
    last_answer: float | None = None


def tally(data: bytes, scanner: str, target: str, proto: int, ban: float | None) -> Tally:
    """The probes of ``proto`` from ``scanner`` to ``target`` and the replies back, counted
    against ``ban`` (a wall-clock time; None: no ban, everything counts as before it)."""
    probes: list[float] = []
    replies: list[tuple[float, tuple[int, int]]] = []
    for when, frame in read_pcap(data):
        decoded = decode(frame)
        if decoded is None:
            continue
        src, dst, ip_proto, l4 = decoded
        if src == scanner and dst == target and ip_proto == proto:
            probes.append(when)
        elif src == target and dst == scanner and (port := reply_port(ip_proto, l4)):
            replies.append((when, port))
    limit = ban if ban is not None else float("inf")
    return Tally(
        first_probe=min(probes) if probes else None,
        probes_before=sum(1 for t in probes if t < limit),
        answered_before=len({port for t, port in replies if t < limit}),
        answered=len({port for _t, port in replies}),
        replies=len(replies),
        last_answer=max(t for t, _port in replies) if replies else None,
    )
