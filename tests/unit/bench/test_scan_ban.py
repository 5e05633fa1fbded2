"""The pure parts of ``bench/scan_ban.py``: the capture's tally (probes and replies against
the ban time, from a pcap file built here) and the addresses an ``nft monitor`` line bans
(lines as nft 1.0 prints them, taken from a lab)."""

from __future__ import annotations

import ipaddress
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "e2e"))

from scan_capture import read_pcap, reply_port, tally
from scan_subjects import ban_addresses

SCANNER4, TARGET4 = "198.18.0.2", "198.18.0.1"
SCANNER6, TARGET6 = "fd00:5e::2", "fd00:5e::1"


def ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    addresses = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
    header = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0) + addresses
    return b"\0" * 12 + b"\x08\x00" + header + payload


def ipv6(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    addresses = ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
    header = struct.pack("!IHBB", 6 << 28, len(payload), proto, 64) + addresses
    return b"\0" * 12 + b"\x86\xdd" + header + payload


def tcp(sport: int, dport: int, flags: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, flags, 0, 0, 0)


def udp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8, 0)


def unreachable4(probe: bytes) -> bytes:
    return bytes([3, 3, 0, 0, 0, 0, 0, 0]) + probe[14:]  # quotes the probe's IP header on


def unreachable6(probe: bytes) -> bytes:
    return bytes([1, 4, 0, 0, 0, 0, 0, 0]) + probe[14:]


def pcap(records: list[tuple[float, bytes]], nano: bool = True) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack("<IHHiIII", magic, 2, 4, 0, 0, 65535, 1)]
    for when, frame in records:
        sec = int(when)
        frac = round((when - sec) * (1e9 if nano else 1e6))
        out.append(struct.pack("<IIII", sec, frac, len(frame), len(frame)) + frame)
    return b"".join(out)


def test_a_tcp_scan_counts_probes_and_answering_ports_before_the_ban() -> None:
    records = [
        (100.0, ipv4(SCANNER4, TARGET4, 6, tcp(40000, 22, 0x02))),
        (100.001, ipv4(TARGET4, SCANNER4, 6, tcp(22, 40000, 0x14))),  # RST-ACK
        (100.002, ipv4(SCANNER4, TARGET4, 6, tcp(40000, 80, 0x02))),
        (100.003, ipv4(TARGET4, SCANNER4, 6, tcp(80, 40000, 0x12))),  # SYN-ACK
        (100.0035, ipv4(TARGET4, SCANNER4, 6, tcp(80, 40000, 0x10))),  # a bare ACK: no answer
        (100.004, ipv4(SCANNER4, TARGET4, 6, tcp(40000, 443, 0x02))),
        (100.006, ipv4(TARGET4, SCANNER4, 6, tcp(443, 40000, 0x04))),  # after the ban
        (100.007, ipv4(SCANNER4, TARGET4, 17, udp(40000, 53))),  # not this scan's protocol
    ]
    counted = tally(pcap(records), SCANNER4, TARGET4, 6, ban=100.005)
    assert counted.first_probe == pytest.approx(100.0, abs=1e-6)
    assert (counted.probes_before, counted.answered_before) == (3, 2)
    assert (counted.answered, counted.replies) == (3, 3)
    assert counted.last_answer == pytest.approx(100.006, abs=1e-6)


def test_udp_answers_are_port_unreachables_or_datagrams_on_both_families() -> None:
    probe4 = ipv4(SCANNER4, TARGET4, 17, udp(50000, 161))
    probe6 = ipv6(SCANNER6, TARGET6, 17, udp(50000, 162))
    records = [
        (1.0, probe4),
        (1.1, ipv4(TARGET4, SCANNER4, 1, unreachable4(probe4))),
        (1.2, ipv4(TARGET4, SCANNER4, 17, udp(53, 50000))),
        (1.3, probe6),
        (1.4, ipv6(TARGET6, SCANNER6, 58, unreachable6(probe6))),
    ]
    data = pcap(records, nano=False)
    four = tally(data, SCANNER4, TARGET4, 17, ban=None)
    assert (four.probes_before, four.answered_before, four.replies) == (1, 2, 2)
    six = tally(data, SCANNER6, TARGET6, 17, ban=1.35)
    assert six.first_probe == pytest.approx(1.3)
    assert (six.probes_before, six.answered_before, six.answered) == (1, 0, 1)
    assert reply_port(58, unreachable6(probe6)) == (17, 162)


def test_other_icmp_is_no_answer_and_a_short_file_has_no_records() -> None:
    assert reply_port(1, bytes([3, 1]) + bytes(30)) is None  # host unreachable
    assert reply_port(58, bytes([128, 0]) + bytes(60)) is None  # echo request
    assert list(read_pcap(b"")) == []
    with pytest.raises(ValueError, match="pcap"):
        list(read_pcap(bytes(24)))


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("add element inet portsentinel ban4 { 198.18.0.2 timeout 1h expires 1h }",
         ["198.18.0.2/32"]),
        ("add element inet x ban6 { fd00:5e::2 timeout 1h expires 1h }", ["fd00:5e::2/128"]),
        ("add element inet x ban6 { fd00:5f::/64 timeout 1h expires 1h }", ["fd00:5f::/64"]),
        ("insert rule ip filter INPUT ip saddr 198.18.0.2 counter packets 0 bytes 0 drop",
         ["198.18.0.2/32"]),
        ("add table inet x", []),
    ],
)  # fmt: skip
def test_the_networks_a_monitor_line_bans(line: str, expected: list[str]) -> None:
    assert ban_addresses(line) == expected
