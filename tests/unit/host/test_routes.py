"""rtnetlink route, neighbour and nexthop messages, on hand-built and recorded bytes; the dump
and the watcher on a fake socket. No root, no real netlink traffic."""

from __future__ import annotations

import errno
import socket
import struct
import sys

import pytest

from portsentinel.errors import CaptureError
from portsentinel.host import addresses as ha
from portsentinel.host import routes as rt

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="literals in host order")

GW4 = bytes([198, 18, 0, 254])
GW4_B = bytes([198, 18, 0, 250])
GW4_C = bytes([198, 18, 0, 251])
NET4 = bytes([198, 18, 9, 0])
GW6 = bytes.fromhex("fd00005e0000000000000000000000fe")
GW6_B = bytes.fromhex("fd00005e0000000000000000000000fa")
NET6 = bytes.fromhex("fd00005e000900000000000000000000")
PORTID = 4242
V4, V6 = socket.AF_INET, socket.AF_INET6

# --- a tiny encoder of our own, independent of the module's ---------------------------------


def nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def rtmsg(family: int, attrs: bytes, *, dst_len: int = 24, table: int = 254) -> bytes:
    """struct rtmsg (unicast route, boot protocol, universe scope) and its attributes."""
    return struct.pack("=BBBBBBBBI", family, dst_len, 0, 0, table, 3, 0, 1, 0) + attrs


def hop(attrs: bytes, ifindex: int = 2) -> bytes:
    """One struct rtnexthop of an RTA_MULTIPATH, with its attributes."""
    return struct.pack("=HBBi", 8 + len(attrs), 0, 0, ifindex) + attrs


def via(family: int, address: bytes) -> bytes:
    return nla(18, struct.pack("=H", family) + address)


def ndmsg(family: int, flags: int, attrs: bytes, state: int = 0x80) -> bytes:
    return struct.pack("=BxxxiHBB", family, 2, state, flags, 1) + attrs


def nhmsg(family: int, attrs: bytes) -> bytes:
    return struct.pack("=BBBxI", family, 0, 3, 0) + attrs


def nlmsg(kind: int, payload: bytes, *, seq: int = 1, flags: int = 2) -> bytes:
    length = 16 + len(payload)
    return struct.pack("=IHHII", length, kind, flags, seq, PORTID) + payload + b"\0" * (-length % 4)


def done(seq: int) -> bytes:
    return nlmsg(3, struct.pack("=i", 0), seq=seq)


def error(seq: int, code: int) -> bytes:
    return nlmsg(2, struct.pack("=i", -code) + b"\0" * 16, seq=seq, flags=0)


def parse(payload: bytes) -> rt.Route | None:
    return rt.parse_route(memoryview(payload))


# Recorded from Linux 6.18 in a throwaway namespace (RTM_NEWROUTE/RTM_NEWNEIGH payloads):
# ``ip route add 198.18.10.0/24 nexthop via 198.18.0.250 nexthop via 198.18.0.251``,
REAL_MULTIPATH4 = bytes.fromhex(
    "02180000fe0300010000000008000f00fe00000008000100c6120a0024000900100000000200000008000500"
    "c61200fa100000000200000008000500c61200fb"
)
# ``ip route add 198.18.11.0/24 via inet6 fd00:5e::fc dev veth-t`` (an IPv6 RTA_VIA),
REAL_VIA6 = bytes.fromhex(
    "02180000fe0300010000000008000f00fe00000008000100c6120b00160012000a00fd00005e000000000000"
    "0000000000fc00000800040002000000"
)
# ``ip -6 route add fd00:5e:10::/64 nexthop via fd00:5e::fa dev veth-t nexthop via
# fd00:5e::fb dev veth-t``,
REAL_MULTIPATH6 = bytes.fromhex(
    "0a400000fe0300010000000008000f00fe00000014000100fd00005e00100000000000000000000008000600"
    "000400003c0009001c0000000200000014000500fd00005e0000000000000000000000fa1c00000002000000"
    "14000500fd00005e0000000000000000000000fb24000c00000000000000000000000000000000000000000000"
    "00000000000000000000000500140000000000"
)
# ``ip -6 neigh add fd00:5e::fd lladdr 02:00:00:00:00:fd dev veth-t router nud permanent``,
REAL_ROUTER = bytes.fromhex(
    "0a000000020000008000800114000100fd00005e0000000000000000000000fd0a0002000200000000fd0000"
    "08000400000000001400030004000000040000000400000000000000"
)
# and the same neighbour table's multicast entry for ff02::16 (NOARP, no router flag).
REAL_MULTICAST_NEIGH = bytes.fromhex(
    "0a000000020000004000000514000100ff0200000000000000000000000000160a0002003333000000160000"
    "08000400000000001400030076170000060000000600000000000000"
)


