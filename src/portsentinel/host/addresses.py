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

Only ``socket`` and ``struct``: the message layouts come from ``linux/rtnetlink.h``,
``linux/if_addr.h`` and ``linux/if_link.h``; the netlink envelope around them is read by
``netlink_messages.py``, the socket is ``netlink.py``'s. The parsing functions are pure
(bytes in, values out) and never read past the buffer they are given; a malformed message
raises ``CaptureError``.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Final, NamedTuple, TypeVar

from portsentinel.errors import CaptureError
from portsentinel.host import netlink, netlink_messages
from portsentinel.host.netlink import NetlinkSocket
from portsentinel.host.netlink_messages import pack_attr, pack_message

# This module's names for the netlink envelope (kept for its importers); see
# netlink_messages.py.
NETLINK_ROUTE: Final = netlink.NETLINK_ROUTE
NLMSG_NOOP: Final = netlink_messages.NLMSG_NOOP
NLMSG_ERROR: Final = netlink_messages.NLMSG_ERROR
NLMSG_DONE: Final = netlink_messages.NLMSG_DONE
NLMSG_OVERRUN: Final = netlink_messages.NLMSG_OVERRUN
NLM_F_REQUEST: Final = netlink_messages.NLM_F_REQUEST
NLM_F_MULTI: Final = netlink_messages.NLM_F_MULTI
NLM_F_DUMP_INTR: Final = netlink_messages.NLM_F_DUMP_INTR
NLM_F_DUMP: Final = netlink_messages.NLM_F_DUMP
NlMsg = netlink_messages.NlMsg
DumpReply = netlink_messages.DumpReply
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

_ADDRESS_SIZES: Final[dict[int, int]] = {socket.AF_INET: 4, socket.AF_INET6: 16}
_DUMP_ATTEMPTS: Final = 3
_WATCH_RCVBUF: Final = 1 << 20
# A storm of notifications must not keep poll() from returning to the caller's loop.
_MAX_DATAGRAMS_PER_POLL: Final = 1024

T = TypeVar("T")
_WHAT: Final = "rtnetlink"


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


# --- pure parsing ---------------------------------------------------------------------------


def split_messages(data: bytes | memoryview) -> list[netlink_messages.NlMsg]:
    """Split one datagram into its messages; any length that does not fit is an error."""
    return netlink_messages.split_messages(data, _WHAT)


def parse_attrs(data: bytes | memoryview) -> dict[int, memoryview]:
    """Map attribute type (flag bits cleared) to payload; a later duplicate wins.

    A truncated attribute is an error rather than the end of the list: stopping early could
    silently drop IFA_LOCAL and leave the peer's IFA_ADDRESS to be taken for our own.
    """
    return netlink_messages.parse_attrs(data, _WHAT)


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


def build_dump_request(msg_type: int, seq: int, body: bytes | None = None) -> bytes:
    """A dump request; without ``body``, an RTM_GETADDR or RTM_GETLINK one for every family.

    Other tables (routes, neighbours: see ``routes.py``) pass their own header as ``body``.
    """
    if body is None and msg_type == RTM_GETLINK:
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        # Skip the per-interface statistics: they are most of each message and unused here.
        body += pack_attr(IFLA_EXT_MASK, _U32.pack(RTEXT_FILTER_SKIP_STATS))
    elif body is None:
        body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    return pack_message(msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


# --- sockets --------------------------------------------------------------------------------


def _open(flags: int = 0) -> socket.socket:
    """Every NETLINK_ROUTE socket of this module is opened here (tests put a stand-in here)."""
    return netlink.open_socket(NETLINK_ROUTE, _WHAT, flags)


class _RouteSocket(NetlinkSocket):
    """A NETLINK_ROUTE socket; only datagrams sent by the kernel are believed."""

    PROTOCOL: ClassVar[int] = NETLINK_ROUTE
    WHAT: ClassVar[str] = _WHAT
    SOCK_FLAGS: ClassVar[int] = 0
    _portid: int = 0

    def _new_socket(self) -> socket.socket:
        return _open(self.SOCK_FLAGS)

    def _setup(self, sock: socket.socket) -> None:
        super()._setup(sock)
        self._portid = sock.getsockname()[0]


class RouteNetlink(_RouteSocket):
    """A NETLINK_ROUTE socket for repeated dumps in the current namespace; not thread-safe."""

    def __init__(self, timeout: float = 5.0) -> None:
        super().__init__(timeout=timeout)
        self._socket()  # an unusable rtnetlink fails here, once

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
    ) -> netlink_messages.DumpReply[T]:
        self._socket()  # reopened after a failed exchange: the port id is the new socket's
        seq = self._next_seq()
        answer = DumpReply(seq, self._portid, reply, parse, what=_WHAT)
        self._exchange(build_dump_request(request, seq, body), answer.feed)
        return answer


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


class AddressWatcher(_RouteSocket):
    """Tells its caller when this namespace's addresses or interfaces have changed.

    Open it BEFORE the first dump, so that no change can fall between the dump and the
    subscription. Put ``fileno()`` in the caller's selector; when it is readable call
    ``poll()``, and dump again when it returns True.
    """

    GROUPS: ClassVar[int] = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
    """The multicast groups subscribed to; a subclass watching other tables sets its own."""
    SUBJECT: ClassVar[str] = "address"
    SOCK_FLAGS: ClassVar[int] = socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC

    def __init__(self, rcvbuf: int = _WATCH_RCVBUF) -> None:
        # A larger buffer makes an overrun (ENOBUFS) rarer during bursts of changes.
        super().__init__(rcvbuf=rcvbuf)
        self._socket()
        self.malformed = 0
        """Datagrams that could not be parsed (reported as a change, to be safe)."""
        self.overruns = 0
        """Times the kernel dropped notifications because our buffer was full (ENOBUFS)."""

    def _setup_error(self, exc: OSError) -> CaptureError:
        return CaptureError(f"rtnetlink: cannot subscribe to {self.SUBJECT} changes ({exc})")

    def poll(self) -> bool:
        """Read every pending notification without blocking; True if a re-dump is needed.

        An overrun means lost notifications, and a malformed one means an unknown change:
        both report True, because a re-dump is cheap and a stale address list is not.
        """
        sock = self._socket()
        changed = False
        for _ in range(_MAX_DATAGRAMS_PER_POLL):
            try:
                data = self._receive(sock)
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

    def _judge(self, data: bytes | memoryview) -> bool:
        try:
            return is_change_notification(data)
        except CaptureError:
            self.malformed += 1
            return True
