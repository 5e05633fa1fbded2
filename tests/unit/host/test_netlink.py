"""The shared netlink envelope: messages and attributes on hand-built bytes, ``DumpReply`` on
scripted answers, ``NetlinkSocket``'s exchanges on a stand-in socket. No root, no kernel."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable
from typing import ClassVar, cast

import pytest

from portsentinel.errors import CaptureError
from portsentinel.host import netlink
from portsentinel.host.netlink import DumpReply, NetlinkError, NetlinkSocket, Receive

PORTID = 4242
REPLY = 20  # the reply type the dumps below ask for

# --- a tiny encoder of our own, independent of the module's ---------------------------------


def nlmsg(kind: int, payload: bytes, *, seq: int = 1, flags: int = 2, pid: int = PORTID) -> bytes:
    """One message, padded to four bytes; NLM_F_MULTI by default as in a dump."""
    length = 16 + len(payload)
    return struct.pack("=IHHII", length, kind, flags, seq, pid) + payload + b"\0" * (-length % 4)


def nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def done(seq: int = 1, code: int = 0) -> bytes:
    return nlmsg(3, struct.pack("=i", -code), seq=seq)


def error(seq: int = 1, code: int = errno.EPERM) -> bytes:
    return nlmsg(2, struct.pack("=i", -code) + b"\0" * 16, seq=seq, flags=0)


def record(value: int, *, seq: int = 1, flags: int = 2, pid: int = PORTID) -> bytes:
    return nlmsg(REPLY, struct.pack("=I", value), seq=seq, flags=flags, pid=pid)


def as_int(payload: memoryview) -> int | None:
    """The test's record parser: a 32-bit value; 0 means "nothing to keep"."""
    value: int = struct.unpack("=I", payload)[0]
    return value or None


# --- building -------------------------------------------------------------------------------


def test_message_header_counts_itself_and_leaves_the_port_id_to_the_kernel() -> None:
    msg = netlink.pack_message(0x0105, 0x301, 77, b"abcdef")
    assert struct.unpack_from("=IHHII", msg) == (22, 0x0105, 0x301, 77, 0)
    assert msg[16:] == b"abcdef"


@pytest.mark.parametrize(("size", "padding"), [(0, 0), (1, 3), (2, 2), (3, 1), (4, 0), (5, 3)])
def test_attribute_length_excludes_its_padding(size: int, padding: int) -> None:
    attr = netlink.pack_attr(7, b"x" * size)
    assert struct.unpack_from("=HH", attr) == (4 + size, 7)
    assert attr[4:] == b"x" * size + b"\0" * padding
    assert netlink.align(4 + size) == len(attr)


def test_nested_attribute_is_flagged_and_holds_its_children() -> None:
    attr = netlink.pack_nested(2, nla(1, b"a"), nla(3, b"bcde"))
    assert struct.unpack_from("=HH", attr) == (4 + 8 + 8, 2 | 0x8000)
    inner = netlink.parse_attrs(netlink.parse_attrs(attr)[2])
    assert {kind: bytes(value) for kind, value in inner.items()} == {1: b"a", 3: b"bcde"}


# --- splitting datagrams --------------------------------------------------------------------


def test_messages_keep_their_header_fields_and_payloads() -> None:
    data = nlmsg(20, b"abc", seq=9, flags=2, pid=5) + nlmsg(3, b"\0" * 4, seq=9, pid=6)
    got = [(m.kind, m.flags, m.seq, m.pid, bytes(m.payload)) for m in netlink.split_messages(data)]
    assert got == [(20, 2, 9, 5, b"abc"), (3, 2, 9, 6, b"\0" * 4)]


def test_last_message_may_end_without_padding_and_empty_datagram_is_empty() -> None:
    assert [bytes(m.payload) for m in netlink.split_messages(nlmsg(20, b"x")[:17])] == [b"x"]
    assert netlink.split_messages(b"") == []


