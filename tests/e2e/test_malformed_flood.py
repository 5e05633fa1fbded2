"""End to end: a flood of malformed frames neither stops the daemon nor hides a real scan.

The scanner namespace writes 200,000 hand-made broken IPv4 and IPv6 frames (bounded by count
and by time) straight onto its veth end through an ``AF_PACKET`` socket, while nmap runs a
real SYN scan of ports 1-50 from 198.18.0.2. Every frame is built to pass the daemon's kernel
filter, so that the decoder in Python really meets it: a valid-looking IPv4 header with TCP or
UDP (or a fragment, which the filter always lets through), or an IPv6 extension header, and
then the damage: short header lengths, lengths that contradict the capture, TCP data offsets
out of range, extension chains that run past the payload or go on too long, wrong version
nibbles. The test checks that against the daemon's own filter program (``run_filter``) and
decoder before sending anything.

Then: the daemon is still up; nmap's probes were all reported; on SIGTERM it exits 0 and its
statistics line counts every flood frame that reached it as a decode error.

Root, iproute2 and nmap; every packet stays inside the lab (see ``netns.py``). The IPv4
frames carry no header checksum, so the target's kernel drops them without a reply.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import netns
import pytest
from daemon import NMAP, NMAP_TIMEOUT, Daemon, Event, statistics

from portsentinel.capture.bpf import PACKET_HOST, run_filter
from portsentinel.config.setup import load_setup
from portsentinel.daemon.sources import kernel_filter
from portsentinel.decode import decode_ip
from portsentinel.errors import DecodeError

pytestmark = [pytest.mark.e2e]
_REASON = netns.unavailable() or (None if shutil.which("nmap") else "needs nmap")
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

Lab = netns.Lab
FLOOD_FRAMES = 200_000
FLOOD_SECONDS = 30.0  # the sender stops at whichever bound comes first
FLOOD_RATE = 25_000  # frames per second: a flood, yet no ring overflow on a 2-core machine
SCAN_PORTS = range(1, 51)
TCP, UDP = 6, 17
SRC4, DST4 = bytes([198, 18, 0, 77]), bytes([198, 18, 0, 1])
SRC6 = bytes.fromhex("fd00005e000000000000000000000002")
DST6 = bytes.fromhex("fd00005e000000000000000000000001")
MF = 0x2000  # IPv4 "more fragments": the kernel filter passes every fragment


# --- the malformed datagrams ---------------------------------------------------------------


def tcp_syn(dport: int = 80, offset: int = 5) -> bytes:
    return struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, offset << 4, 0x02, 1024, 0, 0)


def ipv4(
    proto: int, body: bytes, *, vhl: int = 0x45, total: int | None = None, frag: int = 0
) -> bytes:
    """An IPv4 datagram with checksum 0; ``vhl`` and ``total`` may lie about the lengths."""
    length = 20 + len(body) if total is None else total
    head = struct.pack("!BBHHHBBH4s4s", vhl, 0, length, 1, frag, 64, proto, 0, SRC4, DST4)
    return head + body


def ipv6(next_header: int, body: bytes, *, length: int | None = None, version: int = 6) -> bytes:
    size = len(body) if length is None else length
    head = struct.pack("!IHBB16s16s", version << 28, size, next_header, 64, SRC6, DST6)
    return head + body


def hop_by_hop(next_header: int, units: int = 0) -> bytes:
    return struct.pack("!BB", next_header, units) + bytes(6)


MALFORMED: tuple[bytes, ...] = (
    ipv4(TCP, tcp_syn(), vhl=0x44, frag=MF),  # header length below 5
    ipv4(TCP, tcp_syn(), vhl=0x55, frag=MF),  # version nibble 5
    ipv4(TCP, tcp_syn()[:10], vhl=0x4F, total=80, frag=MF),  # options past the capture
    ipv4(TCP, tcp_syn(), total=10),  # total length below the header length
    ipv4(TCP, tcp_syn(), total=30),  # TCP header cut short by the IP length
    ipv4(TCP, tcp_syn(offset=2)),  # TCP data offset below 5
    ipv4(TCP, tcp_syn(offset=15)),  # TCP data offset past the IP length
    ipv4(TCP, tcp_syn()[:10], total=40, frag=MF),  # first fragment cut short by the capture
    ipv4(UDP, struct.pack("!HHHH", 40000, 100, 8, 0), total=24),  # UDP cut by the IP length
    ipv4(UDP, b"\x9c\x40", total=40, frag=MF),  # UDP fragment cut short by the capture
    ipv6(0, hop_by_hop(TCP, units=10) + tcp_syn()),  # extension runs past the payload
    ipv6(0, hop_by_hop(0) * 17 + tcp_syn()),  # too many extension headers
    ipv6(44, b"\x06\x00\x00\x01"),  # fragment header truncated
    ipv6(TCP, tcp_syn(), length=10),  # TCP header cut short by the payload length
    ipv6(0, b"")[:30],  # IPv6 header truncated
    ipv6(0, hop_by_hop(TCP) + tcp_syn(), version=7),  # version nibble 7
)


# --- the sender: runs inside the scanner namespace ---------------------------------------------

_SENDER = r"""
import json, socket, sys, time
ifname, path = sys.argv[1], sys.argv[2]
count, seconds, rate = int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
frames = [bytes.fromhex(line) for line in open(path).read().split()]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
start = time.monotonic()
deadline = start + seconds
sent = failed = 0
batch = 250
while sent + failed < count and time.monotonic() < deadline:
    for _ in range(min(batch, count - sent - failed)):
        try:
            s.send(frames[(sent + failed) % len(frames)])
            sent += 1
        except OSError:
            failed += 1
    ahead = start + (sent + failed) / rate - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
