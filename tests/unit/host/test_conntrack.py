"""ctnetlink messages on hand-built bytes, and the client's answer handling on a fake socket."""

from __future__ import annotations

import errno
import struct
import sys
from collections.abc import Callable

import pytest

from portsentinel.errors import CaptureError
from portsentinel.host import conntrack as ct

B = bytes([198, 18, 0, 2])  # the remote side
A = bytes([198, 18, 0, 1])  # this host
B6 = bytes.fromhex("fd00005e000000000000000000000002")
A6 = bytes.fromhex("fd00005e000000000000000000000001")
UDP, TCP = 17, 6

little_endian = pytest.mark.skipif(sys.byteorder != "little", reason="literal in host order")

# An IPCTNL_MSG_CT_GET for the reply tuple 198.18.0.2:53 -> 198.18.0.1:40000 (udp), seq 7,
# written out field by field from linux/netfilter/nfnetlink_conntrack.h.
GET_V4_HEX = (
    "48000000"
    "0101"
    "0100"
    "07000000"
    "00000000"  # nlmsghdr: len 72, ctnetlink|GET, REQUEST
    "02"
    "00"
    "0000"  # nfgenmsg: AF_INET, v0, res_id
    "3400"
    "0280"  # CTA_TUPLE_REPLY | NLA_F_NESTED, 52 bytes
    "1400"
    "0180"  # CTA_TUPLE_IP nested
    "0800"
    "0100"
    "c6120002"  # CTA_IP_V4_SRC
    "0800"
    "0200"
    "c6120001"  # CTA_IP_V4_DST
    "1c00"
    "0280"  # CTA_TUPLE_PROTO nested
    "0500"
    "0100"
    "11000000"  # CTA_PROTO_NUM 17 + padding
    "0600"
    "0200"
    "00350000"  # CTA_PROTO_SRC_PORT 53 (big endian) + padding
    "0600"
    "0300"
    "9c400000"  # CTA_PROTO_DST_PORT 40000 + padding
)


# --- a tiny encoder of our own, independent of the module's -------------------------------


def nla(kind: int, payload: bytes, nested: bool = False) -> bytes:
    length = 4 + len(payload)
    flag = 0x8000 if nested else 0
    return struct.pack("=HH", length, kind | flag) + payload + b"\0" * (-length % 4)


def tuple_payload(proto: int, src: bytes, sport: int, dst: bytes, dport: int) -> bytes:
    s, d = (1, 2) if len(src) == 4 else (3, 4)
    ip = nla(s, src) + nla(d, dst)
    pr = (
        nla(1, bytes([proto])) + nla(2, struct.pack("!H", sport)) + nla(3, struct.pack("!H", dport))
    )
    return nla(1, ip, nested=True) + nla(2, pr, nested=True)


def nlmsg(kind: int, seq: int, payload: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(payload), kind, 0, seq, 0) + payload


def ct_new(
    seq: int, orig: ct.FlowTuple, reply: ct.FlowTuple, family: int = 2, status: int = 0x18E
) -> bytes:
    """What the kernel sends for a found entry: both tuples plus other attributes."""
    attrs = (
        nla(1, tuple_payload(*orig), nested=True)
        + nla(2, tuple_payload(*reply), nested=True)
        + nla(3, struct.pack("!I", status))  # CTA_STATUS (0x18E: seen reply, assured, ...)
        + nla(7, struct.pack("!I", 29))  # CTA_TIMEOUT
        + nla(12, struct.pack("!I", 0xDEADBEEF))  # CTA_ID
    )
    return nlmsg(0x0100, seq, struct.pack("=BBH", family, 0, 0) + attrs)


def nl_error(seq: int, code: int) -> bytes:
    return nlmsg(2, seq, struct.pack("=i", -code) + b"\0" * 16)


def stats(seq: int, entries: int) -> bytes:
    attrs = nla(1, struct.pack("!I", entries)) + nla(2, struct.pack("!I", 65536))
    return nlmsg(0x0105, seq, b"\0\0\0\0" + attrs)


# --- building -----------------------------------------------------------------------------


@little_endian
def test_get_request_matches_hand_written_bytes() -> None:
    got = ct.build_get(7, (UDP, B, 53, A, 40000))
    assert got.hex() == GET_V4_HEX


