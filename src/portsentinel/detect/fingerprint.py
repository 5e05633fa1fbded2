"""Which tool built a probe, from the marks it leaves in the IP and TCP headers. Pure.

Told, never used to decide: a decision is the same whatever this says (the tools' marks are
easy to forge or change with an option). It runs only for packets that already became
decisions (live) or for a source's first few probes (replay), never for ordinary traffic.

The marks, as each tool builds its probes by default (checked against real nmap and hping3
in the lab, and the other tools' own packet-building code):

- zmap: IPv4 identification 54321 on every probe; TCP probes with window 65535.
- masscan: SYN whose IPv4 identification is (target address ^ target port ^ sequence
  number) & 0xFFFF (its stateless cookie), window 1024.
- unicornscan: its default "Cisco IOS" SYN: window 4128, one option (MSS), TTL 255 at start.
- hping3: a TCP probe without ACK whose acknowledgment number is not 0 (random), window 512,
  no options.
- nmap: raw probes with window 1024, 2048, 3072 or 4096 and acknowledgment 0; a SYN carries
  exactly one option, MSS 1460, the others none.

What cannot be told: a connect scan (``nmap -sT``) is the kernel's own SYN; an empty UDP
datagram is sent alike by nmap, hping3 and many others; every tool can be told to change its
window or options; IPv6 has no identification field, so zmap and masscan are not told there.
"""

from __future__ import annotations

import struct
from typing import Final

_TCP: Final = 6
_UDP: Final = 17
_SYN: Final = 0x02
_ACK: Final = 0x10
_ETH_IPV4: Final = 0x0800
_ETH_IPV6: Final = 0x86DD
_VLAN: Final = frozenset({0x8100, 0x88A8, 0x9100})
_ZMAP_ID: Final = 54321
_NMAP_WINDOWS: Final = frozenset({1024, 2048, 3072, 4096})
_NMAP_SYN_OPTIONS: Final = b"\x02\x04\x05\xb4"  # MSS 1460, alone
_FAR_TTL: Final = 128  # a TTL above this started at 255

_IP4: Final = struct.Struct("!BxxxHHBB2x4s4s")  # vhl, id, frag, ttl, proto, src, dst
_IP6: Final = struct.Struct("!6xBB")  # next header, hop limit
_TCP_HDR: Final = struct.Struct("!2xHIIBBH")  # dport, seq, ack, offset, flags, window
_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")

LINK_ETHERNET: Final = 1
LINK_RAW: Final = 101
LINK_SLL: Final = 113
LINK_SLL2: Final = 276

TOOLS: Final = ("nmap", "masscan", "zmap", "unicornscan", "hping3")


def scanner_of(buf: bytes | memoryview, off: int = 0) -> str | None:
    """The tool whose marks the IP packet at ``off`` carries, or None (unknown, or junk)."""
    try:
        version = buf[off] >> 4
        if version == 4:
            return _ip4(buf, off)
        if version == 6:
            return _ip6(buf, off)
    except (IndexError, struct.error):
        pass
    return None


def scanner_of_frame(frame: bytes | memoryview, linktype: int) -> str | None:
    """``scanner_of`` for a captured frame of a pcap link type (Ethernet, raw IP, SLL)."""
    try:
        if linktype == LINK_ETHERNET:
            off, ethertype = 12, _U16.unpack_from(frame, 12)[0]
            while ethertype in _VLAN:
                off += 4
                ethertype = _U16.unpack_from(frame, off)[0]
            off += 2
        elif linktype == LINK_SLL:
            off, ethertype = 16, _U16.unpack_from(frame, 14)[0]
        elif linktype == LINK_SLL2:
            off, ethertype = 20, _U16.unpack_from(frame, 0)[0]
        elif linktype == LINK_RAW:
            return scanner_of(frame)
        else:
            return None
    except struct.error:
        return None
    return scanner_of(frame, off) if ethertype in (_ETH_IPV4, _ETH_IPV6) else None


def _ip4(buf: bytes | memoryview, off: int) -> str | None:
    vhl, ident, frag, ttl, proto, _src, dst = _IP4.unpack_from(buf, off)
    if frag & 0x1FFF:  # a later fragment: no transport header
        return None
    start = off + (vhl & 0x0F) * 4
    if proto == _UDP:
        return "zmap" if ident == _ZMAP_ID else None
    if proto != _TCP:
        return None
    dport, seq, ack, doff, flags, window = _TCP_HDR.unpack_from(buf, start)
    if ident == _ZMAP_ID and window == 65535:
        return "zmap"
    if (
        flags & 0x3F == _SYN
        and window == 1024
        and ident == (_U32.unpack(dst)[0] ^ dport ^ seq) & 0xFFFF
    ):
        return "masscan"
    options = bytes(buf[start + 20 : start + (doff >> 4) * 4])
    return _tcp(flags, ack, window, options, ttl)


def _ip6(buf: bytes | memoryview, off: int) -> str | None:
    next_header, hops = _IP6.unpack_from(buf, off)
    if next_header != _TCP:  # extension headers are not walked: no mark is told behind them
        return None
    start = off + 40
    _dport, _seq, ack, doff, flags, window = _TCP_HDR.unpack_from(buf, start)
    options = bytes(buf[start + 20 : start + (doff >> 4) * 4])
    return _tcp(flags, ack, window, options, hops)


def _tcp(flags: int, ack: int, window: int, options: bytes, ttl: int) -> str | None:
    """The marks of the TCP header alone (and the TTL or hop limit it came with)."""
    if flags & _ACK:
        return None  # ACK-bearing probes (nmap -sA/-sW/-sM) carry an acknowledgment: untold
    syn = flags & 0x3F == _SYN
    if (
        syn
        and window == 4128
        and len(options) == 4
        and options[:2] == b"\x02\x04"
        and ttl > _FAR_TTL
    ):
        return "unicornscan"
    if ack and window == 512 and not options:
        return "hping3"
    if not ack and window in _NMAP_WINDOWS:
        if syn and options == _NMAP_SYN_OPTIONS:
            return "nmap"
        if not syn and not options:
            return "nmap"
    return None


class ScannerMarks:
    """The tool each source's probes were last seen to carry the marks of, bounded: a source
    whose later probes carry none (an empty UDP datagram) keeps the name its earlier ones
    earned. The table starts over when full (a flood of forged sources only churns it)."""

    __slots__ = ("_by_src", "max_sources")

    def __init__(self, max_sources: int = 4096) -> None:
        self.max_sources = max_sources
        self._by_src: dict[str, str] = {}

    def tell(self, src: str, tool: str | None) -> str | None:
        """Note ``tool`` (None: no marks) for ``src``; the name to tell for it."""
        by_src = self._by_src
        if tool is None:
            return by_src.get(src)
        if src not in by_src and len(by_src) >= self.max_sources:
            by_src.clear()
        by_src[src] = tool
        return tool
