"""Hand-built test frames for the decoder, packed field by field with ``struct``.

Written independently of ``portsentinel.decode`` so the tests do not check the decoder
against itself. Checksums are left at zero: the decoder does not read them.
"""

from __future__ import annotations

import struct

SRC4 = bytes([198, 18, 0, 1])
DST4 = bytes([198, 18, 0, 2])
SRC6 = bytes.fromhex("fd000000000000000000000000000001")
DST6 = bytes.fromhex("fd000000000000000000000000000002")

TCP = 6
UDP = 17
ICMP = 1
ICMP6 = 58
HOP_BY_HOP = 0
ROUTING = 43
FRAGMENT = 44
ESP = 50
AH = 51
NO_NEXT = 59
DEST_OPTS = 60

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_ARP = 0x0806


def tcp(
    sport: int = 40000,
    dport: int = 22,
    flags: int = 0x02,
    *,
    data_offset: int | None = None,
    options: bytes = b"",
    payload: bytes = b"",
) -> bytes:
    """A TCP header (20 bytes + options) followed by ``payload``."""
    if data_offset is None:
        data_offset = 5 + len(options) // 4
    head = struct.pack(
        "!HHIIBBHHH", sport, dport, 0x01020304, 0, data_offset << 4, flags, 1024, 0, 0
    )
    return head + options + payload


def udp(sport: int = 40000, dport: int = 53, payload: bytes = b"") -> bytes:
    """A UDP header followed by ``payload``."""
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv4(
    proto: int,
    body: bytes,
    *,
    src: bytes = SRC4,
    dst: bytes = DST4,
    ttl: int = 64,
    options: bytes = b"",
    frag_offset: int = 0,
    more_fragments: bool = False,
    total_length: int | None = None,
    ihl: int | None = None,
    version: int = 4,
) -> bytes:
    """An IPv4 packet; ``frag_offset`` is in 8-byte units as on the wire."""
    if ihl is None:
        ihl = 5 + len(options) // 4
    if total_length is None:
        total_length = 20 + len(options) + len(body)
    frag = (0x2000 if more_fragments else 0) | frag_offset
    head = struct.pack(
        "!BBHHHBBH4s4s", version << 4 | ihl, 0, total_length, 0x4242, frag, ttl, proto, 0, src, dst
    )
    return head + options + body


def ipv6(
    next_header: int,
    body: bytes,
    *,
    src: bytes = SRC6,
    dst: bytes = DST6,
    hop_limit: int = 64,
    payload_length: int | None = None,
    version: int = 6,
) -> bytes:
    """An IPv6 packet; ``body`` holds any extension headers and the transport header."""
    if payload_length is None:
        payload_length = len(body)
    word = version << 28 | 0x12345
    return struct.pack("!IHBB16s16s", word, payload_length, next_header, hop_limit, src, dst) + body


def ext6(next_header: int, units: int = 0) -> bytes:
    """A generic extension header (hop-by-hop, routing, destination options...).

    ``units`` is the length byte: 8-byte units beyond the first 8, padded with PadN.
    """
    size = (units + 1) * 8
    return struct.pack("!BBBB", next_header, units, 1, size - 4) + bytes(size - 4)


def ah6(next_header: int, units: int = 4) -> bytes:
    """An Authentication Header: its length byte counts 4-byte units, minus 2."""
    size = (units + 2) * 4
    return struct.pack("!BBH", next_header, units, 0) + bytes(size - 4)


def frag6(next_header: int, offset: int = 0, *, more: bool = False) -> bytes:
    """An IPv6 fragment header; ``offset`` is in 8-byte units."""
    return struct.pack("!BBHI", next_header, 0, offset << 3 | int(more), 0xCAFE)


def ethernet(ethertype: int, payload: bytes, *, tags: tuple[int, ...] = ()) -> bytes:
    """Ethernet II; each entry of ``tags`` is a TPID (0x8100, 0x88a8...) pushed outermost first."""
    head = bytes.fromhex("020000000002") + bytes.fromhex("020000000001")
    for index, tpid in enumerate(tags):
        head += struct.pack("!H", tpid) + struct.pack("!H", 100 + index)
    return head + struct.pack("!H", ethertype) + payload


def sll(protocol: int, payload: bytes) -> bytes:
    """Linux cooked capture v1: packet type, ARPHRD, address length, address, protocol."""
    return struct.pack("!HHH8sH", 0, 1, 6, bytes.fromhex("020000000001"), protocol) + payload


def sll2(protocol: int, payload: bytes) -> bytes:
    """Linux cooked capture v2: protocol, reserved, ifindex, ARPHRD, type, address."""
    return struct.pack("!HHIHBB8s", protocol, 0, 2, 1, 0, 6, bytes.fromhex("020000000001")) + (
        payload
    )


def null(family: int, payload: bytes, *, order: str = "<") -> bytes:
    """BSD loopback: a 4-byte address family in ``order`` ("<" little, ">" big endian)."""
    return struct.pack(order + "I", family) + payload