# --- routes ---------------------------------------------------------------------------------


def test_recorded_ipv4_multipath_route_gives_both_next_hops() -> None:
    route = parse(REAL_MULTIPATH4)
    assert route is not None
    assert route.gateways == (GW4_B, GW4_C)
    assert route.destination_text() == "198.18.10.0/24"
    assert route.table == 254


def test_recorded_ipv4_route_via_an_ipv6_next_hop() -> None:
    route = parse(REAL_VIA6)
    assert route is not None
    assert route.family == V4
    assert route.gateways == (bytes.fromhex("fd00005e0000000000000000000000fc"),)
    assert route.destination_text() == "198.18.11.0/24"


def test_recorded_ipv6_multipath_route() -> None:
    route = parse(REAL_MULTIPATH6)
    assert route is not None
    assert route.gateways == (GW6_B, bytes.fromhex("fd00005e0000000000000000000000fb"))
    assert route.destination_text() == "fd00:5e:10::/64"


@pytest.mark.parametrize(
    ("payload", "gateways", "destination", "table"),
    [
        pytest.param(rtmsg(V4, nla(1, NET4) + nla(5, GW4)), (GW4,), "198.18.9.0/24", 254, id="v4"),
        pytest.param(rtmsg(V4, nla(5, GW4), dst_len=0), (GW4,), "default", 254, id="default4"),
        pytest.param(
            rtmsg(V6, nla(1, NET6) + nla(5, GW6), dst_len=64),
            (GW6,),
            "fd00:5e:9::/64",
            254,
            id="v6",
        ),
        pytest.param(
            rtmsg(V4, nla(5, GW4) + nla(15, struct.pack("=I", 1000)), dst_len=0, table=252),
            (GW4,),
            "default",
            1000,
            id="rta-table-wins",
        ),
        pytest.param(
            rtmsg(V4, nla(1, NET4) + nla(9, hop(nla(5, GW4_B)) + hop(via(V6, GW6)))),
            (GW4_B, GW6),
            "198.18.9.0/24",
            254,
            id="multipath-with-via",
        ),
        pytest.param(
            rtmsg(V4, nla(1, NET4) + nla(5, GW4) + nla(9, hop(nla(5, GW4)) + hop(b""))),
            (GW4,),
            "198.18.9.0/24",
            254,
            id="duplicates-once-and-device-only-hop",
        ),
        pytest.param(
            rtmsg(V6, via(V6, GW6) + nla(1, NET6), dst_len=48),
            (GW6,),
            "fd00:5e:9::/48",
            254,
            id="v6-via",
        ),
    ],
)
def test_route_next_hops(
    payload: bytes, gateways: tuple[bytes, ...], destination: str, table: int
) -> None:
    route = parse(payload)
    assert route is not None
    assert route.gateways == gateways
    assert route.destination_text() == destination
    assert route.table == table


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(rtmsg(V4, nla(1, NET4) + nla(4, struct.pack("=I", 2))), id="connected"),
        pytest.param(rtmsg(V4, nla(1, NET4) + nla(9, hop(b"") + hop(b""))), id="device-hops"),
        pytest.param(rtmsg(128, nla(5, GW4)), id="multicast-routing-family"),
        pytest.param(rtmsg(28, b"\xff\xff\xff"), id="mpls-not-even-parsed"),
    ],
)
def test_routes_without_next_hop_or_of_other_families_are_skipped(payload: bytes) -> None:
    assert parse(payload) is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param(rtmsg(V4, b"")[:11], "shorter than its header", id="short"),
        pytest.param(rtmsg(V4, nla(5, GW6)), "RTA_GATEWAY of 16 bytes", id="gateway-size"),
        pytest.param(rtmsg(V4, nla(18, b"\x0a")), "shorter than its family", id="via-short"),
        pytest.param(rtmsg(V4, via(V6, GW4)), "RTA_VIA of 4 bytes", id="via-size"),
        pytest.param(rtmsg(V4, via(17, GW4)), "unknown address family 17", id="via-family"),
        pytest.param(rtmsg(V4, nla(9, b"\0" * 6)), "truncated multipath", id="hop-short"),
        pytest.param(
            rtmsg(V4, nla(9, struct.pack("=HBBi", 40, 0, 0, 2))), "does not fit", id="hop-long"
        ),
        pytest.param(
            rtmsg(V4, nla(9, struct.pack("=HBBi", 4, 0, 0, 2))), "does not fit", id="hop-tiny"
        ),
        pytest.param(rtmsg(V4, nla(5, GW4), dst_len=33), "prefix length 33", id="dst-len"),
        pytest.param(rtmsg(V4, nla(5, GW4) + nla(1, NET6)), "RTA_DST of 16", id="dst-size"),
        pytest.param(rtmsg(V4, nla(5, GW4) + nla(15, b"\1\0")), "RTA_TABLE of 2", id="table"),
        pytest.param(rtmsg(V4, nla(5, GW4))[:-2], "does not fit", id="truncated-attr"),
    ],
)
def test_malformed_route_is_an_error(payload: bytes, message: str) -> None:
    with pytest.raises(CaptureError, match=message):
        parse(payload)


