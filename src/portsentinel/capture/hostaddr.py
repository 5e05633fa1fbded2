"""This host's own addresses and interfaces, read live from rtnetlink (``NETLINK_ROUTE``).

Why: the detector must know which packets are addressed to this host and which sources are this
host itself, and the capture side must know which interfaces exist, which are up, and which are
bridge ports or bond slaves (their traffic is seen again on the master). Addresses come and go
(DHCP, SLAAC, VPNs, containers), so a list read once at start goes stale; an ``AddressWatcher``
tells the caller when to read again.

The model is "notify, then re-dump": a notification only says that something changed and the
caller dumps the whole table again. A dump costs tens of microseconds on a host with a few
interfaces (the e2e test prints it), changes are rare, and a re-dump cannot drift the way an
incrementally patched copy can after a lost notification.

Only ``socket`` and ``struct``: the message layouts come from ``linux/netlink.h``,
``linux/rtnetlink.h``, ``linux/if_addr.h`` and ``linux/if_link.h``. The parsing functions are
pure (bytes in, values out) and never read past the buffer they are given; a malformed message
raises ``CaptureError``.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar, Final, Generic, NamedTuple, TypeVar

from portsentinel.errors import CaptureError

NETLINK_ROUTE: Final = 0

# netlink header (linux/netlink.h): length, type, flags, sequence, sender port id
_NLMSG_HDR: Final = struct.Struct("=IHHII")
NLMSG_NOOP: Final = 1
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLMSG_OVERRUN: Final = 4
NLM_F_REQUEST: Final = 0x1
NLM_F_MULTI: Final = 0x2
NLM_F_DUMP_INTR: Final = 0x10
NLM_F_DUMP: Final = 0x300
_I32: Final = struct.Struct("=i")
_U32: Final = struct.Struct("=I")

# rtnetlink message types and multicast groups (linux/rtnetlink.h)
RTM_NEWLINK: Final = 16
RTM_DELLINK: Final = 17
RTM_GETLINK: Final = 18
RTM_NEWADDR: Final = 20
RTM_DELADDR: Final = 21
RTM_GETADDR: Final = 22
RTMGRP_LINK: Final = 0x1
RTMGRP_IPV4_IFADDR: Final = 0x10
RTMGRP_IPV6_IFADDR: Final = 0x100

# struct ifaddrmsg: family, prefixlen, flags, scope, ifindex
_IFADDRMSG: Final = struct.Struct("=BBBBI")
IFA_ADDRESS: Final = 1
IFA_LOCAL: Final = 2

# struct ifinfomsg: family, pad, type, ifindex, flags, change
_IFINFOMSG: Final = struct.Struct("=BxHiII")
IFLA_IFNAME: Final = 3
IFLA_MASTER: Final = 10
IFLA_WIRELESS: Final = 11
IFLA_LINKINFO: Final = 18
IFLA_EXT_MASK: Final = 29
IFLA_INFO_KIND: Final = 1
RTEXT_FILTER_SKIP_STATS: Final = 1 << 3

IFF_UP: Final = 0x1
IFF_LOOPBACK: Final = 0x8
ARPHRD_ETHER: Final = 1
ARPHRD_PPP: Final = 512
ARPHRD_LOOPBACK: Final = 772
ARPHRD_NONE: Final = 65534

# attribute header; the two top bits of the type are flags (nested, network byte order)
_NLA_HDR: Final = struct.Struct("=HH")
_NLA_TYPE_MASK: Final = 0x3FFF

_ADDRESS_SIZES: Final[dict[int, int]] = {socket.AF_INET: 4, socket.AF_INET6: 16}
_RECV_SIZE: Final = 65536  # the kernel fills dump datagrams up to 32 KiB
_DUMP_ATTEMPTS: Final = 3
_WATCH_RCVBUF: Final = 1 << 20
# A storm of notifications must not keep poll() from returning to the caller's loop.
_MAX_DATAGRAMS_PER_POLL: Final = 1024

T = TypeVar("T")


def _align(length: int) -> int:
    return (length + 3) & ~3


# --- values ---------------------------------------------------------------------------------


class AddrInfo(NamedTuple):
    """One address configured on an interface (``address`` is packed, 4 or 16 bytes)."""

    ifindex: int
    address: bytes
    prefixlen: int
    scope: int


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """One network interface as RTM_GETLINK describes it."""

    ifindex: int
    name: str
    flags: int
    link_type: int
    """``ifi_type``: ARPHRD_ETHER, ARPHRD_NONE (tun, WireGuard), ARPHRD_PPP, ARPHRD_LOOPBACK..."""
    master: int | None
    """ifindex of the bridge or bond this interface belongs to, if any."""
    kind: str | None
    """Driver kind (``bridge``, ``veth``, ``wireguard``...); None for plain hardware."""

    @property
    def is_up(self) -> bool:
        return bool(self.flags & IFF_UP)

    @property
    def is_loopback(self) -> bool:
        return bool(self.flags & IFF_LOOPBACK)

    @property
    def has_master(self) -> bool:
        """A bridge port or bond slave: its traffic is seen again on the master."""
        return self.master is not None


class NlMsg(NamedTuple):
    """One netlink message: header fields and a view of the payload after the header."""

    kind: int
    flags: int
    seq: int
    pid: int
    payload: memoryview


# --- pure parsing ---------------------------------------------------------------------------


def split_messages(data: bytes | memoryview) -> list[NlMsg]:
    """Split one datagram into its messages; any length that does not fit is an error."""
    view = memoryview(data)
    messages: list[NlMsg] = []
    offset = 0
    while offset < len(view):
        if len(view) - offset < _NLMSG_HDR.size:
            raise CaptureError(f"rtnetlink: {len(view) - offset} stray bytes after a message")
        length, kind, flags, seq, pid = _NLMSG_HDR.unpack_from(view, offset)
        if length < _NLMSG_HDR.size or length > len(view) - offset:
            raise CaptureError(f"rtnetlink: message length {length} does not fit the datagram")
        messages.append(
            NlMsg(kind, flags, seq, pid, view[offset + _NLMSG_HDR.size : offset + length])
        )
        offset += _align(length)
    return messages


def parse_attrs(data: bytes | memoryview) -> dict[int, memoryview]:
    """Map attribute type (flag bits cleared) to payload; a later duplicate wins.

    A truncated attribute is an error rather than the end of the list: stopping early could
    silently drop IFA_LOCAL and leave the peer's IFA_ADDRESS to be taken for our own.
    """
    view = memoryview(data)
    found: dict[int, memoryview] = {}
    offset = 0
    while offset < len(view):
        if len(view) - offset < _NLA_HDR.size:
            raise CaptureError("rtnetlink: truncated attribute header")
        length, kind = _NLA_HDR.unpack_from(view, offset)
        if length < _NLA_HDR.size or length > len(view) - offset:
            raise CaptureError(f"rtnetlink: attribute {kind} of length {length} does not fit")
        found[kind & _NLA_TYPE_MASK] = view[offset + _NLA_HDR.size : offset + length]
        offset += _align(length)
    return found


def parse_address(payload: memoryview) -> AddrInfo | None:
    """Decode an RTM_NEWADDR/RTM_DELADDR payload; None for families other than IPv4/IPv6.

    On a point-to-point link IFA_ADDRESS is the peer and IFA_LOCAL our own end, in both
    families, so IFA_LOCAL wins whenever it is present; otherwise the two are equal or only
    IFA_ADDRESS is sent (the usual IPv6 case).
    """
    if len(payload) < _IFADDRMSG.size:
        raise CaptureError("rtnetlink: address message shorter than its header")
    family, prefixlen, _flags, scope, ifindex = _IFADDRMSG.unpack_from(payload)
    size = _ADDRESS_SIZES.get(family)
    if size is None:
        return None
    attrs = parse_attrs(payload[_IFADDRMSG.size :])
    raw = attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS))
    if raw is None:
        raise CaptureError(f"rtnetlink: address message for ifindex {ifindex} without address")
    if len(raw) != size:
        raise CaptureError(f"rtnetlink: address of {len(raw)} bytes for family {family}")
    return AddrInfo(ifindex, bytes(raw), prefixlen, scope)


def _string(raw: memoryview) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_link(payload: memoryview) -> LinkInfo:
    """Decode an RTM_NEWLINK/RTM_DELLINK payload."""
    if len(payload) < _IFINFOMSG.size:
        raise CaptureError("rtnetlink: link message shorter than its header")
    _family, link_type, ifindex, flags, _change = _IFINFOMSG.unpack_from(payload)
    attrs = parse_attrs(payload[_IFINFOMSG.size :])
    if IFLA_IFNAME not in attrs:
        raise CaptureError(f"rtnetlink: link message for ifindex {ifindex} without a name")
    master = None
    if IFLA_MASTER in attrs:
        if len(attrs[IFLA_MASTER]) != _U32.size:
            raise CaptureError(f"rtnetlink: IFLA_MASTER of {len(attrs[IFLA_MASTER])} bytes")
        master = _U32.unpack(attrs[IFLA_MASTER])[0] or None
    kind = None
    if IFLA_LINKINFO in attrs:
        info = parse_attrs(attrs[IFLA_LINKINFO])
        kind = _string(info[IFLA_INFO_KIND]) if IFLA_INFO_KIND in info else None
    return LinkInfo(ifindex, _string(attrs[IFLA_IFNAME]), flags, link_type, master, kind)


def is_change_notification(datagram: bytes | memoryview) -> bool:
    """True when a datagram from the multicast groups reports an address or link change.

    Wireless drivers send RTM_NEWLINK carrying only IFLA_WIRELESS for scan results and the
    like, sometimes many a second; those change nothing we track and are not reported.
    """
    for msg in split_messages(datagram):
        if msg.kind in (RTM_NEWADDR, RTM_DELADDR, RTM_DELLINK):
            return True
        if msg.kind == RTM_NEWLINK:
            attrs = parse_attrs(msg.payload[_IFINFOMSG.size :])
            if IFLA_WIRELESS not in attrs:
                return True
    return False


def _errno_of(payload: memoryview) -> int:
    if len(payload) < _I32.size:
        raise CaptureError("rtnetlink: error message without an error code")
    return -int(_I32.unpack_from(payload)[0])


def _dump_error(code: int) -> CaptureError:
    if code == errno.EPERM:
        return CaptureError("rtnetlink: dump refused (permission denied)")
    return CaptureError(f"rtnetlink: dump failed: {os.strerror(code)} (errno {code})")


class DumpReply(Generic[T]):
    """Collects the answer to one dump request, datagram by datagram.

    Pure (fed bytes, no socket) so that every branch is testable. Messages whose sequence
    number or port id is not ours are stale answers to an earlier request and are skipped.
    """

    def __init__(
        self, seq: int, portid: int, reply_type: int, parse: Callable[[memoryview], T | None]
    ) -> None:
        self.seq = seq
        self.portid = portid
        self.reply_type = reply_type
        self._parse = parse
        self.items: list[T] = []
        self.done = False
        self.interrupted = False
        """The kernel flagged the dump inconsistent (the table changed while it was read)."""
        self.skipped = 0

    def feed(self, datagram: bytes | memoryview) -> bool:
        """Take one datagram; True once the dump is complete."""
        for msg in split_messages(datagram):
            if self.done or msg.seq != self.seq or msg.pid != self.portid:
                self.skipped += 1
                continue
            if msg.flags & NLM_F_DUMP_INTR:
                self.interrupted = True
            self._take(msg)
        return self.done

    def _take(self, msg: NlMsg) -> None:
        if msg.kind == NLMSG_DONE:
            # Since Linux 4.x the payload carries the dump's final status.
            if len(msg.payload) >= _I32.size and (code := _errno_of(msg.payload)) != 0:
                raise _dump_error(code)
            self.done = True
        elif msg.kind == NLMSG_ERROR:
            code = _errno_of(msg.payload)
            if code != 0:
                raise _dump_error(code)
            self.done = True
        elif msg.kind == NLMSG_OVERRUN:
            raise CaptureError("rtnetlink: the kernel reported a data overrun during a dump")
        elif msg.kind == self.reply_type:
            item = self._parse(msg.payload)
            if item is not None:
                self.items.append(item)
            # A reply without NLM_F_MULTI is a whole answer by itself.
            self.done = not msg.flags & NLM_F_MULTI
        else:
            self.skipped += 1


def build_dump_request(msg_type: int, seq: int, body: bytes | None = None) -> bytes:
    """A dump request; without ``body``, an RTM_GETADDR or RTM_GETLINK one for every family.

    Other tables (routes, neighbours: see ``routes.py``) pass their own header as ``body``.
    """
    if body is None and msg_type == RTM_GETLINK:
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        # Skip the per-interface statistics: they are most of each message and unused here.
        body += _NLA_HDR.pack(8, IFLA_EXT_MASK) + _U32.pack(RTEXT_FILTER_SKIP_STATS)
    elif body is None:
        body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    header = _NLMSG_HDR.pack(
        _NLMSG_HDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    return header + body


# --- sockets --------------------------------------------------------------------------------


def _open(flags: int = 0) -> socket.socket:
    try:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | flags, NETLINK_ROUTE)
    except OSError as exc:
        raise CaptureError(
            f"rtnetlink unavailable: cannot open a NETLINK_ROUTE socket ({exc})"
        ) from exc


def _receive(sock: socket.socket) -> bytes | None:
    """One datagram from the kernel; None for one sent by another process (ignored)."""
    data, _ancillary, flags, sender = sock.recvmsg(_RECV_SIZE)
    if flags & socket.MSG_TRUNC:
        raise CaptureError(f"rtnetlink: datagram larger than {_RECV_SIZE} bytes")
    # Any local process may send unicast netlink to our port id; only the kernel is believed.
    return data if sender[0] == 0 else None


class RouteNetlink:
    """A NETLINK_ROUTE socket for repeated dumps in the current namespace; not thread-safe."""

    def __init__(self, timeout: float = 5.0) -> None:
        self._sock = _open()
        try:
            self._sock.bind((0, 0))
            self._sock.settimeout(timeout)
            self._portid: int = self._sock.getsockname()[0]
        except OSError as exc:
            self._sock.close()
            raise CaptureError(f"rtnetlink: cannot bind a NETLINK_ROUTE socket ({exc})") from exc
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RouteNetlink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def addresses(self) -> list[AddrInfo]:
        """Every IPv4 and IPv6 address of every interface, loopback and link-local included."""
        return self.dump(RTM_GETADDR, RTM_NEWADDR, parse_address)

    def local_addresses(self) -> frozenset[bytes]:
        """The packed addresses alone: "is this packet to me", "is this source me"."""
        return frozenset(info.address for info in self.addresses())

    def links(self) -> dict[int, LinkInfo]:
        """Every interface by ifindex."""
        return {link.ifindex: link for link in self.dump(RTM_GETLINK, RTM_NEWLINK, parse_link)}

    def dump(
        self,
        request: int,
        reply: int,
        parse: Callable[[memoryview], T | None],
        body: bytes | None = None,
    ) -> list[T]:
        """Any rtnetlink dump: ``request`` type with ``body`` (see ``build_dump_request``),
        each ``reply``-type message decoded by ``parse`` (None: skip it).

        Run again if the kernel flags it inconsistent (a table changed meanwhile).

        After the last attempt an inconsistent answer is returned as is: the change that
        disturbed it also reaches any watcher, whose caller will dump again.
        """
        answer = self._dump_once(request, reply, parse, body)
        for _ in range(_DUMP_ATTEMPTS - 1):
            if not answer.interrupted:
                break
            answer = self._dump_once(request, reply, parse, body)
        return answer.items

    def _dump_once(
        self,
        request: int,
        reply: int,
        parse: Callable[[memoryview], T | None],
        body: bytes | None,
    ) -> DumpReply[T]:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        answer = DumpReply(self._seq, self._portid, reply, parse)
        self._run(build_dump_request(request, self._seq, body), answer)
        return answer

    def _run(self, request: bytes, answer: DumpReply[T]) -> None:
        try:
            self._sock.sendto(request, (0, 0))
            while True:
                data = _receive(self._sock)
                if data is not None and answer.feed(data):
                    return
        except TimeoutError as exc:
            raise CaptureError("rtnetlink: the kernel did not finish a dump in time") from exc
        except OSError as exc:
            raise CaptureError(f"rtnetlink: dump request failed ({exc})") from exc


def dump_addresses() -> frozenset[bytes]:
    """Every local address of this host (current network namespace), packed 4 or 16 bytes."""
    with RouteNetlink() as rtnl:
        return rtnl.local_addresses()


def dump_links() -> dict[int, LinkInfo]:
    """Every interface of this host (current network namespace) by ifindex."""
    with RouteNetlink() as rtnl:
        return rtnl.links()


# Routes, their next hops and IPv6 routers are read in ``routes.py`` (through
# ``RouteNetlink.dump``); its ``RouteWatcher`` is this module's watcher on the route groups.


# --- notifications --------------------------------------------------------------------------


class AddressWatcher:
    """Tells its caller when this namespace's addresses or interfaces have changed.

    Open it BEFORE the first dump, so that no change can fall between the dump and the
    subscription. Put ``fileno()`` in the caller's selector; when it is readable call
    ``poll()``, and dump again when it returns True.
    """

    GROUPS: ClassVar[int] = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
    """The multicast groups subscribed to; a subclass watching other tables sets its own."""
    SUBJECT: ClassVar[str] = "address"

    def __init__(self, rcvbuf: int = _WATCH_RCVBUF) -> None:
        self._sock = _open(socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            # A larger buffer makes an overrun (ENOBUFS) rarer during bursts of changes.
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self._sock.bind((0, self.GROUPS))
        except OSError as exc:
            self._sock.close()
            raise CaptureError(
                f"rtnetlink: cannot subscribe to {self.SUBJECT} changes ({exc})"
            ) from exc
        self.malformed = 0
        """Datagrams that could not be parsed (reported as a change, to be safe)."""
        self.overruns = 0
        """Times the kernel dropped notifications because our buffer was full (ENOBUFS)."""

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> AddressWatcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def poll(self) -> bool:
        """Read every pending notification without blocking; True if a re-dump is needed.

        An overrun means lost notifications, and a malformed one means an unknown change:
        both report True, because a re-dump is cheap and a stale address list is not.
        """
        changed = False
        for _ in range(_MAX_DATAGRAMS_PER_POLL):
            try:
                data = _receive(self._sock)
            except BlockingIOError:
                return changed
            except CaptureError:  # truncated datagram
                self.malformed += 1
                changed = True
                continue
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise CaptureError(f"rtnetlink: reading notifications failed ({exc})") from exc
                self.overruns += 1
                changed = True
                continue
            if data is not None:
                changed |= self._judge(data)
        # Still more pending: the selector fires again and the next poll() reads on.
        return changed

    def _judge(self, data: bytes) -> bool:
        try:
            return is_change_notification(data)
        except CaptureError:
            self.malformed += 1
            return True
