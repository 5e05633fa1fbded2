"""rtnetlink address and link messages on hand-built and recorded bytes; dump and watch logic
on a fake socket. No root, no real netlink traffic."""

from __future__ import annotations

import errno
import socket
import struct
import sys
from collections.abc import Callable

import pytest

from portsentinel.errors import CaptureError
from portsentinel.host import addresses as ha

little_endian = pytest.mark.skipif(sys.byteorder != "little", reason="literals in host order")

V4 = bytes([198, 18, 5, 1])
V4_PEER = bytes([198, 18, 5, 2])
V6 = bytes.fromhex("fd00005e000500000000000000000001")
V6_PEER = bytes.fromhex("fd00005e000500000000000000000002")
PORTID = 4242

# --- a tiny encoder of our own, independent of the module's ---------------------------------


def nla(kind: int, payload: bytes, nested: bool = False) -> bytes:
    length = 4 + len(payload)
    return (
        struct.pack("=HH", length, kind | (0x8000 if nested else 0))
        + payload
        + b"\0" * (-length % 4)
    )


def nlmsg(kind: int, payload: bytes, *, seq: int = 1, flags: int = 2, pid: int = PORTID) -> bytes:
    """One message, padded to four bytes; NLM_F_MULTI by default as in a dump."""
    length = 16 + len(payload)
    return struct.pack("=IHHII", length, kind, flags, seq, pid) + payload + b"\0" * (-length % 4)


def ifaddr(family: int, ifindex: int, attrs: bytes, prefixlen: int = 24, scope: int = 0) -> bytes:
    return struct.pack("=BBBBI", family, prefixlen, 0x80, scope, ifindex) + attrs


def ifinfo(ifindex: int, attrs: bytes, *, flags: int = 0x1043, link_type: int = 1) -> bytes:
    return struct.pack("=BxHiII", 0, link_type, ifindex, flags, 0) + attrs


def done(seq: int = 1, code: int = 0) -> bytes:
    return nlmsg(3, struct.pack("=i", -code), seq=seq)


def error(seq: int = 1, code: int = errno.EPERM) -> bytes:
    return nlmsg(2, struct.pack("=i", -code) + b"\0" * 16, seq=seq, flags=0)


def view(data: bytes) -> memoryview:
    return memoryview(data)


# Recorded from Linux 6.18 in a throwaway namespace: ``ip addr add 198.18.5.1/24 peer
# 198.18.5.2 dev t0`` (IFA_ADDRESS is the peer, IFA_LOCAL our end) and
# ``ip addr add fd00:5e:5::1/64 dev t0 nodad`` (IFA_ADDRESS only). ifaddrmsg payloads.
REAL_V4_PEER = bytes.fromhex(
    "022080000300000008000100c612050208000200c61205010700030074300000080008008000000014000600"
    "ffffffffffffffff45d0010045d00100"
)
REAL_V6 = bytes.fromhex(
    "0a4082000300000014000100fd00005e00050000000000000000000114000600ffffffffffffffff45d00100"
    "45d001000800080082000000"
)
# RTM_NEWLINK payload of ``t0p``, a veth end made a port of bridge ``br0`` (ifindex 4),
# with statistics (the dump asks to skip them).
REAL_BRIDGE_PORT = bytes.fromhex(
    "00000100020000000210000000000000080003007430700008000d00e8030000050010000200000005001100"
    "00000000050043000000000008000400dc050000080032004400000008003300ffff000008001b0000000000"
    "08001e000100000008003d000100000008001f000200000008002800ffff0000080029000000010008003a00"
    "0000010008003f0000000100080040000000010008003b00f8ff070008003c00ffff00000800420000000000"
    "080020000200000008000a00040000000500210000000000080023000100000008002f000000000008003000"
    "010000000600440000000000060045000000000005002700000000000a000100ae23055b028200000a000200"
    "ffffffffffff0000cc0017000000000000000000000000000000000000000000000000000000000000000000"
    + "00" * 132
    + "0000000000000000000000000000000000000000000000000000000000000000000000006400070000000000"
    + "00" * 88
    + "000000000c002b0005000200000000006c0112000900010076657468000000000b0004006272696467650000"
    "5001050005000100000000000600020020000000080003000200000005000400000000000500050000000000"
    "0500060000000000050007000000000005001c00000000000500080001000000050009000100000005001b00"
    "0100000005001e000100000005000a000000000005000c00000000000c000d008000ae23055b02820c000e00"
    "8000ae23055b028206000f000180000006001000000000000600110001800000060012000100000005001300"
    "00000000050014000000000005001d000000000006001f000000000005002000000000000500230000000000"
    "050024000000000005002100000000000500270000000000050028000000000005002b00000000000c001500"
    "00000000000000000c00160000000000000000000c0017000000000000000000050019000100000008002500"
    "000200000800260000000000080029000000000008002a00000000000800050003000000090006006e6f6f70"
    "00000000c0011a008c0002008800010000000000000000000000000001000000010000000100000001000000"
    "0000000001000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000010270000e803000000000000"
    "0000000000000000000000000100000030010a00080001000000000014000500ffff000044d0010088770000"
    "e8030000f40002000000000040000000dc05000001000000010000000100000001000000ffffffffa00f0000"
    "e803000000000000803a09008051010003000000580200001000000000000000010000000100000001000000"
    "60ea000000000000000000000000000000000000000000000000000001000000000000000000000010270000"
    "e803000001000000000000000000000001000000000000000000000001000000000000000000000000000000"
    "0000000080ee3600000000000000000001000000000000000000000000000000000000000000000000040000"
    "00000000ffff0000ffffffff0100000000000000000000000000000014000700000000000000000000000000"
    "00000000050008000000000024000e0000000000000000000000000000000000000000000000000000000000"
    "0000000004003e8004004180"
)


