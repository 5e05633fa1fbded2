"""Ask the kernel's connection tracker whether an incoming packet answers a flow we started.

Why: in the advanced modes every datagram to a port without a socket looks like a probe, yet
the host's own DNS and NTP queries draw replies to ephemeral ports whose sockets may already
be closed (a late answer, a second resolver answering after the first). Conntrack remembers
those flows, UDP ones for ``nf_conntrack_udp_timeout`` (30 s by default) after the last packet,
so a late reply is still recognisable. A source port alone proves nothing (``nmap -g 53``).

Which lookup: ``IPCTNL_MSG_CT_GET`` with ``CTA_TUPLE_REPLY`` set to the packet's own tuple
(``src:sport -> dst:dport``, exactly as captured), then a check that the entry's reply tuple is
that tuple. Two facts drive this:

* The kernel hashes every entry under both its original and its reply tuple and
  ``ctnetlink_get_conntrack`` looks the given tuple up in that one table, whichever attribute
  carried it. A GET therefore also finds a flow in which the packet is in the ORIGINAL
  direction, which is what a scanner's own probe creates on arrival. Only the direction check
  tells a reply from a probe.
* Under SNAT or masquerade (a container's query leaving through the host, an ``snat`` rule that
  remaps the source port) the reply tuple is the post-NAT address and port, which is what the
  captured reply carries; the reversed packet tuple (``dst:dport -> src:sport``) then matches no
  tuple at all. Querying with the packet's tuple finds the flow with or without NAT.

Requirement: inside a network namespace the kernel registers conntrack's hooks only when some
netfilter rule needs them (a NAT rule, an nft ``ct`` expression, an iptables ``-m conntrack``
match). Without one no flow is ever tracked, every lookup answers "not found" and replies are
reported as probes. The daemon's own nftables table carries a ``ct state`` rule for that
reason; ``Conntrack.entry_count()`` lets it check that flows are tracked at all.

Cost: one ``sendto`` and one ``recv`` per lookup, about 17 µs (IPv4) to 23 µs (IPv6) in the
e2e test's namespace, so the caller asks only for packets that would otherwise be reported.
One ``Conntrack`` is not thread-safe.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass
from typing import ClassVar, Final

from portsentinel.errors import CaptureError
from portsentinel.host import netlink, netlink_messages
from portsentinel.host.netlink import NetlinkSocket, Receive
from portsentinel.host.netlink_messages import (
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    pack_attr,
    pack_message,
    pack_nested,
)

NETLINK_NETFILTER: Final = netlink.NETLINK_NETFILTER

# nfnetlink: subsystem in the high byte of the message type, then a 4-byte nfgenmsg
_NFNL_SUBSYS_CTNETLINK: Final = 1
_NFGENMSG: Final = struct.Struct("=BBH")
_NFNETLINK_V0: Final = 0
IPCTNL_MSG_CT_NEW: Final = 0
IPCTNL_MSG_CT_GET: Final = 1
IPCTNL_MSG_CT_GET_STATS: Final = 5

# ctnetlink attributes (linux/netfilter/nfnetlink_conntrack.h)
CTA_TUPLE_ORIG: Final = 1
CTA_TUPLE_REPLY: Final = 2
CTA_STATUS: Final = 3
CTA_TUPLE_IP: Final = 1
CTA_TUPLE_PROTO: Final = 2
CTA_IP_V4_SRC: Final = 1
CTA_IP_V4_DST: Final = 2
CTA_IP_V6_SRC: Final = 3
CTA_IP_V6_DST: Final = 4
CTA_PROTO_NUM: Final = 1
CTA_PROTO_SRC_PORT: Final = 2
CTA_PROTO_DST_PORT: Final = 3
CTA_STATS_GLOBAL_ENTRIES: Final = 1
IPS_ASSURED: Final = 1 << 2  # status bit: for TCP, the three-way handshake completed

IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17

# address length -> (family, source attribute, destination attribute)
_FAMILIES: Final[dict[int, tuple[int, int, int]]] = {
    4: (socket.AF_INET, CTA_IP_V4_SRC, CTA_IP_V4_DST),
    16: (socket.AF_INET6, CTA_IP_V6_SRC, CTA_IP_V6_DST),
}
_PORT: Final = struct.Struct("!H")
_U32_BE: Final = struct.Struct("!I")
_WHAT: Final = "ctnetlink"

FlowTuple = tuple[int, bytes, int, bytes, int]
"""(protocol, source address, source port, destination address, destination port)."""


@dataclass(frozen=True, slots=True)
class CtEntry:
    """The two tuples of one conntrack entry and its status bits, as the kernel reported them."""

    orig: FlowTuple
    reply: FlowTuple
    status: int = 0


# --- building requests ----------------------------------------------------------------------


def _message(msg_type: int, seq: int, family: int, body: bytes) -> bytes:
    nfgen = _NFGENMSG.pack(family, _NFNETLINK_V0, 0)
    kind = (_NFNL_SUBSYS_CTNETLINK << 8) | msg_type
    return pack_message(kind, NLM_F_REQUEST, seq, nfgen + body)


def tuple_attr(kind: int, flow: FlowTuple) -> bytes:
    """Encode ``flow`` as a CTA_TUPLE_ORIG or CTA_TUPLE_REPLY attribute."""
    proto, src, sport, dst, dport = flow
    if len(src) != len(dst) or len(src) not in _FAMILIES:
        raise ValueError("addresses must both be 4 (IPv4) or 16 (IPv6) bytes long")
    _family, src_kind, dst_kind = _FAMILIES[len(src)]
    return pack_nested(
        kind,
        pack_nested(CTA_TUPLE_IP, pack_attr(src_kind, src), pack_attr(dst_kind, dst)),
        pack_nested(
            CTA_TUPLE_PROTO,
            pack_attr(CTA_PROTO_NUM, bytes((proto,))),
            pack_attr(CTA_PROTO_SRC_PORT, _PORT.pack(sport)),
            pack_attr(CTA_PROTO_DST_PORT, _PORT.pack(dport)),
        ),
    )


def build_get(seq: int, flow: FlowTuple, *, kind: int = CTA_TUPLE_REPLY) -> bytes:
    """An ``IPCTNL_MSG_CT_GET`` request for the entry holding ``flow`` (either direction)."""
    family = _FAMILIES[len(flow[1])][0] if len(flow[1]) in _FAMILIES else socket.AF_UNSPEC
    return _message(IPCTNL_MSG_CT_GET, seq, family, tuple_attr(kind, flow))


def build_get_stats(seq: int) -> bytes:
    """An ``IPCTNL_MSG_CT_GET_STATS`` request (global entry count of this namespace)."""
    return _message(IPCTNL_MSG_CT_GET_STATS, seq, socket.AF_UNSPEC, b"")


# --- parsing answers ------------------------------------------------------------------------


def parse_attrs(data: bytes | memoryview) -> dict[int, memoryview]:
    """Map attribute type (flags stripped) to payload; a later duplicate wins.

    A truncated or impossible length ends the walk: the kernel never sends one, and a parser
    that stops is safer than one that guesses.
    """
    return netlink_messages.parse_attrs(data, _WHAT, strict=False)


def parse_tuple(data: bytes | memoryview) -> FlowTuple:
    """Decode the contents of a CTA_TUPLE_ORIG/REPLY attribute."""
    top = parse_attrs(data)
    try:
        ip = parse_attrs(top[CTA_TUPLE_IP])
        proto = parse_attrs(top[CTA_TUPLE_PROTO])
        if CTA_IP_V4_SRC in ip:
            src, dst = bytes(ip[CTA_IP_V4_SRC]), bytes(ip[CTA_IP_V4_DST])
        else:
            src, dst = bytes(ip[CTA_IP_V6_SRC]), bytes(ip[CTA_IP_V6_DST])
        number = proto[CTA_PROTO_NUM][0]
        # Protocols without ports (ICMP, GRE) carry other attributes; they read as port 0.
        sport = _PORT.unpack(proto[CTA_PROTO_SRC_PORT])[0] if CTA_PROTO_SRC_PORT in proto else 0
        dport = _PORT.unpack(proto[CTA_PROTO_DST_PORT])[0] if CTA_PROTO_DST_PORT in proto else 0
    except (KeyError, IndexError, struct.error) as exc:
        raise CaptureError(f"ctnetlink: malformed tuple attribute ({exc!r})") from exc
    return number, src, sport, dst, dport


def split_messages(data: bytes | memoryview) -> list[tuple[int, int, memoryview]]:
    """Split one netlink datagram into ``(type, seq, payload)`` triples; a length that does
    not fit ends the list."""
    return [
        (m.kind, m.seq, m.payload)
        for m in netlink_messages.split_messages(data, _WHAT, strict=False)
    ]


def error_code(payload: memoryview) -> int:
    """The positive errno of an NLMSG_ERROR payload (0 is an acknowledgement)."""
    return netlink_messages.error_code(payload, _WHAT)


def parse_entry(payload: memoryview) -> CtEntry:
    """Decode an ``IPCTNL_MSG_CT_NEW`` payload (nfgenmsg + attributes): tuples and status."""
    attrs = parse_attrs(payload[_NFGENMSG.size :])
    if CTA_TUPLE_ORIG not in attrs or CTA_TUPLE_REPLY not in attrs:
        raise CaptureError("ctnetlink: answer without both tuples")
    raw_status = attrs.get(CTA_STATUS)
    status = _U32_BE.unpack(raw_status)[0] if raw_status is not None and len(raw_status) == 4 else 0
    return CtEntry(
        parse_tuple(attrs[CTA_TUPLE_ORIG]), parse_tuple(attrs[CTA_TUPLE_REPLY]), int(status)
    )


# --- the client -----------------------------------------------------------------------------


class Conntrack(NetlinkSocket):
    """A ctnetlink client for point lookups in the current network namespace.

    Opening checks that the subsystem answers, so an unusable tracker (no ctnetlink in the
    kernel, no CAP_NET_ADMIN) fails here, once, with a ``CaptureError`` the caller can log
    before falling back to reporting without this filter.
    """

    PROTOCOL: ClassVar[int] = NETLINK_NETFILTER
    WHAT: ClassVar[str] = _WHAT
    RECEIVE: ClassVar[Receive] = Receive.COPY

    def __init__(self, timeout: float = 1.0) -> None:
        super().__init__(timeout=timeout)
        try:
            self.entry_count()
        except BaseException:
            self.close()
            raise

    def lookup_reply(self, proto: int, src: bytes, sport: int, dst: bytes, dport: int) -> bool:
        """True when the packet ``src:sport -> dst:dport`` is the reply of a tracked flow.

        That is a flow this side started (its original tuple leaves from ``dst``, perhaps
        before SNAT). False when nothing matches, and also when the packet matches a flow in
        its ORIGINAL direction, as a probe does once the kernel has seen it.
        """
        flow = (proto, src, sport, dst, dport)
        entry = self.find(flow)
        return entry is not None and entry.reply == flow

    def lookup_accepted(self, proto: int, src: bytes, sport: int, dst: bytes, dport: int) -> bool:
        """True when the TCP SYN ``src:sport -> dst:dport`` opened a connection this host
        accepted (the flow's original tuple, its handshake completed: ASSURED).

        Why: an active-mode FTP client closes its data listener right after ``accept``; on a
        LAN that happens before the capture hands the SYN over, so the port is free again by
        the time it is judged. A SYN to a closed port never matches: the kernel drops an entry
        whose only answer is a RST.
        """
        flow = (proto, src, sport, dst, dport)
        entry = self.find(flow, kind=CTA_TUPLE_ORIG)
        return entry is not None and entry.orig == flow and bool(entry.status & IPS_ASSURED)

    def find(self, flow: FlowTuple, *, kind: int = CTA_TUPLE_REPLY) -> CtEntry | None:
        """The entry whose original or reply tuple is ``flow``, or None (ENOENT)."""
        seq = self._next_seq()
        payload = self._ask(build_get(seq, flow, kind=kind), seq, IPCTNL_MSG_CT_NEW)
        return None if payload is None else parse_entry(payload)

    def entry_count(self) -> int:
        """How many flows the kernel tracks in this namespace; 0 hints that tracking is off."""
        seq = self._next_seq()
        payload = self._ask(build_get_stats(seq), seq, IPCTNL_MSG_CT_GET_STATS)
        if payload is None:
            raise CaptureError("ctnetlink: no statistics in this kernel")
        attrs = parse_attrs(payload[_NFGENMSG.size :])
        if CTA_STATS_GLOBAL_ENTRIES not in attrs:
            raise CaptureError("ctnetlink: statistics without an entry count")
        return int(_U32_BE.unpack(attrs[CTA_STATS_GLOBAL_ENTRIES])[0])

    def _ask(self, request: bytes, seq: int, answer_type: int) -> memoryview | None:
        """Send one request; return the answer's payload, or None for ENOENT.

        Stale answers (to a request that timed out earlier) are skipped; messages that do not
        fit end a datagram's walk rather than failing it.
        """
        answer = self._request_exchange(request, seq, strict=False)
        return _answer(answer.kind, answer.payload, answer_type)


def _answer(kind: int, payload: memoryview, answer_type: int) -> memoryview | None:
    if kind == NLMSG_ERROR:
        code = error_code(payload)
        if code == errno.ENOENT:
            return None
        if code == errno.EPERM:
            raise CaptureError("ctnetlink: permission denied (CAP_NET_ADMIN is needed)")
        raise netlink_messages.refusal(code, _WHAT)
    if kind == NLMSG_DONE or kind & 0xFF != answer_type:
        raise CaptureError(f"ctnetlink: unexpected answer of type {kind:#06x}")
    return payload