def test_get_request_ipv6_uses_v6_attributes_and_family() -> None:
    msg = ct.build_get(1, (TCP, B6, 443, A6, 50000), kind=ct.CTA_TUPLE_ORIG)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq) == (len(msg), 0x0101, 1, 1)
    assert msg[16] == 10  # AF_INET6
    outer = ct.parse_attrs(msg[20:])
    assert list(outer) == [ct.CTA_TUPLE_ORIG]
    ip = ct.parse_attrs(ct.parse_attrs(outer[ct.CTA_TUPLE_ORIG])[ct.CTA_TUPLE_IP])
    assert bytes(ip[ct.CTA_IP_V6_SRC]) == B6
    assert bytes(ip[ct.CTA_IP_V6_DST]) == A6
    assert ct.parse_tuple(outer[ct.CTA_TUPLE_ORIG]) == (TCP, B6, 443, A6, 50000)


def test_mixed_address_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match=r"4 .*16"):
        ct.build_get(1, (UDP, B, 53, A6, 1))


def test_stats_request_has_no_attributes() -> None:
    msg = ct.build_get_stats(9)
    assert struct.unpack_from("=IHHII", msg)[:4] == (20, 0x0105, 1, 9)


# --- parsing ------------------------------------------------------------------------------


def test_entry_parsed_from_nested_attributes_with_flags() -> None:
    orig = (UDP, A, 40000, B, 53)
    reply = (UDP, B, 53, A, 40000)
    [(kind, seq, payload)] = ct.split_messages(ct_new(5, orig, reply))
    assert (kind, seq) == (0x0100, 5)
    assert ct.parse_entry(payload) == ct.CtEntry(orig, reply, 0x18E)


def test_ipv6_entry_parsed() -> None:
    orig = (TCP, A6, 50000, B6, 443)
    reply = (TCP, B6, 443, A6, 50000)
    [(_, _, payload)] = ct.split_messages(ct_new(1, orig, reply, family=10))
    assert ct.parse_entry(payload) == ct.CtEntry(orig, reply, 0x18E)


def test_portless_tuple_reads_port_zero() -> None:
    ip = nla(1, A) + nla(2, B)
    payload = nla(1, ip, nested=True) + nla(2, nla(1, bytes([1])), nested=True)  # ICMP
    assert ct.parse_tuple(payload) == (1, A, 0, B, 0)


def test_tuple_without_ip_is_a_capture_error() -> None:
    with pytest.raises(CaptureError, match="malformed tuple"):
        ct.parse_tuple(nla(2, nla(1, bytes([17])), nested=True))


def test_entry_missing_reply_tuple_is_a_capture_error() -> None:
    payload = b"\x02\0\0\0" + nla(1, tuple_payload(UDP, A, 1, B, 2), nested=True)
    with pytest.raises(CaptureError, match="both tuples"):
        ct.parse_entry(memoryview(payload))


def test_attribute_walk_stops_at_truncated_length() -> None:
    good = nla(3, b"\x01\x02\x03\x04")
    bad = struct.pack("=HH", 40, 4) + b"\0" * 4  # claims 40 bytes, has 8
    assert list(ct.parse_attrs(good + bad)) == [3]
    assert ct.parse_attrs(struct.pack("=HH", 2, 1)) == {}  # length below the header


def test_split_messages_keeps_several_and_stops_at_garbage() -> None:
    data = nl_error(1, errno.ENOENT) + nl_error(2, 0) + b"\x01\x02"
    got = [(kind, seq, ct.error_code(p)) for kind, seq, p in ct.split_messages(data)]
    assert got == [(2, 1, errno.ENOENT), (2, 2, 0)]


# --- the client's conversation, on a fake socket --------------------------------------------

Responder = Callable[[int, bytes], list[bytes]]


class FakeSocket:
    """Answers each request through ``respond(seq, request)``; records what was sent."""

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.sent: list[bytes] = []
        self.queue: list[bytes] = []

    def sendto(self, data: bytes, _address: tuple[int, int]) -> int:
        self.sent.append(data)
        seq = struct.unpack_from("=IHHII", data)[3]
        self.queue.extend(self.respond(seq, data))
        return len(data)

    def recv(self, _size: int) -> bytes:
        if not self.queue:
            raise TimeoutError("timed out")
        return self.queue.pop(0)

    def close(self) -> None:
        self.queue.clear()


def client(respond: Responder) -> tuple[ct.Conntrack, FakeSocket]:
    fake = FakeSocket(respond)
    tracker = ct.Conntrack.__new__(ct.Conntrack)
    tracker._sock = fake  # type: ignore[assignment]
    tracker._seq = 0
    return tracker, fake