# --- recorded kernel messages ---------------------------------------------------------------


@little_endian
def test_recorded_ipv4_peer_address_yields_our_end_not_the_peer() -> None:
    assert ha.parse_address(view(REAL_V4_PEER)) == ha.AddrInfo(3, V4, 32, 0)


@little_endian
def test_recorded_ipv6_address() -> None:
    assert ha.parse_address(view(REAL_V6)) == ha.AddrInfo(3, V6, 64, 0)


@little_endian
def test_recorded_bridge_port_has_its_master() -> None:
    assert len(REAL_BRIDGE_PORT) == 1464
    link = ha.parse_link(view(REAL_BRIDGE_PORT))
    assert (link.ifindex, link.name, link.master, link.kind) == (2, "t0p", 4, "veth")
    assert link.has_master
    assert link.link_type == ha.ARPHRD_ETHER
    assert not link.is_up
    assert not link.is_loopback


# --- addresses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "attrs", "expected"),
    [
        pytest.param(2, nla(1, V4_PEER) + nla(2, V4), V4, id="v4-local-wins-over-peer"),
        pytest.param(2, nla(2, V4) + nla(1, V4_PEER), V4, id="v4-local-wins-in-any-order"),
        pytest.param(2, nla(1, V4), V4, id="v4-address-only"),
        pytest.param(10, nla(1, V6), V6, id="v6-address"),
        pytest.param(10, nla(1, V6_PEER) + nla(2, V6), V6, id="v6-peer-local-wins"),
        pytest.param(10, nla(6, b"\xff" * 16) + nla(1, V6), V6, id="other-attributes-ignored"),
    ],
)
def test_address_picks_our_own_end(family: int, attrs: bytes, expected: bytes) -> None:
    info = ha.parse_address(view(ifaddr(family, 7, attrs, scope=253)))
    assert info == ha.AddrInfo(7, expected, 24, 253)


def test_address_of_another_family_is_skipped() -> None:
    assert ha.parse_address(view(ifaddr(17, 7, nla(1, b"\x01" * 6)))) is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param(b"\x02\x18\x00\x00\x07\x00", "shorter than its header", id="short-header"),
        pytest.param(ifaddr(2, 7, nla(8, b"\0" * 4)), "without address", id="no-address"),
        pytest.param(ifaddr(2, 7, nla(1, V6)), "16 bytes for family 2", id="v6-size-in-v4"),
        pytest.param(ifaddr(10, 7, nla(1, V4)), "4 bytes for family 10", id="v4-size-in-v6"),
        pytest.param(ifaddr(2, 7, nla(1, V4)[:6]), "does not fit", id="truncated-attribute"),
        pytest.param(ifaddr(2, 7, nla(1, V4) + b"\x08\x00"), "truncated attr", id="stray-bytes"),
    ],
)
def test_malformed_address_is_an_error(payload: bytes, message: str) -> None:
    with pytest.raises(CaptureError, match=message):
        ha.parse_address(view(payload))