MISFITS = [
    pytest.param(nlmsg(20, b"abcd")[:-1], "bad message length 20 at offset 0", id="past-end"),
    pytest.param(struct.pack("=IHHII", 8, 20, 0, 0, 0), "bad message length 8", id="tiny"),
    pytest.param(nlmsg(20, b"abcd") + b"\0" * 8, "8 stray bytes at offset 20", id="stray"),
]


@pytest.mark.parametrize(("data", "message"), MISFITS)
def test_strict_split_names_the_misfit(data: bytes, message: str) -> None:
    with pytest.raises(CaptureError, match=f"^probe: {message}"):
        netlink.split_messages(data, "probe")


@pytest.mark.parametrize(("data", "message"), MISFITS)
def test_lenient_split_stops_at_the_misfit_and_keeps_what_came_before(
    data: bytes, message: str
) -> None:
    first = nlmsg(3, b"\0" * 4, seq=2)
    got = netlink.split_messages(first + data, strict=False)
    assert [m.seq for m in got] == [2] + ([1] if "stray" in message else [])


# --- attributes -----------------------------------------------------------------------------


def test_attributes_strip_flag_bits_skip_padding_and_let_a_duplicate_win() -> None:
    data = nla(3, b"ab\0") + nla(0x4005, b"first") + nla(5, b"last") + nla(9, b"")
    found = netlink.parse_attrs(data)
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
        netlink.parse_attrs(good + tail, "probe")
    assert list(netlink.parse_attrs(good + tail, strict=False)) == [4]


# --- errors ---------------------------------------------------------------------------------


def test_error_code_is_the_positive_errno_and_needs_four_bytes() -> None:
    assert netlink.error_code(struct.pack("=i", -errno.ENOENT) + b"\0" * 16) == errno.ENOENT
    assert netlink.error_code(struct.pack("=i", 0)) == 0
    with pytest.raises(CaptureError, match=r"^probe: error message without an error code"):
        netlink.error_code(b"\0\0", "probe")


def test_refusal_keeps_the_errno_and_explains_permission() -> None:
    refused = netlink.refusal(errno.EINVAL, "probe")
    assert isinstance(refused, CaptureError)
    assert refused.errno == errno.EINVAL
    assert str(refused) == "probe request refused: Invalid argument (errno 22)"
    assert "(permission denied)" in str(netlink.refusal(errno.EPERM, "probe"))
    assert "(permission denied)" in str(netlink.refusal(errno.EACCES, "probe"))


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


# --- the socket side, on a stand-in socket --------------------------------------------------

Event = bytes | BaseException | tuple[bytes, int, int]
"""A datagram, an error to raise, or (datagram, msg_flags, sender port id) for recvmsg."""


