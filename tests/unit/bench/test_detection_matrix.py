"""The pure parts of ``bench/detection_matrix.py`` and ``bench/rawprobes.py``: the hand-built
masscan-like and zmap-like probes (checked with the project's own fingerprint code and
checksums), the port runs, what a scan's events say, and the capture's first probe."""

from __future__ import annotations

import ipaddress
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "e2e"))

import detection_matrix as dm
import pytest
import rawprobes

from portsentinel.detect.fingerprint import scanner_of

SCANNER4, TARGET4 = "198.18.0.2", "198.18.0.1"
SCANNER6, TARGET6 = "fd00:5e::2", "fd00:5e::1"
DECOY4 = "198.18.0.3"


def ipv6_packet(src: str, dst: str, segment: bytes) -> bytes:
    """The IPv6 header the kernel puts in front of a raw socket's TCP segment."""
    addresses = ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
    return struct.pack("!IHBB", 6 << 28, len(segment), 6, 255) + addresses + segment


def tcp_checksum_holds(src: str, dst: str, segment: bytes) -> bool:
    source, target = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    if len(source) == 4:
        pseudo = source + target + struct.pack("!BBH", 0, 6, len(segment))
    else:
        pseudo = source + target + struct.pack("!IxxxB", len(segment), 6)
    return rawprobes.checksum(pseudo + segment) == 0


def test_masscan_like_probe_carries_masscan_marks() -> None:
    packet = rawprobes.probe("masscan", SCANNER4, TARGET4, sport=45000, dport=22, seq=0x12345678)
    assert scanner_of(packet) == "masscan"
    ident, ttl = struct.unpack_from("!H", packet, 4)[0], packet[8]
    assert ident == (int(ipaddress.IPv4Address(TARGET4)) ^ 22 ^ 0x12345678) & 0xFFFF
    assert ttl == 255
    assert rawprobes.checksum(packet[:20]) == 0
    tcp = packet[20:]
    assert tcp[13] == rawprobes.SYN
    assert struct.unpack_from("!H", tcp, 14)[0] == 1024
    assert len(tcp) == 20  # no options
    assert tcp_checksum_holds(SCANNER4, TARGET4, tcp)


def test_zmap_like_probe_carries_zmap_marks() -> None:
    packet = rawprobes.probe("zmap", SCANNER4, TARGET4, sport=40000, dport=443, seq=7)
    assert scanner_of(packet) == "zmap"
    assert struct.unpack_from("!H", packet, 4)[0] == 54321
    assert rawprobes.checksum(packet[:20]) == 0
    assert tcp_checksum_holds(SCANNER4, TARGET4, packet[20:])


def test_over_ipv6_the_marks_are_gone_and_the_checksum_holds() -> None:
    for style in rawprobes.STYLES:
        segment = rawprobes.probe(style, SCANNER6, TARGET6, sport=40001, dport=8, seq=99)
        assert tcp_checksum_holds(SCANNER6, TARGET6, segment)
        assert scanner_of(ipv6_packet(SCANNER6, TARGET6, segment)) is None


def test_an_unknown_style_is_refused() -> None:
    with pytest.raises(ValueError, match="unicorn"):
        rawprobes.probe("unicorn", SCANNER4, TARGET4, sport=1, dport=2, seq=3)


def test_port_runs_are_disjoint_and_skip_the_excluded() -> None:
    runs = dm.port_blocks(20, 6)
    ports = [p for run in runs for p in run]
    assert len(ports) == len(set(ports)) == 120
    assert not set(ports) & dm.EXCLUDED
    assert all(len(run) == 6 for run in runs)
    cases = [*dm.matrix_cases(), *dm.trw_cases(), *dm.ban_cases()]
    tcp_sets = [set(c.ports) - {80} for c in cases if c.proto == "tcp"]
    assert sum(map(len, tcp_sets)) == len(set().union(*tcp_sets))  # no port in two scans