# --- attributes and messages ----------------------------------------------------------------


def test_attributes_strip_flag_bits_and_padding() -> None:
    attrs = ha.parse_attrs(nla(3, b"ab\0") + nla(18, nla(1, b"veth\0"), nested=True))
    assert sorted(attrs) == [3, 18]
    assert bytes(attrs[3]) == b"ab\0"
    assert bytes(ha.parse_attrs(attrs[18])[1]) == b"veth\0"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x03\x00\x01\x00", id="length-below-header"),
        pytest.param(b"\x0c\x00\x01\x00abcd", id="length-past-end"),
        pytest.param(b"\x08\x00", id="half-header"),
    ],
)
def test_attribute_that_does_not_fit_is_an_error(data: bytes) -> None:
    with pytest.raises(CaptureError):
        ha.parse_attrs(data)


def test_messages_split_with_their_header_fields() -> None:
    data = nlmsg(20, b"abc", seq=9, flags=2, pid=5) + nlmsg(3, b"\0" * 4, seq=9, flags=2, pid=5)
    got = [(m.kind, m.flags, m.seq, m.pid, bytes(m.payload)) for m in ha.split_messages(data)]
    assert got == [(20, 2, 9, 5, b"abc"), (3, 2, 9, 5, b"\0" * 4)]


def test_last_message_may_end_without_padding() -> None:
    data = nlmsg(20, b"x", seq=1)[:17]
    assert [bytes(m.payload) for m in ha.split_messages(data)] == [b"x"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(nlmsg(20, b"abcd")[:-1], "does not fit", id="length-past-end"),
        pytest.param(struct.pack("=IHHII", 8, 20, 0, 0, 0), "does not fit", id="length-tiny"),
        pytest.param(nlmsg(20, b"abcd") + b"\0" * 8, "stray bytes", id="stray-tail"),
    ],
)
def test_message_that_does_not_fit_is_an_error(data: bytes, message: str) -> None:
    with pytest.raises(CaptureError, match=message):
        ha.split_messages(data)


# --- links ----------------------------------------------------------------------------------


def test_link_without_master() -> None:
    link = ha.parse_link(view(ifinfo(1, nla(3, b"lo\0"), flags=0x49, link_type=772)))
    assert link == ha.LinkInfo(1, "lo", 0x49, ha.ARPHRD_LOOPBACK, None, None)
    assert link.is_up
    assert link.is_loopback
    assert not link.has_master


def test_link_with_master_and_kind() -> None:
    attrs = nla(3, b"d1\0") + nla(10, struct.pack("=I", 5)) + nla(18, nla(1, b"dummy\0"), True)
    link = ha.parse_link(view(ifinfo(6, attrs, flags=0x1043)))
    assert (link.name, link.master, link.kind) == ("d1", 5, "dummy")
    assert link.has_master
    assert link.is_up


def test_wireguard_link_type_is_kept() -> None:
    attrs = nla(3, b"wg0\0") + nla(18, nla(1, b"wireguard\0"), True)
    link = ha.parse_link(view(ifinfo(9, attrs, flags=0x91, link_type=65534)))
    assert (link.link_type, link.kind) == (ha.ARPHRD_NONE, "wireguard")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param(b"\0" * 15, "shorter than its header", id="short-header"),
        pytest.param(ifinfo(3, nla(10, struct.pack("=I", 2))), "without a name", id="no-name"),
        pytest.param(ifinfo(3, nla(3, b"x\0") + nla(10, b"\x02\0")), "IFLA_MASTER", id="master"),
        pytest.param(ifinfo(3, nla(3, b"eth0\0")[:7]), "does not fit", id="truncated-name"),
    ],
)
def test_malformed_link_is_an_error(payload: bytes, message: str) -> None:
    with pytest.raises(CaptureError, match=message):
        ha.parse_link(view(payload))


