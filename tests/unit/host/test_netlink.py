"""Netlink sockets: ``NetlinkSocket``'s exchanges on a stand-in socket, ``open_socket``.
No root, no kernel."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable
from typing import ClassVar, cast

import pytest

from portsentinel.errors import CaptureError
from portsentinel.host import netlink, netlink_messages
from portsentinel.host.netlink import NetlinkSocket, Receive
from portsentinel.host.netlink_messages import DumpReply, NetlinkError
from unit.host.netlink_bytes import REPLY, as_int, done, error, record

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

    def ask(self, strict: bool = True) -> netlink_messages.NlMsg:
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
    assert raised.value.errno in netlink_messages.UNAVAILABLE


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
    assert (answer.kind, netlink_messages.error_code(answer.payload)) == (2, errno.ENOENT)


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