# --- IPv6 routers and nexthop objects --------------------------------------------------------


def test_recorded_router_entry_and_plain_entry() -> None:
    assert rt.parse_router(memoryview(REAL_ROUTER)) == bytes.fromhex(
        "fd00005e0000000000000000000000fd"
    )
    assert rt.parse_router(memoryview(REAL_MULTICAST_NEIGH)) is None


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param(ndmsg(V6, 0x80, nla(1, GW6)), GW6, id="router"),
        pytest.param(ndmsg(V6, 0x80, nla(1, GW6), state=0x04), GW6, id="stale-router"),
        pytest.param(ndmsg(V6, 0x00, nla(1, GW6)), None, id="host"),
        pytest.param(ndmsg(V4, 0x80, nla(1, GW4)), None, id="ipv4-has-no-routers"),
    ],
)
def test_router_entries(payload: bytes, expected: bytes | None) -> None:
    assert rt.parse_router(memoryview(payload)) == expected


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param(ndmsg(V6, 0x80, b"")[:8], "shorter than its header", id="short"),
        pytest.param(ndmsg(V6, 0x80, nla(2, b"\0" * 6)), "without an address", id="no-dst"),
        pytest.param(ndmsg(V6, 0x80, nla(1, GW4)), "NDA_DST of 4 bytes", id="dst-size"),
    ],
)
def test_malformed_router_entry_is_an_error(payload: bytes, message: str) -> None:
    with pytest.raises(CaptureError, match=message):
        rt.parse_router(memoryview(payload))