# --- requests -------------------------------------------------------------------------------


@little_endian
def test_address_dump_request_bytes() -> None:
    got = ha.build_dump_request(ha.RTM_GETADDR, 7)
    # nlmsghdr: len 24, RTM_GETADDR, REQUEST|DUMP, seq 7, pid 0; ifaddrmsg all zero (AF_UNSPEC)
    assert got.hex() == "18000000160001030700000000000000" + "00" * 8


@little_endian
def test_link_dump_request_skips_statistics() -> None:
    got = ha.build_dump_request(ha.RTM_GETLINK, 8)
    assert got[:16].hex() == "28000000120001030800000000000000"
    assert got[16:32] == b"\0" * 16
    assert ha.parse_attrs(got[32:]) == {29: memoryview(struct.pack("=I", 8))}


# --- one dump's answer ----------------------------------------------------------------------


def addr_reply(seq: int = 1) -> ha.DumpReply[ha.AddrInfo]:
    return ha.DumpReply(seq, PORTID, ha.RTM_NEWADDR, ha.parse_address)


def newaddr(address: bytes, ifindex: int = 2, *, seq: int = 1, flags: int = 2) -> bytes:
    family = 2 if len(address) == 4 else 10
    return nlmsg(20, ifaddr(family, ifindex, nla(1, address)), seq=seq, flags=flags)


def test_multipart_dump_over_two_datagrams() -> None:
    reply = addr_reply()
    assert not reply.feed(newaddr(bytes([127, 0, 0, 1]), 1) + newaddr(V4))
    assert reply.feed(newaddr(V6) + done())
    assert [i.address for i in reply.items] == [bytes([127, 0, 0, 1]), V4, V6]
    assert not reply.interrupted


def test_stale_and_foreign_messages_are_skipped() -> None:
    reply = addr_reply(seq=5)
    stale = newaddr(V6, seq=4) + done(seq=4)
    foreign = nlmsg(20, ifaddr(2, 2, nla(1, V4_PEER)), seq=5, pid=PORTID + 1)
    assert reply.feed(stale + foreign + newaddr(V4, seq=5) + done(seq=5))
    assert [i.address for i in reply.items] == [V4]
    assert reply.skipped == 3


def test_noop_and_other_families_add_nothing() -> None:
    reply = addr_reply()
    other = nlmsg(20, ifaddr(17, 2, nla(1, b"\0" * 6)))
    assert reply.feed(nlmsg(1, b"") + other + nlmsg(24, b"\0" * 12) + done())
    assert reply.items == []
    assert reply.skipped == 2  # the NLMSG_NOOP and the RTM_NEWROUTE


def test_error_message_raises_with_the_errno() -> None:
    with pytest.raises(CaptureError, match="permission denied"):
        addr_reply().feed(error(code=errno.EPERM))
    with pytest.raises(CaptureError, match=r"errno 22"):
        addr_reply().feed(error(code=errno.EINVAL))


def test_acknowledgement_ends_the_answer() -> None:
    assert addr_reply().feed(error(code=0))


def test_error_without_code_is_malformed() -> None:
    with pytest.raises(CaptureError, match="without an error code"):
        addr_reply().feed(nlmsg(2, b"\0\0"))


def test_done_carrying_an_error_raises() -> None:
    reply = addr_reply()
    with pytest.raises(CaptureError, match=r"errno 4\b"):
        reply.feed(newaddr(V4) + done(code=errno.EINTR))


def test_done_without_status_from_old_kernels_is_accepted() -> None:
    assert addr_reply().feed(nlmsg(3, b""))


def test_overrun_raises() -> None:
    with pytest.raises(CaptureError, match="overrun"):
        addr_reply().feed(nlmsg(4, b""))


def test_interrupted_dump_is_flagged() -> None:
    reply = addr_reply()
    assert reply.feed(newaddr(V4, flags=2 | 0x10) + done())
    assert reply.interrupted


def test_reply_without_multi_flag_is_complete() -> None:
    reply = addr_reply()
    assert reply.feed(newaddr(V4, flags=0))
    assert [i.address for i in reply.items] == [V4]


def test_messages_after_done_are_ignored() -> None:
    reply = addr_reply()
    assert reply.feed(done() + newaddr(V4))
    assert reply.items == []


