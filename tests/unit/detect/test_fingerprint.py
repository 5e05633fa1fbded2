"""Scanner marks: probes built as each tool builds them (header fields from the tools' own
packet code, and from real nmap and hping3 probes recorded in the lab), and look-alikes."""

from __future__ import annotations

import struct

import pytest

from portsentinel.detect.fingerprint import (
    LINK_ETHERNET,
    LINK_RAW,
    LINK_SLL,
    LINK_SLL2,
    ScannerMarks,
    scanner_of,
    scanner_of_frame,
)

SRC = bytes([198, 18, 0, 2])
DST = bytes([198, 18, 0, 1])
SRC6 = bytes.fromhex("fd00005e000000000000000000000002")
DST6 = bytes.fromhex("fd00005e000000000000000000000001")
SYN, FIN, ACK, PSH, URG = 0x02, 0x01, 0x10, 0x08, 0x20
MSS1460 = b"\x02\x04\x05\xb4"
LINUX_SYN_OPTIONS = bytes.fromhex("020405b40402080a46f3b5f5000000000103030a")


def tcp(
    dport: int, flags: int, *, seq: int = 678490338, ack: int = 0, window: int = 1024,
    options: bytes = b"", sport: int = 52339,
) -> bytes:  # fmt: skip
    offset = (20 + len(options)) // 4 << 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset, flags, window, 0, 0) + options


def ip4(
    segment: bytes, *, ident: int = 10095, ttl: int = 43, proto: int = 6, frag: int = 0
) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), ident, frag, ttl, proto, 0,
                         SRC, DST)  # fmt: skip
    return header + segment


def ip6(segment: bytes, *, hops: int = 255, next_header: int = 6) -> bytes:
    return (
        struct.pack("!IHBB16s16s", 6 << 28, len(segment), next_header, hops, SRC6, DST6) + segment
    )


