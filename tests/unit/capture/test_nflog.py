"""``capture.nflog``: the messages built and parsed (pure), and a reader refused a group; the
live group is in ``tests/e2e/test_unsolicited.py``."""

from __future__ import annotations

import socket
import struct

import pytest

from portsentinel.capture import nflog
from portsentinel.errors import CaptureError


def attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def packet_message(payload: bytes, prefix: bytes | None = None, seq: int = 0) -> bytes:
    body = struct.pack("=BBH", socket.AF_INET, 0, socket.htons(5051))
    body += attr(1, b"\x08\x00\x01\x00")  # NFULA_PACKET_HDR: hw_protocol, hook
    if prefix is not None:
        body += attr(nflog.NFULA_PREFIX, prefix + b"\0")
    body += attr(nflog.NFULA_PAYLOAD, payload)
    return struct.pack("=IHHII", 16 + len(body), nflog.PACKET_TYPE, 0, seq, 0) + body


def test_bind_messages_carry_the_group_and_the_copy_mode() -> None:
    bind, mode, _threshold = nflog.bind_messages(5051, 128, 7)
    length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", bind)
    assert (length, kind, seq) == (len(bind), (4 << 8) | 1, 7)
    assert flags == nflog.NLM_F_REQUEST | nflog.NLM_F_ACK
    assert struct.unpack_from("!H", bind, 18)[0] == 5051  # res_id: the group, big-endian
    assert bind[20:25] == struct.pack("=HH", 5, nflog.NFULA_CFG_CMD) + bytes([1])
    assert mode[20:30] == struct.pack("=HH", 10, nflog.NFULA_CFG_MODE) + struct.pack(
        ">IBx", 128, nflog.NFULNL_COPY_PACKET
    )


def test_bind_messages_ask_for_each_packet_at_once() -> None:
    # The kernel's defaults (100 packets, a 1 s flush timer) held a short scan's ACK probes
    # back for a second; a queue threshold of one sends each as it is logged.
    *_, threshold = nflog.bind_messages(5051, 128, 7)
    assert struct.unpack_from("=IHHII", threshold)[3] == 9
    assert threshold[20:28] == struct.pack("=HH", 8, nflog.NFULA_CFG_QTHRESH) + struct.pack(">I", 1)


def test_payloads_and_prefixes_of_a_datagram() -> None:
    data = packet_message(b"\x45" + b"a" * 39, b"psn-new") + packet_message(b"\x60" + b"b" * 59)
    found = [(bytes(p), prefix) for p, prefix in nflog.payloads(memoryview(data))]
    assert found == [(b"\x45" + b"a" * 39, b"psn-new"), (b"\x60" + b"b" * 59, b"")]


def test_a_message_cut_short_or_of_another_kind_is_skipped() -> None:
    whole = packet_message(b"\x45" + b"a" * 39)
    other = struct.pack("=IHHII", 20, (4 << 8) | 1, 0, 0, 0) + b"\0" * 4
    assert [bytes(p) for p, _ in nflog.payloads(memoryview(other + whole))] == [whole[-40:]]
    assert list(nflog.payloads(memoryview(whole[:-8]))) == []


def test_errors_read_each_answer() -> None:
    ok = struct.pack("=IHHIIi", 36, nflog.NLMSG_ERROR, 0, 3, 0, 0) + b"\0" * 16
    busy = struct.pack("=IHHIIi", 36, nflog.NLMSG_ERROR, 0, 4, 0, -16) + b"\0" * 16
    assert nflog.errors(ok + busy) == [(3, 0), (4, 16)]


def test_a_group_taken_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    class Refusing:
        def __init__(self, *_args: object) -> None:
            self.sent: list[bytes] = []

        def setsockopt(self, *_args: object) -> None: ...
        def bind(self, _address: object) -> None: ...
        def settimeout(self, _seconds: float) -> None: ...
        def close(self) -> None: ...

        def send(self, data: bytes) -> int:
            self.sent.append(data)
            return len(data)

        def recv(self, _size: int) -> bytes:
            seq = struct.unpack_from("=I", self.sent[-1], 8)[0]
            return struct.pack("=IHHIIi", 36, nflog.NLMSG_ERROR, 0, seq, 0, -16) + b"\0" * 16

    monkeypatch.setattr(socket, "socket", Refusing)
    with pytest.raises(CaptureError, match="group 5051: Device or resource busy"):
        nflog.NflogReader(5051)