# --- notifications --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "changed"),
    [
        pytest.param(newaddr(V4, flags=0), True, id="new-address"),
        pytest.param(nlmsg(21, ifaddr(10, 2, nla(1, V6)), flags=0), True, id="del-address"),
        pytest.param(nlmsg(16, ifinfo(2, nla(3, b"d0\0"))), True, id="new-link"),
        pytest.param(nlmsg(17, ifinfo(2, nla(3, b"d0\0"))), True, id="del-link"),
        pytest.param(nlmsg(16, ifinfo(3, nla(11, b"\0" * 8))), False, id="wireless-event"),
        pytest.param(nlmsg(24, b"\0" * 12), False, id="route"),
        pytest.param(nlmsg(24, b"\0" * 12) + newaddr(V4), True, id="route-then-address"),
    ],
)
def test_change_notifications(data: bytes, changed: bool) -> None:
    assert ha.is_change_notification(data) is changed


def test_malformed_notification_raises() -> None:
    with pytest.raises(CaptureError):
        ha.is_change_notification(nlmsg(16, ifinfo(2, nla(3, b"d0\0")))[:-2] + b"\xff" * 9)


# --- the socket side, on a fake socket ------------------------------------------------------

Event = bytes | OSError | tuple[bytes, int, int]
"""A datagram from the kernel, an error to raise, or (datagram, msg_flags, sender port id)."""


class FakeSocket:
    """Plays the kernel: answers ``recvmsg`` from a script and records what is sent."""

    def __init__(self, script: list[Event], on_send: Callable[[bytes], None] | None = None):
        self.script = script
        self.sent: list[bytes] = []
        self.on_send = on_send
        self.closed = False

    def bind(self, address: tuple[int, int]) -> None:
        self.bound = address

    def settimeout(self, timeout: float) -> None:
        self.timeout = timeout

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.rcvbuf = value

    def getsockname(self) -> tuple[int, int]:
        return (PORTID, 0)

    def fileno(self) -> int:
        return 99

    def close(self) -> None:
        self.closed = True

    def sendto(self, data: bytes, address: tuple[int, int]) -> int:
        self.sent.append(data)
        if self.on_send is not None:
            self.on_send(data)
        return len(data)

    def recvmsg(self, size: int) -> tuple[bytes, list[object], int, tuple[int, int]]:
        if not self.script:
            raise BlockingIOError(errno.EAGAIN, "nothing pending")
        event = self.script.pop(0)
        if isinstance(event, OSError):
            raise event
        if isinstance(event, tuple):
            data, flags, sender = event
            return data, [], flags, (sender, 0)
        return event, [], 0, (0, 0)


def install(monkeypatch: pytest.MonkeyPatch, fake: FakeSocket) -> None:
    monkeypatch.setattr(ha, "_open", lambda flags=0: fake)


def seq_of(request: bytes) -> int:
    return int(struct.unpack_from("=IHHII", request)[3])


def test_dump_uses_fresh_sequence_numbers_and_ignores_other_senders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeSocket([])
    spoof = newaddr(V4_PEER, seq=1) + done(seq=1)

    def answer(request: bytes) -> None:
        seq = seq_of(request)
        fake.script += [(spoof, 0, 31337), newaddr(V4, seq=seq) + newaddr(V6, seq=seq)]
        fake.script.append(done(seq=seq))

    fake.on_send = answer
    install(monkeypatch, fake)
    with ha.RouteNetlink() as rtnl:
        assert rtnl.local_addresses() == {V4, V6}
        assert rtnl.local_addresses() == {V4, V6}
    assert [seq_of(r) for r in fake.sent] == [1, 2]
    assert fake.closed


def test_interrupted_dump_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSocket([])

    def answer(request: bytes) -> None:
        seq = seq_of(request)
        flags = 0x12 if seq == 1 else 0x2  # the first answer is flagged inconsistent
        fake.script.append(newaddr(V4 if seq == 1 else V6, seq=seq, flags=flags) + done(seq))

    fake.on_send = answer
    install(monkeypatch, fake)
    assert ha.dump_addresses() == {V6}
    assert len(fake.sent) == 2