def udp(dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload


def masscan_id(dport: int, seq: int) -> int:
    return (int.from_bytes(DST, "big") ^ dport ^ seq) & 0xFFFF


@pytest.mark.parametrize(
    ("packet", "tool"),
    [
        # nmap -sS (recorded in the lab: window 1024, MSS 1460 alone, random IP ID and TTL)
        (ip4(tcp(23, SYN, options=MSS1460)), "nmap"),
        (ip4(tcp(23, SYN, window=3072, options=MSS1460)), "nmap"),
        (ip6(tcp(110, SYN, options=MSS1460)), "nmap"),
        # nmap -sF / -sN / -sX: no options
        (ip4(tcp(443, FIN)), "nmap"),
        (ip4(tcp(111, 0, window=2048)), "nmap"),
        (ip4(tcp(21, FIN | PSH | URG, window=4096)), "nmap"),
        # masscan: IP ID is its cookie of target address, port and sequence number
        (ip4(tcp(80, SYN, seq=0x1234ABCD), ident=masscan_id(80, 0x1234ABCD), ttl=255), "masscan"),
        (ip4(tcp(80, SYN, seq=7, options=MSS1460), ident=masscan_id(80, 7)), "masscan"),
        # zmap: IP ID 54321, window 65535, TTL 255; its UDP probes carry the same ID
        (ip4(tcp(443, SYN, window=65535, seq=99), ident=54321, ttl=255), "zmap"),
        (ip4(tcp(443, SYN, window=65535, options=MSS1460), ident=54321, ttl=250), "zmap"),
        (ip4(udp(53, b"\x12\x34"), ident=54321, proto=17, ttl=255), "zmap"),
        # unicornscan's default ("Cisco IOS"): window 4128, MSS (MTU - 40), TTL 255
        (ip4(tcp(22, SYN, window=4128, options=b"\x02\x04\x05\xb4"), ttl=254), "unicornscan"),
        (ip6(tcp(22, SYN, window=4128, options=b"\x02\x04\x05\xa0"), hops=255), "unicornscan"),
        # hping3 -S / -F (recorded in the lab: window 512, random ack without ACK, no options)
        (ip4(tcp(20, SYN, ack=852603271, window=512, sport=1376), ttl=64), "hping3"),
        (ip4(tcp(30, FIN, ack=424632239, window=512, sport=2364), ttl=64), "hping3"),
    ],
)
def test_each_tool_is_told_by_its_marks(packet: bytes, tool: str) -> None:
    assert scanner_of(packet) == tool


@pytest.mark.parametrize(
    "packet",
    [
        ip4(tcp(25, SYN, window=64240, options=LINUX_SYN_OPTIONS), ttl=64),  # a connect (-sT)
        ip4(tcp(25, SYN, window=1024)),  # masscan's window, but not its cookie
        ip4(tcp(25, SYN, options=MSS1460 + b"\x01\x01\x04\x02")),  # more than nmap's MSS
        ip4(tcp(25, FIN, options=MSS1460)),  # nmap's FIN has no options
        ip4(tcp(25, ACK, window=1024)),  # ACK-bearing: not told (nmap -sA looks like others)
        ip4(tcp(25, SYN, ack=5, window=1024, options=MSS1460)),  # nmap sends ack 0
        ip4(tcp(22, SYN, window=4128, options=b"\x02\x04\x05\xb4"), ttl=64),  # near TTL
        ip4(tcp(25, SYN, ack=1, window=512, options=MSS1460)),  # hping3 sends no options
        ip4(udp(161), proto=17),  # an empty datagram: everyone's
        ip4(b"", proto=1),  # not TCP or UDP
        ip4(tcp(23, SYN, options=MSS1460), frag=100),  # a later fragment
        ip4(tcp(23, SYN, options=MSS1460))[:30],  # cut short
        ip6(tcp(23, SYN, options=MSS1460), next_header=0),  # behind an extension header
        b"",
        b"\x10\x00",  # neither IPv4 nor IPv6
    ],
)
def test_others_are_not_told(packet: bytes) -> None:
    assert scanner_of(packet) is None


def test_frames_of_each_link_type() -> None:
    packet = ip4(tcp(23, SYN, options=MSS1460))
    ether = b"\x00" * 12
    assert scanner_of_frame(ether + b"\x08\x00" + packet, LINK_ETHERNET) == "nmap"
    vlan = ether + b"\x81\x00\x00\x05" + b"\x08\x00"
    assert scanner_of_frame(vlan + packet, LINK_ETHERNET) == "nmap"
    assert scanner_of_frame(ether + b"\x86\xdd" + ip6(tcp(1, FIN)), LINK_ETHERNET) == "nmap"
    assert scanner_of_frame(ether + b"\x08\x06" + packet, LINK_ETHERNET) is None  # ARP
    assert scanner_of_frame(b"\x00" * 14 + b"\x08\x00" + packet, LINK_SLL) == "nmap"
    assert scanner_of_frame(b"\x08\x00" + b"\x00" * 18 + packet, LINK_SLL2) == "nmap"
    assert scanner_of_frame(packet, LINK_RAW) == "nmap"
    assert scanner_of_frame(packet, 0) is None  # a link type not read
    assert scanner_of_frame(b"\x00" * 5, LINK_ETHERNET) is None
    assert scanner_of(b"\x00\x00" + packet, 2) == "nmap"  # at an offset (the live ring)


def test_marks_remember_the_last_tool_of_a_source_within_a_bound() -> None:
    marks = ScannerMarks(max_sources=2)
    assert marks.tell("a", None) is None
    assert marks.tell("a", "nmap") == "nmap"
    assert marks.tell("a", None) == "nmap"  # an unmarked probe keeps what earlier ones earned
    assert marks.tell("a", "hping3") == "hping3"
    marks.tell("b", "zmap")
    marks.tell("c", "masscan")  # full: starts over
    assert marks.tell("a", None) is None
    assert marks.tell("c", None) == "masscan"