def test_nexthop_objects() -> None:
    nhid = nla(1, struct.pack("=I", 7))
    assert rt.parse_nexthop(memoryview(nhmsg(V4, nhid + nla(6, GW4)))) == (7, GW4)
    assert rt.parse_nexthop(memoryview(nhmsg(V6, nhid + nla(6, GW6)))) == (7, GW6)
    group = nla(2, struct.pack("=IHH", 7, 1, 0))
    assert rt.parse_nexthop(memoryview(nhmsg(0, nla(1, struct.pack("=I", 9)) + group))) is None
    with pytest.raises(CaptureError, match="without an id"):
        rt.parse_nexthop(memoryview(nhmsg(V4, nla(6, GW4))))
    with pytest.raises(CaptureError, match="NHA_GATEWAY of 16 bytes"):
        rt.parse_nexthop(memoryview(nhmsg(V4, nhid + nla(6, GW6))))
    with pytest.raises(CaptureError, match="shorter than its header"):
        rt.parse_nexthop(memoryview(b"\2\0\0"))


# --- requests and notifications --------------------------------------------------------------


def test_request_headers_ask_every_family_and_table() -> None:
    route = ha.build_dump_request(rt.RTM_GETROUTE, 5, rt.ROUTE_REQUEST)
    assert struct.unpack_from("=IHHII", route) == (28, 26, 0x301, 5, 0)
    assert route[16:] == bytes(12)  # AF_UNSPEC, no table: the kernel walks all of them
    neigh = ha.build_dump_request(rt.RTM_GETNEIGH, 6, rt.ROUTER_REQUEST)
    assert struct.unpack_from("=IHHII", neigh) == (28, 30, 0x301, 6, 0)
    assert neigh[16] == V6
    assert neigh[17:] == bytes(11)
    nexthop = ha.build_dump_request(rt.RTM_GETNEXTHOP, 7, rt.NEXTHOP_REQUEST)
    assert struct.unpack_from("=IHHII", nexthop) == (24, 106, 0x301, 7, 0)


def test_address_and_link_requests_are_unchanged_by_the_body_parameter() -> None:
    assert ha.build_dump_request(ha.RTM_GETADDR, 7) == ha.build_dump_request(
        ha.RTM_GETADDR, 7, None
    )
    assert len(ha.build_dump_request(ha.RTM_GETLINK, 8)) == 16 + 16 + 8


@pytest.mark.parametrize(
    ("data", "changed"),
    [
        pytest.param(nlmsg(24, rtmsg(V4, nla(1, NET4) + nla(5, GW4)), flags=0), True, id="new"),
        pytest.param(nlmsg(25, rtmsg(V6, nla(5, GW6), dst_len=0), flags=0), True, id="deleted"),
        pytest.param(nlmsg(24, rtmsg(V4, nla(1, NET4)), flags=0), False, id="connected"),
        pytest.param(nlmsg(28, ndmsg(V6, 0x80, nla(1, GW6)), flags=0), False, id="neighbour"),
        pytest.param(
            nlmsg(24, rtmsg(V4, nla(1, NET4))) + nlmsg(24, REAL_MULTIPATH4), True, id="second"
        ),
    ],
)
def test_route_change_notifications(data: bytes, changed: bool) -> None:
    assert rt.is_route_change(data) is changed


# --- the dump and the watcher on a fake socket ------------------------------------------------


