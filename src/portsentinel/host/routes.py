"""The next hops this host sends through, read live from rtnetlink: never block a gateway.

Why: blocking the router the host talks through cuts the host off from everyone, and a
spoofed scan "from" the gateway's address is the cheapest way to make a naive responder do
it. So every address the kernel would forward to is collected, not just the default route's:

- every route of every table, IPv4 and IPv6 (one RTM_GETROUTE dump for all families; the
  kernel walks all tables when no table filter is asked for): its ``RTA_GATEWAY``, every next
  hop of an ``RTA_MULTIPATH`` route, and ``RTA_VIA`` (an IPv4 route through an IPv6 next
  hop, RFC 5549);
- the gateways of nexthop objects (``ip nexthop``, Linux 5.3+): with
  ``net.ipv4.nexthop_compat_mode=0`` a route names only the object's id, not its gateway;
- IPv6 routers from the neighbour table (``NTF_ROUTER``, learnt from router advertisements
  and neighbour advertisements with the R flag), which may not be any route's gateway yet.

The dumps go through ``hostaddr.RouteNetlink`` (same socket, same retry of an inconsistent
dump). The parsing functions are pure and never read past their buffer; a malformed message
raises ``CaptureError``. ``RouteWatcher`` reports route changes, so the caller re-reads them.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import ClassVar, Final, NamedTuple

from portsentinel.errors import CaptureError
from portsentinel.host.addresses import (
    AddressWatcher,
    RouteNetlink,
    parse_attrs,
    split_messages,
)
from portsentinel.host.netlink_messages import align

# rtnetlink message types and multicast groups (linux/rtnetlink.h)
RTM_NEWROUTE: Final = 24
RTM_DELROUTE: Final = 25
RTM_GETROUTE: Final = 26
RTM_NEWNEIGH: Final = 28
RTM_GETNEIGH: Final = 30
RTM_NEWNEXTHOP: Final = 104
RTM_GETNEXTHOP: Final = 106
RTMGRP_IPV4_ROUTE: Final = 0x40
RTMGRP_IPV6_ROUTE: Final = 0x400

# struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTMSG: Final = struct.Struct("=BBBBBBBBI")
RTA_DST: Final = 1
RTA_GATEWAY: Final = 5
RTA_MULTIPATH: Final = 9
RTA_TABLE: Final = 15
RTA_VIA: Final = 18
RT_TABLE_MAIN: Final = 254
# struct rtnexthop: length (header and its attributes), flags, hops, ifindex
_RTNEXTHOP: Final = struct.Struct("=HBBi")
# struct rtvia: an address family (sa_family_t, host order), then the address
_RTVIA_FAMILY: Final = struct.Struct("=H")

# struct ndmsg: family, 3 pad bytes, ifindex, state, flags, type (linux/neighbour.h)
_NDMSG: Final = struct.Struct("=BxxxiHBB")
NDA_DST: Final = 1
NTF_ROUTER: Final = 0x80

# struct nhmsg: family, scope, protocol, reserved, flags (linux/nexthop.h)
_NHMSG: Final = struct.Struct("=BBBxI")
NHA_ID: Final = 1
NHA_GATEWAY: Final = 6

_U32: Final = struct.Struct("=I")
_SIZES: Final[dict[int, int]] = {socket.AF_INET: 4, socket.AF_INET6: 16}


# --- values ---------------------------------------------------------------------------------


class Route(NamedTuple):
    """A route that forwards through at least one next hop (packed gateway addresses).

    ``destination`` is the packed network address of the route's own family; a next hop may
    be of the other family (``RTA_VIA``).
    """

    family: int
    destination: bytes
    prefixlen: int
    table: int
    gateways: tuple[bytes, ...]

    @property
    def is_default(self) -> bool:
        return self.prefixlen == 0

    def destination_text(self) -> str:
        """``default`` or the destination network in CIDR form."""
        if self.is_default:
            return "default"
        return str(ipaddress.ip_network((self.destination, self.prefixlen), strict=False))


class NexthopGateway(NamedTuple):
    """A nexthop object (``ip nexthop``) with a gateway: its id and the packed address."""

    nhid: int
    gateway: bytes


@dataclass(frozen=True, slots=True)
class NextHops:
    """Everything one read found: routes with gateways, IPv6 routers, nexthop objects."""

    routes: tuple[Route, ...] = ()
    routers: tuple[bytes, ...] = ()
    objects: tuple[NexthopGateway, ...] = ()
    warnings: tuple[str, ...] = ()

    def gateways(self) -> frozenset[bytes]:
        """Every next-hop address, whatever it came from."""
        found = {gw for route in self.routes for gw in route.gateways}
        found.update(self.routers)
        found.update(obj.gateway for obj in self.objects)
        return frozenset(found)


# --- pure parsing ---------------------------------------------------------------------------


def _address(raw: memoryview, family: int, what: str) -> bytes:
    size = _SIZES.get(family)
    if size is None:
        raise CaptureError(f"rtnetlink: {what} of unknown address family {family}")
    if len(raw) != size:
        raise CaptureError(f"rtnetlink: {what} of {len(raw)} bytes for family {family}")
    return bytes(raw)


def _via(raw: memoryview) -> bytes:
    """The address of an ``RTA_VIA``: a family of its own, then the address."""
    if len(raw) < _RTVIA_FAMILY.size:
        raise CaptureError("rtnetlink: RTA_VIA shorter than its family field")
    (family,) = _RTVIA_FAMILY.unpack_from(raw)
    return _address(raw[_RTVIA_FAMILY.size :], family, "RTA_VIA")


def _hop_gateways(attrs: dict[int, memoryview], family: int) -> list[bytes]:
    """The gateways one set of attributes names (a route's own, or one multipath hop's)."""
    found: list[bytes] = []
    if RTA_GATEWAY in attrs:
        found.append(_address(attrs[RTA_GATEWAY], family, "RTA_GATEWAY"))
    if RTA_VIA in attrs:
        found.append(_via(attrs[RTA_VIA]))
    return found


def parse_multipath(data: memoryview, family: int) -> list[bytes]:
    """The gateways of an ``RTA_MULTIPATH`` payload: ``rtnexthop`` records, each followed
    by its own attributes; a record that does not fit is an error."""
    found: list[bytes] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _RTNEXTHOP.size:
            raise CaptureError("rtnetlink: truncated multipath next hop")
        length, _flags, _hops, _ifindex = _RTNEXTHOP.unpack_from(data, offset)
        if length < _RTNEXTHOP.size or length > len(data) - offset:
            raise CaptureError(f"rtnetlink: multipath next hop of length {length} does not fit")
        attrs = parse_attrs(data[offset + _RTNEXTHOP.size : offset + length])
        found.extend(_hop_gateways(attrs, family))
        offset += align(length)
    return found


def parse_route(payload: memoryview) -> Route | None:
    """Decode an RTM_NEWROUTE/RTM_DELROUTE payload.

    None for families other than IPv4/IPv6 (multicast routing, MPLS) and for routes without
    a next-hop address: connected, local, broadcast, blackhole, unreachable routes.
    """
    if len(payload) < _RTMSG.size:
        raise CaptureError("rtnetlink: route message shorter than its header")
    family, dst_len, _src_len, _tos, table, _proto, _scope, _type, _flags = _RTMSG.unpack_from(
        payload
    )
    size = _SIZES.get(family)
    if size is None:
        return None
    attrs = parse_attrs(payload[_RTMSG.size :])
    gateways = _hop_gateways(attrs, family)
    if RTA_MULTIPATH in attrs:
        gateways.extend(parse_multipath(attrs[RTA_MULTIPATH], family))
    if not gateways:
        return None
    if dst_len > size * 8:
        raise CaptureError(f"rtnetlink: route prefix length {dst_len} for family {family}")
    if RTA_TABLE in attrs:  # table ids above 255 only fit in the attribute
        table = _u32(attrs[RTA_TABLE], "RTA_TABLE")
    destination = bytes(size)  # no RTA_DST: a default route
    if RTA_DST in attrs:
        destination = _address(attrs[RTA_DST], family, "RTA_DST")
    return Route(family, destination, dst_len, table, tuple(dict.fromkeys(gateways)))


def parse_router(payload: memoryview) -> bytes | None:
    """The address of an IPv6 neighbour entry flagged as a router; None for any other."""
    if len(payload) < _NDMSG.size:
        raise CaptureError("rtnetlink: neighbour message shorter than its header")
    family, _ifindex, _state, flags, _type = _NDMSG.unpack_from(payload)
    if family != socket.AF_INET6 or not flags & NTF_ROUTER:
        return None
    attrs = parse_attrs(payload[_NDMSG.size :])
    if NDA_DST not in attrs:
        raise CaptureError("rtnetlink: router neighbour entry without an address")
    return _address(attrs[NDA_DST], family, "NDA_DST")


def parse_nexthop(payload: memoryview) -> NexthopGateway | None:
    """A nexthop object with a gateway; None for groups, blackholes and device-only ones."""
    if len(payload) < _NHMSG.size:
        raise CaptureError("rtnetlink: nexthop message shorter than its header")
    family, _scope, _proto, _flags = _NHMSG.unpack_from(payload)
    attrs = parse_attrs(payload[_NHMSG.size :])
    if NHA_GATEWAY not in attrs:
        return None
    if NHA_ID not in attrs:
        raise CaptureError("rtnetlink: nexthop object without an id")
    return NexthopGateway(
        _u32(attrs[NHA_ID], "NHA_ID"), _address(attrs[NHA_GATEWAY], family, "NHA_GATEWAY")
    )


def _u32(raw: memoryview, what: str) -> int:
    if len(raw) != _U32.size:
        raise CaptureError(f"rtnetlink: {what} of {len(raw)} bytes")
    value: int = _U32.unpack(raw)[0]
    return value


def is_route_change(datagram: bytes | memoryview) -> bool:
    """True when a route notification adds or removes a route with a next hop.

    Connected and local routes come and go with every address change; they change no
    gateway, so they are not reported (the address watcher covers the addresses).
    """
    return any(
        msg.kind in (RTM_NEWROUTE, RTM_DELROUTE) and parse_route(msg.payload) is not None
        for msg in split_messages(datagram)
    )


# Request headers: all families and tables for routes; IPv6 only for routers (IPv4 has no
# router flag); every nexthop object.
ROUTE_REQUEST: Final = _RTMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0, 0)
ROUTER_REQUEST: Final = _NDMSG.pack(socket.AF_INET6, 0, 0, 0, 0)
NEXTHOP_REQUEST: Final = _NHMSG.pack(socket.AF_UNSPEC, 0, 0, 0)


# --- reading --------------------------------------------------------------------------------


def read_next_hops(rtnl: RouteNetlink) -> NextHops:
    """Dump routes, IPv6 routers and nexthop objects over ``rtnl``.

    Routes and routers must be read (``CaptureError`` otherwise). Nexthop objects only exist
    since Linux 5.3 and usually repeat what routes already say, so a kernel that cannot list
    them leaves a warning, not a failure.
    """
    routes = rtnl.dump(RTM_GETROUTE, RTM_NEWROUTE, parse_route, ROUTE_REQUEST)
    routers = rtnl.dump(RTM_GETNEIGH, RTM_NEWNEIGH, parse_router, ROUTER_REQUEST)
    warnings: tuple[str, ...] = ()
    try:
        objects = rtnl.dump(RTM_GETNEXTHOP, RTM_NEWNEXTHOP, parse_nexthop, NEXTHOP_REQUEST)
    except CaptureError as exc:
        objects = []
        warnings = (f"nexthop objects not read: {exc}",)
    return NextHops(
        tuple(routes), tuple(dict.fromkeys(routers)), tuple(dict.fromkeys(objects)), warnings
    )


def dump_next_hops() -> NextHops:
    """``read_next_hops`` over a socket of its own (current network namespace)."""
    with RouteNetlink() as rtnl:
        return read_next_hops(rtnl)


class RouteWatcher(AddressWatcher):
    """Tells its caller when a route with a next hop was added or removed (both families).

    Open it before the first dump, as ``AddressWatcher``. IPv6 routers are not followed:
    neighbour notifications fire for every ARP/ND state change of every host on the link,
    far too often to wake the daemon for; a router also installs a route (via its link-local
    address), and the caller's periodic refresh picks up the neighbour table.
    """

    GROUPS: ClassVar[int] = RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
    SUBJECT: ClassVar[str] = "route"

    def _judge(self, data: bytes | memoryview) -> bool:
        try:
            return is_route_change(data)
        except CaptureError:
            self.malformed += 1
            return True