def event(src: str, port: int, **extra: object) -> dict[str, object]:
    return {"time": f"2026-01-01T00:00:0{port % 10}.5+00:00", "src": src, "dst": TARGET4,
            "proto": "tcp", "port": port, "kind": "SYN", "action": "alert", **extra}  # fmt: skip


def test_seen_counts_every_action_of_the_scans_sources_and_ports() -> None:
    events = [
        event(DECOY4, 3, action="block", scanner="nmap"),
        event(SCANNER4, 4, action="ignored", reason="already blocked", kind="FIN",
              group=[DECOY4, SCANNER4], decoy=True),
        event(SCANNER4, 5, action="block", group=[DECOY4, SCANNER4], decoy=True),
        event("198.18.0.9", 6),  # another source
        event(SCANNER4, 99),  # another port
        event(SCANNER4, 7, proto="udp"),  # another protocol
        {"time": "2026-01-01T00:00:09+00:00", "type": "summary", "held": 3},
        {"time": "2026-01-01T00:00:09+00:00", "type": "cut", "src": DECOY4, "seconds": 300.0},
    ]  # fmt: skip
    found = dm.seen(events, frozenset({SCANNER4, DECOY4}), "tcp", (3, 4, 5, 6, 7))
    assert found.ports == {3, 4, 5}
    assert found.kinds == ("FIN", "SYN")
    assert found.scanners == ("nmap",)
    assert (found.group, found.decoy_bans, found.cuts) == (2, 1, 1)
    assert found.first == dm.event_time(events[0])
    assert found.decision is None
    case = dm.Case("x", "tcp", (3, 4, 5, 6, 7), "SYN")
    assert dm.detected(case, found) == "partly 3/5"
    assert dm.kinds(case, found) == "FIN,SYN (expected SYN)"
    assert dm.group(found) == "group of 2, 1 banned as decoys, 1 ban cut"


def test_the_trw_decision_is_the_first_event_of_the_rule() -> None:
    events = [
        event(SCANNER4, 1, reason="below trigger", rule=None, score=4.0, contacts=1),
        event(SCANNER4, 4, rule="trw", score=256.0, contacts=4),
        event(SCANNER4, 3, rule="trw", score=256.0, contacts=3),
    ]
    found = dm.seen(events, frozenset({SCANNER4}), "tcp", (1, 3, 4))
    assert found.decision is events[2]
    assert dm.detected(dm.Case("x", "tcp", (1, 3, 4), "SYN"), found) == "yes 3/3"


def pcap(frames: list[tuple[float, bytes]]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1)
    for when, frame in frames:
        sec = int(when)
        out += struct.pack("<IIII", sec, round((when - sec) * 1e9), len(frame), len(frame)) + frame
    return out


def ethernet_ipv4(src: str, dst: str, proto: int) -> bytes:
    addresses = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
    header = struct.pack("!BBHHHBBH", 0x45, 0, 40, 0, 0, 64, proto, 0) + addresses
    return b"\0" * 12 + b"\x08\x00" + header + b"\0" * 20


def test_first_probe_is_the_first_packet_of_a_source_to_the_target() -> None:
    data = pcap([
        (10.0, ethernet_ipv4(TARGET4, SCANNER4, 6)),  # an answer
        (11.0, ethernet_ipv4(SCANNER4, TARGET4, 17)),  # another protocol
        (12.25, ethernet_ipv4(DECOY4, TARGET4, 6)),
        (13.0, ethernet_ipv4(SCANNER4, TARGET4, 6)),
    ])  # fmt: skip
    sources = frozenset({SCANNER4, DECOY4})
    assert dm.first_probe(data, sources, TARGET4, "tcp") == 12.25
    assert dm.first_probe(data, sources, TARGET4, "udp") == 11.0
    assert dm.first_probe(data, frozenset({"198.18.0.9"}), TARGET4, "tcp") is None
    assert dm.ms(dm.since(12.2505, 12.25)) == "0.5 ms"
    assert dm.ms(dm.since(None, 12.25)) == "-"


def test_table_is_markdown() -> None:
    assert dm.table(("a", "b"), [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"