class FakeKernel:
    """Answers dump requests by message type from a table; records what was asked."""

    def __init__(self, answers: dict[int, list[bytes] | int]) -> None:
        self.answers = answers  # request type -> reply payloads, or an errno to refuse with
        self.pending: list[bytes] = []
        self.asked: list[int] = []
        self.bound: tuple[int, int] = (-1, -1)
        self.closed = False

    def bind(self, address: tuple[int, int]) -> None:
        self.bound = address

    def settimeout(self, timeout: float) -> None:
        pass

    def setsockopt(self, level: int, option: int, value: int) -> None:
        pass

    def getsockname(self) -> tuple[int, int]:
        return (PORTID, 0)

    def close(self) -> None:
        self.closed = True

    def sendto(self, data: bytes, address: tuple[int, int]) -> int:
        _length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data)
        self.asked.append(kind)
        answer = self.answers[kind]
        if isinstance(answer, int):
            self.pending.append(error(seq, answer))
        else:
            reply = {rt.RTM_GETROUTE: 24, rt.RTM_GETNEIGH: 28, rt.RTM_GETNEXTHOP: 104}[kind]
            self.pending.append(b"".join(nlmsg(reply, p, seq=seq) for p in answer) + done(seq))
        return len(data)

    def recvmsg(self, size: int) -> tuple[bytes, list[object], int, tuple[int, int]]:
        if not self.pending:
            raise BlockingIOError(errno.EAGAIN, "nothing pending")
        return self.pending.pop(0), [], 0, (0, 0)


def test_read_next_hops_collects_routes_routers_and_objects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kernel = FakeKernel(
        {
            rt.RTM_GETROUTE: [
                rtmsg(V4, nla(1, NET4)),  # connected: skipped
                REAL_MULTIPATH4,
                rtmsg(V6, nla(5, GW6), dst_len=0),
            ],
            rt.RTM_GETNEIGH: [REAL_MULTICAST_NEIGH, ndmsg(V6, 0x80, nla(1, GW6))],
            rt.RTM_GETNEXTHOP: [nhmsg(V4, nla(1, struct.pack("=I", 3)) + nla(6, GW4))],
        }
    )
    monkeypatch.setattr(ha, "_open", lambda flags=0: kernel)
    hops = rt.dump_next_hops()
    assert [r.destination_text() for r in hops.routes] == ["198.18.10.0/24", "default"]
    assert hops.routers == (GW6,)
    assert hops.objects == ((3, GW4),)
    assert hops.warnings == ()
    assert hops.gateways() == {GW4_B, GW4_C, GW6, GW4}
    assert kernel.asked == [rt.RTM_GETROUTE, rt.RTM_GETNEIGH, rt.RTM_GETNEXTHOP]
    assert kernel.closed


def test_kernel_without_nexthop_objects_leaves_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = FakeKernel(
        {rt.RTM_GETROUTE: [REAL_VIA6], rt.RTM_GETNEIGH: [], rt.RTM_GETNEXTHOP: errno.EOPNOTSUPP}
    )
    monkeypatch.setattr(ha, "_open", lambda flags=0: kernel)
    hops = rt.dump_next_hops()
    assert len(hops.routes) == 1
    assert hops.objects == ()
    assert len(hops.warnings) == 1
    assert "nexthop objects not read" in hops.warnings[0]


def test_refused_route_dump_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = FakeKernel({rt.RTM_GETROUTE: errno.EPERM})
    monkeypatch.setattr(ha, "_open", lambda flags=0: kernel)
    with pytest.raises(CaptureError, match="permission denied"):
        rt.dump_next_hops()


def test_route_watcher_subscribes_to_route_groups_and_reports_gateway_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kernel = FakeKernel({})
    monkeypatch.setattr(ha, "_open", lambda flags=0: kernel)
    with rt.RouteWatcher() as watcher:
        assert kernel.bound == (0, 0x40 | 0x400)
        kernel.pending.append(nlmsg(24, rtmsg(V4, nla(1, NET4)), flags=0))
        assert watcher.poll() is False  # a connected route: no gateway changed
        kernel.pending.append(nlmsg(25, REAL_MULTIPATH4, flags=0))
        assert watcher.poll() is True
        kernel.pending.append(nlmsg(24, rtmsg(V4, nla(5, GW6)), flags=0))
        assert watcher.poll() is True  # malformed: re-read to be safe
        assert watcher.malformed == 1


def test_address_watcher_keeps_its_groups() -> None:
    assert ha.AddressWatcher.GROUPS == 0x1 | 0x10 | 0x100