def test_links_by_index(monkeypatch: pytest.MonkeyPatch) -> None:
    port = nlmsg(16, ifinfo(3, nla(3, b"p0\0") + nla(10, struct.pack("=I", 4))))
    bridge = nlmsg(16, ifinfo(4, nla(3, b"br0\0") + nla(18, nla(1, b"bridge\0"), True)))
    fake = FakeSocket([port + bridge + done()])
    install(monkeypatch, fake)
    links = ha.dump_links()
    assert sorted(links) == [3, 4]
    assert links[3].has_master
    assert links[4].kind == "bridge"
    assert not links[4].has_master
    assert struct.unpack_from("=IHHII", fake.sent[0])[1] == ha.RTM_GETLINK


@pytest.mark.parametrize(
    ("event", "message"),
    [
        pytest.param(TimeoutError(), "in time", id="timeout"),
        pytest.param(OSError(errno.ECONNREFUSED, "refused"), "request failed", id="oserror"),
        pytest.param((b"\0" * 16, socket.MSG_TRUNC, 0), "larger than", id="truncated"),
    ],
)
def test_dump_failures_are_capture_errors(
    monkeypatch: pytest.MonkeyPatch, event: Event, message: str
) -> None:
    install(monkeypatch, FakeSocket([event]))
    with pytest.raises(CaptureError, match=message):
        ha.dump_addresses()


def test_unopenable_socket_is_a_capture_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> socket.socket:
        raise OSError(errno.EAFNOSUPPORT, "Address family not supported")

    monkeypatch.setattr(socket, "socket", refuse)
    with pytest.raises(CaptureError, match="cannot open a NETLINK_ROUTE socket"):
        ha.RouteNetlink()


def test_watcher_subscribes_to_link_and_address_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSocket([])
    install(monkeypatch, fake)
    with ha.AddressWatcher() as watcher:
        assert fake.bound == (0, 0x1 | 0x10 | 0x100)
        assert watcher.fileno() == 99
        assert watcher.poll() is False
    assert fake.closed


@pytest.mark.parametrize(
    ("script", "changed", "malformed", "overruns"),
    [
        pytest.param([newaddr(V4, flags=0)], True, 0, 0, id="address"),
        pytest.param([nlmsg(16, ifinfo(3, nla(11, b"\0" * 4)))], False, 0, 0, id="wireless"),
        pytest.param([(newaddr(V4, flags=0), 0, 777)], False, 0, 0, id="not-from-kernel"),
        pytest.param([OSError(errno.ENOBUFS, "overrun")], True, 0, 1, id="enobufs"),
        pytest.param([struct.pack("=IHHII", 64, 20, 0, 0, 0)], True, 1, 0, id="malformed"),
        pytest.param([(b"\0" * 32, socket.MSG_TRUNC, 0)], True, 1, 0, id="truncated"),
        pytest.param(
            [OSError(errno.ENOBUFS, "overrun"), nlmsg(24, b"\0" * 12)], True, 0, 1, id="enobufs+"
        ),
    ],
)
def test_watcher_poll(
    monkeypatch: pytest.MonkeyPatch,
    script: list[Event],
    changed: bool,
    malformed: int,
    overruns: int,
) -> None:
    fake = FakeSocket(list(script))
    install(monkeypatch, fake)
    with ha.AddressWatcher() as watcher:
        assert watcher.poll() is changed
        assert (watcher.malformed, watcher.overruns) == (malformed, overruns)
        assert fake.script == []  # everything pending was read
        assert watcher.poll() is False


def test_watcher_poll_returns_after_a_bounded_number_of_datagrams(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wireless: Event = nlmsg(16, ifinfo(3, nla(11, b"\0" * 4)))
    fake = FakeSocket([wireless] * (ha._MAX_DATAGRAMS_PER_POLL + 1) + [newaddr(V4, flags=0)])
    install(monkeypatch, fake)
    watcher = ha.AddressWatcher()
    assert watcher.poll() is False
    assert len(fake.script) == 2
    assert watcher.poll() is True


def test_watcher_read_error_is_a_capture_error(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeSocket([OSError(errno.EBADF, "bad fd")]))
    with pytest.raises(CaptureError, match="reading notifications failed"):
        ha.AddressWatcher().poll()