print(json.dumps({"sent": sent, "failed": failed, "seconds": time.monotonic() - start}))
"""


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    with Lab.create("psm") as built:
        yield built


def flood(lab: netns.Lab, frames_file: Path) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", _SENDER, Lab.SCANNER_IF, str(frames_file),
            str(FLOOD_FRAMES), str(FLOOD_SECONDS), str(FLOOD_RATE)]  # fmt: skip
    return lab.start(lab.scanner, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def scan_ports(events: list[Event]) -> set[int]:
    return {
        e["port"]
        for e in events
        if e["src"] == Lab.SCANNER4 and e["proto"] == "tcp" and e["kind"] == "SYN"
    }


def test_malformed_flood_is_counted_and_a_real_scan_still_seen(
    lab: netns.Lab, tmp_path: Path
) -> None:
    settings = {"BLOCK_TCP": "0", "BLOCK_UDP": "0"}  # alerts only: nmap stays unblocked
    daemon = Daemon.start(lab, tmp_path / "daemon", settings=settings)
    # Every datagram passes the daemon's own kernel filter and fails in its decoder.
    setup = load_setup(str(daemon.directory / "portsentinel.conf"), "atcp,audp")
    program = kernel_filter(setup)
    for datagram in MALFORMED:
        assert run_filter(program, datagram, PACKET_HOST, protocol=_ethertype(datagram))
        with pytest.raises(DecodeError):
            decode_ip(datagram)
    target_mac = lab.link_address(lab.target, Lab.TARGET_IF)
    scanner_mac = lab.link_address(lab.scanner, Lab.SCANNER_IF)
    frames = [_frame(target_mac, scanner_mac, d) for d in MALFORMED]
    frames_file = tmp_path / "frames.hex"
    frames_file.write_text("\n".join(f.hex() for f in frames) + "\n")

    sender = flood(lab, frames_file)
    time.sleep(1.0)  # the flood is under way
    nmap = lab.run(
        lab.scanner,
        ["timeout", str(NMAP_TIMEOUT), *NMAP, "-sS", "-p", "1-50", Lab.TARGET4],
        timeout=NMAP_TIMEOUT + 10,
        check=False,
    )
    assert nmap.returncode == 0, nmap.stdout + nmap.stderr
    out, err = sender.communicate(timeout=FLOOD_SECONDS + 15)
    assert sender.returncode == 0, err
    result = json.loads(out)
    assert result["sent"] >= FLOOD_FRAMES * 0.9, result
    assert daemon.proc.poll() is None, f"the daemon died:\n{daemon.stderr()}"

    events = daemon.wait_for_events(
        lambda es: scan_ports(es) >= set(SCAN_PORTS), "every scanned port", check=False
    )
    code, stderr = daemon.stop()
    stats = statistics(stderr)
    assert code == 0, stderr
    assert stats, f"no statistics line:\n{stderr}"
    assert scan_ports(events) == set(SCAN_PORTS), (sorted(scan_ports(events)), stats)
    # Every frame the rings delivered was decoded or refused by the decoder, none lost in
    # between; what did not reach the rings was dropped there (counted) or before them. On
    # a loaded machine some frames vanish before the rings, uncounted even by the softnet and
    # veth counters (seen in CI runs beside other jobs): the exact account is the daemon's.
    sent = result["sent"]
    assert stats["decode_errors"] == stats["ring_handled"] - stats["packets"], stats
    assert 0 < stats["decode_errors"] + stats["kernel_drops"] <= sent, (sent, stats)
    print(f"\nflood: {result}; daemon: {stats}")


def _ethertype(datagram: bytes) -> int:
    return 0x86DD if _is_ipv6(datagram) else 0x0800


def _is_ipv6(datagram: bytes) -> bool:
    # The IPv6 datagrams above are the ones whose version nibble is 6 or 7.
    return datagram[0] >> 4 in (6, 7)


def _frame(dst_mac: str, src_mac: str, datagram: bytes) -> bytes:
    head = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
    return head + struct.pack("!H", _ethertype(datagram)) + datagram