class FakeSocket:
    """Plays the kernel: each receive takes the next scripted event; ``answer(request)``
    may script more when a request is sent. Records every call."""

    def __init__(self, script: list[Event] | None = None) -> None:
        self.script = list(script or [])
        self.answer: Callable[[bytes], list[Event]] = lambda _request: []
        self.calls: list[str] = []
        self.sent: list[bytes] = []
        self.options: dict[int, object] = {}
        self.bound: tuple[int, int] | None = None
        self.timeout: float | None = None
        self.closed = False
        self.fail_setup: OSError | None = None

    def _next(self) -> bytes | tuple[bytes, int, int]:
        if not self.script:
            raise TimeoutError("timed out")
        event = self.script.pop(0)
        if isinstance(event, BaseException):
            raise event
        return event

    def bind(self, address: tuple[int, int]) -> None:
        self.calls.append("bind")
        if self.fail_setup is not None:
            raise self.fail_setup
        self.bound = address

    def setsockopt(self, level: int, option: int, value: object) -> None:
        self.calls.append("setsockopt")
        self.options[option] = value

    def settimeout(self, timeout: float) -> None:
        self.calls.append("settimeout")
        self.timeout = timeout

    def fileno(self) -> int:
        return 99

    def close(self) -> None:
        self.closed = True

    def _request(self, data: bytes) -> int:
        self.sent.append(bytes(data))
        self.script += self.answer(bytes(data))
        return len(data)

    def send(self, data: bytes) -> int:
        self.calls.append("send")
        return self._request(data)

    def sendto(self, data: bytes, address: tuple[int, int]) -> int:
        self.calls.append("sendto")
        assert address == (0, 0)
        return self._request(data)

    def recv(self, size: int) -> bytes:
        self.calls.append("recv")
        event = self._next()
        assert not isinstance(event, tuple)
        return event

    def recv_into(self, buffer: bytearray, nbytes: int, flags: int) -> int:
        self.calls.append("recv_into")
        assert (nbytes, flags) == (0, socket.MSG_TRUNC)
        event = self._next()
        assert not isinstance(event, tuple)
        buffer[: min(len(event), len(buffer))] = event[: len(buffer)]
        return len(event)  # MSG_TRUNC: the full length

    def recvmsg(self, size: int) -> tuple[bytes, list[object], int, tuple[int, int]]:
        self.calls.append("recvmsg")
        event = self._next()
        if isinstance(event, tuple):
            data, flags, sender = event
            return data, [], flags, (sender, 0)
        return event, [], 0, (0, 0)


def request(seq: int) -> bytes:
    return struct.pack("=IHHII", 16, 99, 1, seq, 0)


class Client(NetlinkSocket):
    """A client whose sockets come from a list of stand-ins (a new one per open)."""

    PROTOCOL: ClassVar[int] = netlink.NETLINK_NETFILTER
    WHAT: ClassVar[str] = "probe"
    GROUPS: ClassVar[int] = 0x40

    def __init__(self, *fakes: FakeSocket, **options: float | bool | None) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.fakes = list(fakes)
        self.opened = 0

    def _new_socket(self) -> socket.socket:
        self.opened += 1
        return cast("socket.socket", self.fakes.pop(0))

    def dump(self) -> list[int]:
        seq = self._next_seq()
        answer = DumpReply(seq, None, REPLY, as_int, what="probe")
        self._exchange(request(seq), answer.feed)
        return answer.items

    def ask(self, strict: bool = True) -> netlink.NlMsg:
        seq = self._next_seq()
        return self._request_exchange(request(seq), seq, strict=strict)


class BufferedClient(Client):
    RECEIVE: ClassVar[Receive] = Receive.INTO_BUFFER


class CopyClient(Client):
    RECEIVE: ClassVar[Receive] = Receive.COPY


def answering(fake: FakeSocket, *datagrams: Callable[[int], bytes]) -> FakeSocket:
    """Make ``fake`` answer each request with ``datagrams``, built for the request's seq."""
    fake.answer = lambda request: [
        make(struct.unpack_from("=I", request, 8)[0]) for make in datagrams
    ]
    return fake


def test_the_socket_is_opened_on_first_use_bound_to_the_groups_with_a_kernel_timeout() -> None:
    fake = FakeSocket()
    client = Client(fake, timeout=1.25, rcvbuf=1 << 20)
    assert client.opened == 0
    assert client.fileno() == 99
    assert fake.bound == (0, 0x40)
    assert fake.calls == ["setsockopt", "bind", "setsockopt"]
    assert fake.options[socket.SO_RCVBUF] == 1 << 20
    assert fake.options[socket.SO_RCVTIMEO] == struct.pack("@ll", 1, 250000)
    assert client.fileno() == 99
    assert client.opened == 1


def test_python_level_timeout_and_no_timeout() -> None:
    python_level = FakeSocket()
    Client(python_level, timeout=0.5, kernel_timeout=False).fileno()
    assert (python_level.calls, python_level.timeout) == (["bind", "settimeout"], 0.5)
    untimed = FakeSocket()
    Client(untimed).fileno()
    assert untimed.calls == ["bind"]