def test_reply_direction_match_is_true() -> None:
    orig, reply = (UDP, A, 40000, B, 53), (UDP, B, 53, A, 40000)
    tracker, fake = client(lambda seq, _: [ct_new(seq, orig, reply)])
    assert tracker.lookup_reply(UDP, B, 53, A, 40000) is True
    sent = ct.parse_attrs(fake.sent[0][20:])
    assert ct.parse_tuple(sent[ct.CTA_TUPLE_REPLY]) == reply  # asked with the packet's tuple


def test_snat_reply_tuple_differs_from_reversed_original() -> None:
    # Source port remapped on the way out: only the reply tuple names 44444.
    orig, reply = (UDP, A, 33333, B, 53), (UDP, B, 53, A, 44444)
    tracker, _ = client(lambda seq, _: [ct_new(seq, orig, reply)])
    assert tracker.lookup_reply(UDP, B, 53, A, 44444) is True


def test_original_direction_match_is_false() -> None:
    # A probe from B's port 53 that the kernel has already tracked as a new flow.
    probe = (UDP, B, 53, A, 7)
    tracker, _ = client(lambda seq, _: [ct_new(seq, probe, (UDP, A, 7, B, 53))])
    assert tracker.lookup_reply(*probe) is False


def test_accepted_syn_is_the_original_direction_of_an_assured_flow() -> None:
    syn = (TCP, B, 40000, A, 2121)  # the peer connecting back to a data port of ours
    tracker, fake = client(lambda seq, _: [ct_new(seq, syn, (TCP, A, 2121, B, 40000))])
    assert tracker.lookup_accepted(*syn) is True
    sent = ct.parse_attrs(fake.sent[0][20:])
    assert ct.parse_tuple(sent[ct.CTA_TUPLE_ORIG]) == syn


def test_unassured_or_reply_direction_syn_is_not_accepted() -> None:
    syn = (TCP, B, 40000, A, 2121)
    reversed_flow = (TCP, A, 2121, B, 40000)
    half_open = 0x8  # confirmed, no reply seen: the handshake never completed
    tracker, _ = client(lambda seq, _: [ct_new(seq, syn, reversed_flow, status=half_open)])
    assert tracker.lookup_accepted(*syn) is False
    tracker, _ = client(lambda seq, _: [ct_new(seq, reversed_flow, syn)])
    assert tracker.lookup_accepted(*syn) is False
    tracker, _ = client(lambda seq, _: [nl_error(seq, errno.ENOENT)])
    assert tracker.lookup_accepted(*syn) is False


def test_enoent_is_false() -> None:
    tracker, _ = client(lambda seq, _: [nl_error(seq, errno.ENOENT)])
    assert tracker.lookup_reply(TCP, B, 80, A, 40000) is False
    assert tracker.find((TCP, B, 80, A, 40000)) is None


def test_stale_answers_are_skipped_by_sequence_number() -> None:
    orig, reply = (UDP, A, 40000, B, 53), (UDP, B, 53, A, 40000)

    def respond(seq: int, _: bytes) -> list[bytes]:
        return [
            ct_new(seq - 1, reply, orig) + nl_error(seq + 5, errno.EPERM),
            ct_new(seq, orig, reply),
        ]

    tracker, _ = client(respond)
    assert tracker.lookup_reply(UDP, B, 53, A, 40000) is True


def test_permission_error_is_explained() -> None:
    tracker, _ = client(lambda seq, _: [nl_error(seq, errno.EPERM)])
    with pytest.raises(CaptureError, match="CAP_NET_ADMIN"):
        tracker.entry_count()


def test_other_kernel_error_is_named() -> None:
    tracker, _ = client(lambda seq, _: [nl_error(seq, errno.EOPNOTSUPP)])
    with pytest.raises(CaptureError, match="not supported"):
        tracker.lookup_reply(UDP, B, 53, A, 1)


def test_silence_is_a_timeout_error() -> None:
    tracker, _ = client(lambda seq, _: [])
    with pytest.raises(CaptureError, match="in time"):
        tracker.lookup_reply(UDP, B, 53, A, 1)


def test_endless_unrelated_messages_are_bounded() -> None:
    tracker, _ = client(lambda seq, _: [nl_error(seq + 1, errno.ENOENT)] * 100)
    with pytest.raises(CaptureError, match="no answer"):
        tracker.lookup_reply(UDP, B, 53, A, 1)


def test_entry_count_reads_global_entries() -> None:
    tracker, _ = client(lambda seq, _: [stats(seq, 1234)])
    assert tracker.entry_count() == 1234


def test_wrong_answer_type_is_refused() -> None:
    tracker, _ = client(lambda seq, _: [stats(seq, 1)])
    with pytest.raises(CaptureError, match="unexpected answer"):
        tracker.lookup_reply(UDP, B, 53, A, 1)
