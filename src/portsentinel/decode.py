"""Captured frames to ``Packet`` tuples: link layer, IPv4/IPv6, then the TCP or UDP header.

Pure (no I/O) and on the per-packet path, so it reads fields with precompiled ``struct``
objects straight from the buffer (``bytes`` or ``memoryview``) and builds nothing per packet
but the result tuple and the two packed addresses.

Outcomes, by design:

- a ``Packet`` for TCP and UDP over IPv4/IPv6, including the fragments ``nmap -f`` uses to hide
  the transport header (``Frag.TINY``, ``Frag.OVERLAP``);
- ``None`` for what we do not watch: other ethertypes, other transports (ICMP, ESP, No Next
  Header...), and ordinary later fragments, which carry no transport header;
- ``DecodeError`` for malformed or truncated headers. That is the remote side's fault; the
  caller counts it and goes on. No other exception escapes, whatever the bytes.

Lengths are checked twice where it matters: against the capture (never read past the buffer;
a snap length may cut the payload but not the headers) and against the IP header's own length
fields (the sender's claim, which decides whether a fragment is tiny).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

from portsentinel.errors import CaptureError, DecodeError
from portsentinel.model import Frag, Packet

Buffer = bytes | memoryview
Decoder = Callable[[Buffer], Packet | None]

_TCP: Final = 6
_UDP: Final = 17
_WATCHED: Final = frozenset({_TCP, _UDP})
_FRAG_NONE: Final = int(Frag.NONE)
_FRAG_TINY: Final = int(Frag.TINY)
_FRAG_OVERLAP: Final = int(Frag.OVERLAP)

_ETH_IPV4: Final = 0x0800
_ETH_IPV6: Final = 0x86DD
_VLAN_TPIDS: Final = frozenset({0x8100, 0x88A8, 0x9100})
_MAX_VLAN_TAGS: Final = 8  # QinQ stacks two; anything deeper than this is junk

_TCP_MIN_HEADER: Final = 20
_TCP_FLAGS_END: Final = 14  # bytes needed to reach the flags byte (offset 13)
_UDP_HEADER: Final = 8
_MAX_EXT_HEADERS: Final = 16

# IPv4 without the checksum: version/IHL, total length, flags/fragment offset, TTL, protocol,
# source, destination. The addresses come out as ``bytes`` in the same call.
_IP4 = struct.Struct("!B1xH2xHBB2x4s4s")
# IPv6: version/class/flow label, payload length, next header, hop limit, source, destination.
_IP6 = struct.Struct("!IHBB16s16s")
_U16 = struct.Struct("!H")
_U32_LE = struct.Struct("<I")
_U32_BE = struct.Struct("!I")
_EXT6 = struct.Struct("!BB")  # next header, header length
_FRAG6 = struct.Struct("!B1xH")  # next header, fragment offset (13 bits) | M flag
_PORTS = struct.Struct("!HH")
_TCP_HEAD = struct.Struct("!HH8xBB")  # ports, data offset/reserved, flags

# The common case in one read: an IPv4 header without options, then TCP ports, data offset
# and flags (34 bytes).
_IP4_TCP = struct.Struct("!BxH2xHBB2x4s4sHH8xBB")
_IP4_TCP_FAST_MIN: Final = 40  # IPv4 (20) + TCP (20) bytes captured
# The same behind an Ethernet header (its ethertype first): a capture file's everyday frame.
_ETH_IP4_TCP = struct.Struct("!12xHBxH2xHBB2x4s4sHH8xBB6x")  # through the TCP header's end
_IP4_MF: Final = 0x2000
_IP4_FRAG_BITS: Final = 0x3FFF  # more-fragments flag and offset
_IP4_OFFSET: Final = 0x1FFF

# IPv6 extension headers we walk through. Their length byte counts 8-byte units beyond the
# first 8, except AH (51), which counts 4-byte units beyond the first 8.
_EXT_OPTIONS: Final = frozenset({0, 60})  # hop-by-hop, destination options
_EXT_PLAIN: Final = frozenset({43, 135, 139, 140, 253, 254})  # routing, mobility, HIP, shim6, exp.
_EXT_AH: Final = 51
_EXT_FRAGMENT: Final = 44

# BSD loopback address families: AF_INET is 2 everywhere; AF_INET6 differs per BSD.
_AF_INET: Final = 2
_AF_INET6: Final = frozenset({24, 28, 30})


def _later_fragment(
    proto: int, offset: int, *, src: bytes, dst: bytes, ttl: int, options: bool
) -> Packet | None:
    """A fragment past the first: flag it only when it lands inside the minimal TCP header.

    That overlap is RFC 1858's attack (rewrite the flags after the filter saw the first
    fragment) and the shape of ``nmap -f``; any other later fragment is plain payload.
    """
    if proto == _TCP and offset * 8 < _TCP_MIN_HEADER:
        return (_TCP, src, dst, 0, 0, 0, ttl, options, _FRAG_OVERLAP)
    return None


def _tiny(
    buf: Buffer,
    pos: int,
    avail: int,
    proto: int,
    *,
    src: bytes,
    dst: bytes,
    ttl: int,
    options: bool,
) -> Packet:
    """A first fragment too short to hold the header we need: keep the ports if they fit."""
    sport = dport = 0
    if avail >= 4:
        if len(buf) - pos < 4:
            raise DecodeError("fragment ports cut short by the capture")
        sport, dport = _PORTS.unpack_from(buf, pos)
    return (proto, src, dst, sport, dport, 0, ttl, options, _FRAG_TINY)


def _transport(
    buf: Buffer,
    pos: int,
    avail: int,
    proto: int,
    *,
    first_fragment: bool,
    src: bytes,
    dst: bytes,
    ttl: int,
    options: bool,
) -> Packet:
    """Read the TCP or UDP header at ``pos``.

    ``avail`` is the transport length the IP header claims; ``first_fragment`` says the
    segment goes on in later fragments, so a short ``avail`` is a tiny fragment, not an error.
    The pass-through fields are keyword-only: clear at the call site for ~15 ns a call.
    """
    captured = len(buf) - pos
    if proto == _TCP:
        if avail < _TCP_MIN_HEADER:
            if not first_fragment:
                raise DecodeError("TCP header cut short by the IP length")
            if avail < _TCP_FLAGS_END:
                return _tiny(buf, pos, avail, proto, src=src, dst=dst, ttl=ttl, options=options)
            if captured < avail:
                raise DecodeError("TCP header cut short by the capture")
        elif captured < _TCP_MIN_HEADER:
            raise DecodeError("TCP header cut short by the capture")
        sport, dport, offset_byte, flags = _TCP_HEAD.unpack_from(buf, pos)
        data_offset = offset_byte >> 4
        if data_offset < 5:
            raise DecodeError("TCP data offset below 5")
        if data_offset * 4 > avail and not first_fragment:
            raise DecodeError("TCP data offset past the IP length")
        return (_TCP, src, dst, sport, dport, flags, ttl, options, _FRAG_NONE)
    if avail < _UDP_HEADER:
        if not first_fragment:
            raise DecodeError("UDP header cut short by the IP length")
        return _tiny(buf, pos, avail, proto, src=src, dst=dst, ttl=ttl, options=options)
    if captured < _UDP_HEADER:
        raise DecodeError("UDP header cut short by the capture")
    sport, dport = _PORTS.unpack_from(buf, pos)
    return (_UDP, src, dst, sport, dport, 0, ttl, options, _FRAG_NONE)


def _ip4(buf: Buffer, off: int = 0) -> Packet | None:
    """IPv4 at ``off``; the version nibble must say 4."""
    if len(buf) - off < 20:
        raise DecodeError("IPv4 header truncated")
    vhl, total, frag, ttl, proto, src, dst = _IP4.unpack_from(buf, off)
    if vhl >> 4 != 4:
        raise DecodeError("IPv4 expected, version nibble differs")
    ihl = (vhl & 0x0F) << 2
    if ihl < 20:
        raise DecodeError("IPv4 header length below 5")
    if total < ihl:
        raise DecodeError("IPv4 total length below the header length")
    if off + ihl > len(buf):
        raise DecodeError("IPv4 options truncated")
    if proto not in _WATCHED:
        return None
    if frag & _IP4_OFFSET:
        return _later_fragment(
            proto, frag & _IP4_OFFSET, src=src, dst=dst, ttl=ttl, options=ihl > 20
        )
    return _transport(
        buf,
        off + ihl,
        total - ihl,
        proto,
        first_fragment=bool(frag & _IP4_MF),
        src=src,
        dst=dst,
        ttl=ttl,
        options=ihl > 20,
    )


def _ip6(buf: Buffer, off: int = 0) -> Packet | None:
    """IPv6 at ``off``; the version nibble must say 6."""
    if len(buf) - off < 40:
        raise DecodeError("IPv6 header truncated")
    word, length, nh, hop_limit, src, dst = _IP6.unpack_from(buf, off)
    if word >> 28 != 6:
        raise DecodeError("IPv6 expected, version nibble differs")
    pos = off + 40
    # Payload length 0 means a jumbogram (or a GRO "BIG TCP" packet): trust the capture.
    end = pos + length if length else len(buf)
    if nh in _WATCHED:
        return _transport(
            buf,
            pos,
            end - pos,
            nh,
            first_fragment=False,
            src=src,
            dst=dst,
            ttl=hop_limit,
            options=False,
        )
    return _ip6_extensions(buf, pos, end, nh, src=src, dst=dst, hop_limit=hop_limit)


def _ip6_extensions(
    buf: Buffer, pos: int, end: int, nh: int, *, src: bytes, dst: bytes, hop_limit: int
) -> Packet | None:
    """Walk the extension header chain (bounded) to the transport header."""
    options = False
    first_fragment = False
    count = 0
    while nh not in _WATCHED:
        if count == _MAX_EXT_HEADERS:
            raise DecodeError("too many IPv6 extension headers")
        count += 1
        if nh == _EXT_FRAGMENT:
            if pos + 8 > len(buf):
                raise DecodeError("IPv6 fragment header truncated")
            nxt, offset_m = _FRAG6.unpack_from(buf, pos)
            pos += 8
            if offset_m >> 3:
                return _later_fragment(
                    nxt, offset_m >> 3, src=src, dst=dst, ttl=hop_limit, options=options
                )
            if offset_m & 1:  # M = 0 with offset 0 is an atomic fragment: a whole packet
                first_fragment = True
        elif nh in _EXT_OPTIONS or nh in _EXT_PLAIN or nh == _EXT_AH:
            if pos + 2 > len(buf):
                raise DecodeError("IPv6 extension header truncated")
            nxt, units = _EXT6.unpack_from(buf, pos)
            if nh == _EXT_AH:
                pos += (units + 2) * 4
            else:
                pos += (units + 1) * 8
                options = options or nh in _EXT_OPTIONS
        else:
            return None  # ESP, No Next Header, ICMPv6, anything unknown
        if pos > end:
            raise DecodeError("IPv6 extension header runs past the payload length")
        nh = nxt
    return _transport(
        buf,
        pos,
        end - pos,
        nh,
        first_fragment=first_fragment,
        src=src,
        dst=dst,
        ttl=hop_limit,
        options=options,
    )


def _by_ethertype(buf: Buffer, off: int, ethertype: int) -> Packet | None:
    """Skip 802.1Q/802.1ad tags (stacked for QinQ), then hand IPv4/IPv6 on."""
    tags = 0
    while ethertype in _VLAN_TPIDS:
        if tags == _MAX_VLAN_TAGS:
            raise DecodeError("too many VLAN tags")
        if len(buf) - off < 4:
            raise DecodeError("VLAN tag truncated")
        (ethertype,) = _U16.unpack_from(buf, off + 2)
        off += 4
        tags += 1
    if ethertype == _ETH_IPV4:
        return _ip4(buf, off)
    if ethertype == _ETH_IPV6:
        return _ip6(buf, off)
    return None


def decode_ip(buf: Buffer, offset: int = 0, length: int = -1) -> Packet | None:
    """Raw IP at ``offset``: IPv4 or IPv6, chosen by the version nibble.

    ``length`` (default: the rest of ``buf``) bounds the packet inside a bigger buffer, such
    as a capture ring read in place.
    """
    if length < 0:
        length = len(buf) - offset
    if length >= _IP4_TCP_FAST_MIN and offset >= 0:
        # A whole unfragmented TCP segment in IPv4 without options: the live capture's
        # everyday packet, read in one call. Anything else takes the general path below.
        vhl, total, frag, ttl, proto, src, dst, sport, dport, doff, flags = _IP4_TCP.unpack_from(
            buf, offset
        )
        if (
            vhl == 0x45
            and proto == _TCP
            and not frag & _IP4_FRAG_BITS
            and doff >= 0x50
            and (doff >> 4) * 4 <= total - 20
        ):
            return (_TCP, src, dst, sport, dport, flags, ttl, False, _FRAG_NONE)
    if offset >= 0 and offset + length != len(buf):
        buf, offset = memoryview(buf)[offset : offset + length], 0
    if not 0 <= offset < len(buf):
        raise DecodeError("no IP header")
    version = buf[offset] >> 4
    if version == 4:
        return _ip4(buf, offset)
    if version == 6:
        return _ip6(buf, offset)
    raise DecodeError("IP version neither 4 nor 6")


def decode_ethernet(buf: Buffer) -> Packet | None:
    """Ethernet II, with any stack of 802.1Q/802.1ad tags."""
    # As in ``decode_ip``: an unfragmented TCP segment in IPv4 without options, one read (a
    # frame too short for it raises: cheaper than asking its length first, as most are not).
    try:
        ethertype, vhl, total, frag, ttl, proto, src, dst, sport, dport, doff, flags = (
            _ETH_IP4_TCP.unpack_from(buf, 0)
        )
    except struct.error:
        pass
    else:
        if (
            ethertype == _ETH_IPV4
            and vhl == 0x45
            and proto == _TCP
            and not frag & _IP4_FRAG_BITS
            and doff >= 0x50
            and (doff >> 4) * 4 <= total - 20
        ):
            return (_TCP, src, dst, sport, dport, flags, ttl, False, _FRAG_NONE)
    if len(buf) < 14:
        raise DecodeError("Ethernet header truncated")
    (ethertype,) = _U16.unpack_from(buf, 12)
    if ethertype == _ETH_IPV4:  # the common case, without the tag walk
        return _ip4(buf, 14)
    return _by_ethertype(buf, 14, ethertype)


def decode_sll(buf: Buffer) -> Packet | None:
    """Linux cooked capture v1: 16-byte header, protocol (an ethertype) at offset 14."""
    if len(buf) < 16:
        raise DecodeError("SLL header truncated")
    (ethertype,) = _U16.unpack_from(buf, 14)
    return _by_ethertype(buf, 16, ethertype)


def decode_sll2(buf: Buffer) -> Packet | None:
    """Linux cooked capture v2: 20-byte header, protocol (an ethertype) at offset 0."""
    if len(buf) < 20:
        raise DecodeError("SLL2 header truncated")
    (ethertype,) = _U16.unpack_from(buf, 0)
    return _by_ethertype(buf, 20, ethertype)


def decode_null(buf: Buffer) -> Packet | None:
    """BSD loopback: a 4-byte address family in the writer's byte order.

    The family values are all below 2**16, so a value above that was written in the other
    byte order. This also covers LINKTYPE_LOOP, which is the same in network order.
    """
    if len(buf) < 4:
        raise DecodeError("loopback header truncated")
    (family,) = _U32_LE.unpack_from(buf, 0)
    if family > 0xFFFF:
        (family,) = _U32_BE.unpack_from(buf, 0)
    if family == _AF_INET:
        return _ip4(buf, 4)
    if family in _AF_INET6:
        return _ip6(buf, 4)
    return None


_LINKTYPES: Final[dict[int, Decoder]] = {
    0: decode_null,  # NULL
    1: decode_ethernet,  # EN10MB
    12: decode_ip,  # RAW on some BSDs
    14: decode_ip,  # RAW on some BSDs
    101: decode_ip,  # RAW
    108: decode_null,  # LOOP
    113: decode_sll,  # LINUX_SLL
    228: _ip4,  # IPV4
    229: _ip6,  # IPV6
    276: decode_sll2,  # LINUX_SLL2
}


def decoder_for_linktype(linktype: int) -> Decoder:
    """The decoder for a pcap LINKTYPE value; ``CaptureError`` when we do not support it."""
    try:
        return _LINKTYPES[linktype]
    except KeyError:
        supported = ", ".join(str(t) for t in sorted(_LINKTYPES))
        raise CaptureError(f"unsupported link type {linktype} (supported: {supported})") from None