def test_setup_failure_closes_the_socket_and_is_not_a_refusal() -> None:
    fake = FakeSocket()
    fake.fail_setup = OSError(errno.EADDRINUSE, "Address already in use")
    with pytest.raises(CaptureError, match=r"^probe: cannot set up a NETLINK_NETFILTER") as raised:
        Client(fake).fileno()
    assert not isinstance(raised.value, NetlinkError)
    assert fake.closed


def test_open_socket_asks_for_a_raw_netlink_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[int, int, int]] = []

    def fake_socket(family: int, kind: int, protocol: int) -> FakeSocket:
        asked.append((family, kind, protocol))
        return FakeSocket()

    monkeypatch.setattr(socket, "socket", fake_socket)
    netlink.open_socket(netlink.NETLINK_SOCK_DIAG, "probe", socket.SOCK_NONBLOCK)
    assert asked == [(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, 4)]


def test_by_default_a_client_opens_a_socket_of_its_family(monkeypatch: pytest.MonkeyPatch) -> None:
    class Diag(NetlinkSocket):
        PROTOCOL: ClassVar[int] = netlink.NETLINK_SOCK_DIAG

    fake = FakeSocket()
    asked: list[int] = []

    def fake_socket(family: int, kind: int, protocol: int) -> FakeSocket:
        asked.append(protocol)
        return fake

    monkeypatch.setattr(socket, "socket", fake_socket)
    assert Diag().fileno() == 99
    assert asked == [netlink.NETLINK_SOCK_DIAG]


def test_a_socket_the_kernel_cannot_open_is_a_refusal_with_its_errno(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*_args: object) -> socket.socket:
        raise OSError(errno.EPROTONOSUPPORT, "Protocol not supported")

    monkeypatch.setattr(socket, "socket", refuse)
    with pytest.raises(
        NetlinkError, match="probe unavailable: cannot open a NETLINK_ROUTE"
    ) as raised:
        netlink.open_socket(netlink.NETLINK_ROUTE, "probe")
    assert raised.value.errno == errno.EPROTONOSUPPORT
    assert raised.value.errno in netlink.UNAVAILABLE


def test_sequence_numbers_are_fresh_and_never_zero() -> None:
    client = Client()
    assert [client._next_seq() for _ in range(3)] == [1, 2, 3]
    client._seq = 0xFFFFFFFE
    assert [client._next_seq() for _ in range(3)] == [0xFFFFFFFF, 1, 2]


@pytest.mark.parametrize(
    ("cls", "send", "receive"),
    [
        pytest.param(Client, "sendto", "recvmsg", id="from-kernel"),
        pytest.param(BufferedClient, "send", "recv_into", id="into-buffer"),
        pytest.param(CopyClient, "sendto", "recv", id="copy"),
    ],
)
def test_each_mode_makes_its_own_calls(cls: type[Client], send: str, receive: str) -> None:
    fake = answering(FakeSocket(), lambda seq: record(1, seq=seq) + record(2, seq=seq), done)
    client = cls(fake)
    assert client.dump() == [1, 2]
    assert fake.sent == [request(1)]
    assert fake.calls == ["bind", send, receive, receive]
    assert not fake.closed


def test_from_kernel_drops_datagrams_of_other_senders() -> None:
    fake = FakeSocket([(record(5), 0, 31337), (record(6) + done(), 0, 0)])
    assert Client(fake).dump() == [6]


@pytest.mark.parametrize(
    ("cls", "event"),
    [
        pytest.param(Client, (record(1), socket.MSG_TRUNC, 0), id="from-kernel"),
        pytest.param(BufferedClient, record(1) * 5000, id="into-buffer"),
    ],
)
def test_a_datagram_larger_than_the_buffer_fails_the_exchange(
    cls: type[Client], event: Event
) -> None:
    fake = FakeSocket([event])
    client = cls(fake)
    with pytest.raises(CaptureError, match="larger than 65536 bytes exceeds the buffer"):
        client.dump()
    assert fake.closed


