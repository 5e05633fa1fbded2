"""The netlink envelope's bytes: messages and attributes on hand-built bytes, ``DumpReply``
on scripted answers. Pure: no socket, no root, no kernel."""

from __future__ import annotations

import errno
import struct

import pytest

from portsentinel.errors import CaptureError
from portsentinel.host import netlink_messages
from portsentinel.host.netlink_messages import DumpReply, NetlinkError
from unit.host.netlink_bytes import PORTID, REPLY, as_int, done, error, nla, nlmsg, record

# --- building -------------------------------------------------------------------------------


def test_message_header_counts_itself_and_leaves_the_port_id_to_the_kernel() -> None:
    msg = netlink_messages.pack_message(0x0105, 0x301, 77, b"abcdef")
    assert struct.unpack_from("=IHHII", msg) == (22, 0x0105, 0x301, 77, 0)
    assert msg[16:] == b"abcdef"


@pytest.mark.parametrize(("size", "padding"), [(0, 0), (1, 3), (2, 2), (3, 1), (4, 0), (5, 3)])
def test_attribute_length_excludes_its_padding(size: int, padding: int) -> None:
    attr = netlink_messages.pack_attr(7, b"x" * size)
    assert struct.unpack_from("=HH", attr) == (4 + size, 7)
    assert attr[4:] == b"x" * size + b"\0" * padding
    assert netlink_messages.align(4 + size) == len(attr)


def test_nested_attribute_is_flagged_and_holds_its_children() -> None:
    attr = netlink_messages.pack_nested(2, nla(1, b"a"), nla(3, b"bcde"))
    assert struct.unpack_from("=HH", attr) == (4 + 8 + 8, 2 | 0x8000)
    inner = netlink_messages.parse_attrs(netlink_messages.parse_attrs(attr)[2])
    assert {kind: bytes(value) for kind, value in inner.items()} == {1: b"a", 3: b"bcde"}


# --- splitting datagrams --------------------------------------------------------------------


def test_messages_keep_their_header_fields_and_payloads() -> None:
    data = nlmsg(20, b"abc", seq=9, flags=2, pid=5) + nlmsg(3, b"\0" * 4, seq=9, pid=6)
    got = [
        (m.kind, m.flags, m.seq, m.pid, bytes(m.payload))
        for m in netlink_messages.split_messages(data)
    ]
    assert got == [(20, 2, 9, 5, b"abc"), (3, 2, 9, 6, b"\0" * 4)]


def test_last_message_may_end_without_padding_and_empty_datagram_is_empty() -> None:
    assert [bytes(m.payload) for m in netlink_messages.split_messages(nlmsg(20, b"x")[:17])] == [
        b"x"
    ]
    assert netlink_messages.split_messages(b"") == []


MISFITS = [
    pytest.param(nlmsg(20, b"abcd")[:-1], "bad message length 20 at offset 0", id="past-end"),
    pytest.param(struct.pack("=IHHII", 8, 20, 0, 0, 0), "bad message length 8", id="tiny"),
    pytest.param(nlmsg(20, b"abcd") + b"\0" * 8, "8 stray bytes at offset 20", id="stray"),
]


@pytest.mark.parametrize(("data", "message"), MISFITS)
def test_strict_split_names_the_misfit(data: bytes, message: str) -> None:
    with pytest.raises(CaptureError, match=f"^probe: {message}"):
        netlink_messages.split_messages(data, "probe")


@pytest.mark.parametrize(("data", "message"), MISFITS)
def test_lenient_split_stops_at_the_misfit_and_keeps_what_came_before(
    data: bytes, message: str
) -> None:
    first = nlmsg(3, b"\0" * 4, seq=2)
    got = netlink_messages.split_messages(first + data, strict=False)
    assert [m.seq for m in got] == [2] + ([1] if "stray" in message else [])


# --- attributes -----------------------------------------------------------------------------


def test_attributes_strip_flag_bits_skip_padding_and_let_a_duplicate_win() -> None:
    data = nla(3, b"ab\0") + nla(0x4005, b"first") + nla(5, b"last") + nla(9, b"")
    found = netlink_messages.parse_attrs(data)
    assert {kind: bytes(value) for kind, value in found.items()} == {
        3: b"ab\0",
        5: b"last",
        9: b"",
    }


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        pytest.param(b"\x08\x00", "truncated attribute header", id="half-header"),
        pytest.param(b"\x03\x00\x01\x00", "attribute 1 of length 3 does not fit", id="tiny"),
        pytest.param(b"\x0c\x00\x02\x00abcd", "attribute 2 of length 12", id="past-end"),
    ],
)
def test_attribute_misfit_is_an_error_or_the_end_of_a_lenient_walk(
    tail: bytes, message: str
) -> None:
    good = nla(4, b"\x01\x02\x03\x04")
    with pytest.raises(CaptureError, match=f"^probe: {message}"):
        netlink_messages.parse_attrs(good + tail, "probe")
    assert list(netlink_messages.parse_attrs(good + tail, strict=False)) == [4]


# --- errors ---------------------------------------------------------------------------------


def test_error_code_is_the_positive_errno_and_needs_four_bytes() -> None:
    assert (
        netlink_messages.error_code(struct.pack("=i", -errno.ENOENT) + b"\0" * 16) == errno.ENOENT
    )
    assert netlink_messages.error_code(struct.pack("=i", 0)) == 0
    with pytest.raises(CaptureError, match=r"^probe: error message without an error code"):
        netlink_messages.error_code(b"\0\0", "probe")


def test_refusal_keeps_the_errno_and_explains_permission() -> None:
    refused = netlink_messages.refusal(errno.EINVAL, "probe")
    assert isinstance(refused, CaptureError)
    assert refused.errno == errno.EINVAL
    assert str(refused) == "probe request refused: Invalid argument (errno 22)"
    assert "(permission denied)" in str(netlink_messages.refusal(errno.EPERM, "probe"))
    assert "(permission denied)" in str(netlink_messages.refusal(errno.EACCES, "probe"))


# --- one dump's answer ----------------------------------------------------------------------


def reply(
    seq: int = 1, portid: int | None = PORTID, items: list[int] | None = None
) -> DumpReply[int]:
    return DumpReply(seq, portid, REPLY, as_int, what="probe", items=items)


def test_multipart_answer_over_several_datagrams_into_the_callers_list() -> None:
    kept: list[int] = [7]
    answer = reply(items=kept)
    assert not answer.feed(record(1) + record(0))  # 0: parsed to None, not kept
    assert not answer.feed(memoryview(record(2)))
    assert answer.feed(done())
    assert kept == [7, 1, 2]
    assert answer.items is kept
    assert (answer.done, answer.interrupted, answer.skipped) == (True, False, 0)


def test_other_sequence_numbers_other_port_ids_and_anything_after_the_end_are_skipped() -> None:
    answer = reply(seq=5)
    stale = record(1, seq=4) + done(seq=4)
    foreign = record(2, seq=5, pid=PORTID + 1)
    assert answer.feed(stale + foreign + record(3, seq=5) + done(seq=5) + record(4, seq=5))
    assert (answer.items, answer.skipped) == ([3], 4)


def test_port_id_is_not_checked_when_none_is_given() -> None:
    answer = reply(portid=None)
    assert answer.feed(record(1, pid=1) + record(2, pid=0) + done())
    assert answer.items == [1, 2]


def test_noop_and_types_not_asked_for_are_skipped() -> None:
    answer = reply()
    assert answer.feed(nlmsg(1, b"") + nlmsg(24, b"\0" * 12) + done())
    assert (answer.items, answer.skipped) == ([], 2)


def test_a_reply_without_the_multi_flag_is_the_whole_answer() -> None:
    answer = reply()
    assert answer.feed(record(9, flags=0))
    assert answer.items == [9]


def test_an_inconsistent_dump_is_flagged_on_any_of_its_messages() -> None:
    flagged = reply()
    assert flagged.feed(record(1, flags=0x2 | 0x10) + done())
    assert flagged.interrupted
    on_done = reply()
    assert on_done.feed(record(1) + nlmsg(3, struct.pack("=i", 0), flags=0x12))
    assert on_done.interrupted


@pytest.mark.parametrize(
    "end",
    [
        pytest.param(done(), id="done-with-status-0"),
        pytest.param(nlmsg(3, b""), id="done-without-status"),  # kernels before 4.x
        pytest.param(error(code=0), id="acknowledgement"),
    ],
)
def test_clean_ends(end: bytes) -> None:
    assert reply().feed(record(1) + end)


@pytest.mark.parametrize(
    "end",
    [
        pytest.param(done(code=errno.EINTR), id="done"),
        pytest.param(error(code=errno.EINTR), id="error"),
    ],
)
def test_an_end_carrying_an_error_is_a_refusal_with_its_errno(end: bytes) -> None:
    with pytest.raises(NetlinkError, match=r"^probe request refused: .* \(errno 4\)$") as raised:
        reply().feed(record(1) + end)
    assert raised.value.errno == errno.EINTR


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(nlmsg(2, b"\0\0"), "error message without an error code", id="short-error"),
        pytest.param(nlmsg(4, b""), "data overrun", id="overrun"),
        pytest.param(record(1)[:-1], "bad message length", id="misfit"),
        pytest.param(record(1) + b"\0" * 4, "4 stray bytes", id="stray"),
    ],
)
def test_malformed_or_overrun_answers_are_capture_errors(data: bytes, message: str) -> None:
    with pytest.raises(CaptureError, match=f"^probe: .*{message}") as raised:
        reply().feed(data)
    assert not isinstance(raised.value, NetlinkError)