def test_buffered_datagrams_are_views_of_one_reused_buffer() -> None:
    seen: list[bytes | memoryview] = []
    copies: list[bytes] = []

    def take(data: bytes | memoryview) -> bool:
        seen.append(data)
        copies.append(bytes(data))
        return len(seen) == 2

    assert BufferedClient(FakeSocket([record(1), record(2)]))._exchange(request(1), take)
    assert copies == [record(1), record(2)]
    assert isinstance(seen[0], memoryview)
    assert bytes(seen[0]) == record(2)  # overwritten: valid until the next receive only


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        pytest.param(TimeoutError("timed out"), "timed out", id="timeout"),
        pytest.param(BlockingIOError(errno.EAGAIN, "again"), "timed out", id="so-rcvtimeo"),
        pytest.param(
            OSError(errno.ENOBUFS, "No buffer"), r"the request failed \(No buffer\)", id="os"
        ),
    ],
)
def test_socket_failures_close_the_socket_and_the_next_exchange_reopens(
    failure: OSError, message: str
) -> None:
    broken = FakeSocket([failure])
    fresh = answering(FakeSocket(), lambda seq: record(3, seq=seq), done)
    client = Client(broken, fresh)
    with pytest.raises(CaptureError, match=f"^probe exchange failed: {message}") as raised:
        client.dump()
    assert raised.value.__cause__ is failure
    assert broken.closed
    assert client.dump() == [3]
    assert client.opened == 2


def test_a_refusal_leaves_the_socket_open() -> None:
    fake = answering(FakeSocket(), lambda seq: error(seq, errno.ENOENT))
    client = Client(fake)
    with pytest.raises(NetlinkError) as raised:
        client.dump()
    assert raised.value.errno == errno.ENOENT
    assert not fake.closed
    assert client.opened == 1


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(record(1)[:-1], id="malformed"),
        pytest.param(KeyboardInterrupt(), id="interrupt"),
    ],
)
def test_a_malformed_answer_or_an_interrupt_closes_the_socket(failure: Event) -> None:
    fake = FakeSocket([failure])
    with pytest.raises((CaptureError, KeyboardInterrupt)):
        Client(fake).dump()
    assert fake.closed


def test_request_exchange_returns_the_first_message_of_its_sequence_whatever_its_type() -> None:
    fake = answering(
        FakeSocket(),
        lambda seq: record(1, seq=seq + 1) + record(2, seq=seq - 1),
        lambda seq: error(seq + 3, 0) + error(seq, errno.ENOENT) + record(4, seq=seq),
    )
    answer = CopyClient(fake).ask()
    assert (answer.kind, netlink.error_code(answer.payload)) == (2, errno.ENOENT)


def test_request_exchange_strictness_decides_about_a_misfit_after_the_answer() -> None:
    garbage = b"\x01\x02"
    lenient = answering(FakeSocket(), lambda seq: record(7, seq=seq) + garbage)
    assert CopyClient(lenient).ask(strict=False).kind == REPLY
    strict = answering(FakeSocket(), lambda seq: record(7, seq=seq) + garbage)
    with pytest.raises(CaptureError, match="2 stray bytes"):
        CopyClient(strict).ask()


def test_request_exchange_gives_up_after_a_bounded_number_of_unrelated_datagrams() -> None:
    fake = answering(FakeSocket(), *[lambda seq: record(1, seq=seq + 1)] * 100)
    with pytest.raises(CaptureError, match=r"^probe: no answer to our request"):
        CopyClient(fake).ask()
    assert fake.calls.count("recv") == netlink.MAX_UNRELATED_DATAGRAMS
    assert fake.closed


def test_context_manager_and_close_are_idempotent() -> None:
    fake = FakeSocket()
    with Client(fake) as client:
        client.fileno()
    assert fake.closed
    client.close()
    assert client._sock is None
