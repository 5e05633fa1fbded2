"""SSH peers: sock_diag records and /proc/net/tcp rows built by hand, a stand-in kernel for
``SshPeers``. No root and no real sockets."""

from __future__ import annotations

import errno
import socket
import struct
import sys
from pathlib import Path

import pytest

from portsentinel.errors import CaptureError
from portsentinel.host.inuse import NetlinkError
from portsentinel.host.sshpeers import (
    SshPeers,
    pack_peer_request,
    parse_peer_dump,
    parse_proc_peers,
)

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="/proc literals in host order")

ESTABLISHED, TIME_WAIT, LISTEN = 1, 6, 10
PEER4 = bytes([198, 18, 0, 2])
PEER4_B = bytes([198, 18, 0, 3])
PEER6 = bytes.fromhex("fd00005e000000000000000000000022")
LOCAL4 = bytes([198, 18, 0, 1])
LOCAL6 = bytes.fromhex("fd00005e000000000000000000000001")
MAPPED = bytes(10) + b"\xff\xff"

# /proc/net/tcp{,6}: addresses are host-order 32-bit words in hex, ports plain hex.
PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 010012C6:0016 020012C6:D431 01 00000000:00000000 02:000A7D4C 00000000     0        0 1002 2 0000000000000000 20 4 30 10 -1
   2: 010012C6:9C40 030012C6:0016 01 00000000:00000000 02:000A7D4C 00000000     0        0 1003 2 0000000000000000 20 4 30 10 -1
   3: 010012C6:0016 030012C6:C000 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
   4: 010012C6:08AE 030012C6:C001 01 00000000:00000000 00:00000000 00000000     0        0 1004 1 0000000000000000 20 4 30 10 -1
"""  # noqa: E501
PROC_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0
   1: 5E0000FD000000000000000001000000:0016 5E0000FD000000000000000022000000:E000 01 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 20 4 30 10 -1
   2: 0000000000000000FFFF0000010012C6:0016 0000000000000000FFFF0000030012C6:E001 01 00000000:00000000 00:00000000 00000000     0        0 2003 1 0000000000000000 20 4 30 10 -1
"""  # noqa: E501


# --- /proc ------------------------------------------------------------------------------------


def test_proc_rows_give_peers_of_established_sessions_to_the_local_ssh_port() -> None:
    # Row 2 is this host's own session to someone else's port 22; row 3 a closed one;
    # row 4 a session to port 2222, not an SSH port here.
    assert list(parse_proc_peers(PROC_TCP, {22})) == [PEER4]
    assert list(parse_proc_peers(PROC_TCP, {22, 2222})) == [PEER4, PEER4_B]


def test_proc_ipv6_rows_and_ipv4_mapped_peers() -> None:
    assert list(parse_proc_peers(PROC_TCP6, {22})) == [PEER6, PEER4_B]


@pytest.mark.parametrize(
    "line",
    [
        "   0: 010012C6:0016 020012C6 01 00000000:00000000",
        "   0: 010012C6:0016 0200:D431 01 00000000:00000000",
        "   0: 010012C6:0016 ZZ0012C6:D431 01",
        "   0: 010012C6:0016",
    ],
)
def test_unparsable_proc_row_is_an_error(line: str) -> None:
    with pytest.raises(CaptureError, match="line 1"):
        list(parse_proc_peers(line, {22}))


# --- sock_diag messages -----------------------------------------------------------------------


def nlmsg(kind: int, seq: int, payload: bytes) -> bytes:
    length = 16 + len(payload)
    return struct.pack("=IHHII", length, kind, 2, seq, 0) + payload + b"\0" * (-length % 4)


Sock = tuple[int, int, int, bytes]
"""family, state, local port, peer (as the kernel would hold it)."""


def record(seq: int, sock: Sock, local: bytes) -> bytes:
    """A SOCK_DIAG_BY_FAMILY reply: struct inet_diag_msg (72 bytes)."""
    family, state, sport, peer = sock
    sockid = struct.pack("!HH", sport, 50000) + local.ljust(16, b"\0") + peer.ljust(16, b"\0")
    body = (
        struct.pack("=BBBB", family, state, 0, 0)
        + sockid
        + struct.pack("=I2I5I", 0, 0, 0, *[0] * 5)
    )
    assert len(body) == 72
    return nlmsg(20, seq, body)


def done(seq: int, err: int = 0) -> bytes:
    return nlmsg(3, seq, struct.pack("=i", err))


def test_dump_records_give_peers_and_recheck_state_and_port() -> None:
    peers: list[bytes] = []
    data = (
        record(5, (socket.AF_INET, ESTABLISHED, 22, PEER4), LOCAL4)
        + record(5, (socket.AF_INET, TIME_WAIT, 22, PEER4_B), LOCAL4)
        + record(5, (socket.AF_INET, ESTABLISHED, 8080, PEER4_B), LOCAL4)
        + record(5, (socket.AF_INET6, ESTABLISHED, 22, PEER6), LOCAL6)
        + record(5, (socket.AF_INET6, ESTABLISHED, 22, MAPPED + PEER4_B), MAPPED + LOCAL4)
    )
    assert not parse_peer_dump(data, 5, {22}, peers)
    assert parse_peer_dump(memoryview(done(5)), 5, {22}, peers)
    assert peers == [PEER4, PEER6, PEER4_B]


def test_stale_records_are_skipped_and_errors_raise() -> None:
    peers: list[bytes] = []
    stale = record(4, (socket.AF_INET, ESTABLISHED, 22, PEER4_B), LOCAL4) + done(4)
    assert parse_peer_dump(
        stale + record(5, (socket.AF_INET, 1, 22, PEER4), LOCAL4) + done(5), 5, {22}, peers
    )
    assert peers == [PEER4]
    with pytest.raises(NetlinkError) as caught:
        parse_peer_dump(nlmsg(2, 6, struct.pack("=i", -errno.EINVAL) + bytes(16)), 6, {22}, [])
    assert caught.value.errno == errno.EINVAL
    with pytest.raises(CaptureError, match="overrun"):
        parse_peer_dump(nlmsg(4, 6, b""), 6, {22}, [])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"\0" * 10, "stray bytes", id="stray"),
        pytest.param(struct.pack("=IHHII", 200, 20, 2, 1, 0), "bad message length", id="long"),
        pytest.param(nlmsg(20, 1, bytes(40)), "short socket record", id="short-record"),
    ],
)
def test_malformed_reply_is_an_error(data: bytes, message: str) -> None:
    with pytest.raises(CaptureError, match=message):
        parse_peer_dump(data, 1, {22}, [])


def test_request_asks_for_established_tcp_with_a_local_port_filter() -> None:
    request = pack_peer_request(9, socket.AF_INET6, 22)
    length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", request)
    assert (length, kind, flags, seq) == (len(request), 20, 0x301, 9)
    family, proto, _ext, states = struct.unpack_from("=BBBxI", request, 16)
    assert (family, proto, states) == (socket.AF_INET6, socket.IPPROTO_TCP, 1 << ESTABLISHED)
    # INET_DIAG_REQ_BYTECODE: local port >= 22 and <= 22 (S_GE, S_LE), 16 bytes
    assert struct.unpack_from("=HH", request, 72) == (20, 1)
    assert len(request) == 92
    ops = struct.unpack_from("=BBHBBHBBHBBH", request, 76)
    assert ops == (2, 8, 20, 0, 0, 22, 3, 8, 12, 0, 0, 22)


# --- SshPeers with a stand-in kernel ----------------------------------------------------------


class FakeDiag:
    """Answers sock_diag dumps from a socket list, honouring family, states and port filter."""

    def __init__(self, sockets: list[Sock]) -> None:
        self.sockets = sockets
        self.replies: list[bytes] = []
        self.requests = 0
        self.closed = False

    def bind(self, address: tuple[int, int]) -> None:
        pass

    def settimeout(self, timeout: float) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def send(self, data: bytes) -> int:
        self.requests += 1
        seq = struct.unpack_from("=IHHII", data)[3]
        family, _proto, _ext, states = struct.unpack_from("=BBBxI", data, 16)
        port = struct.unpack_from("=H", data, 82)[0]  # the S_GE operand
        local = LOCAL4 if family == socket.AF_INET else LOCAL6
        reply = b"".join(
            record(seq, sock, local)
            for sock in self.sockets
            if sock[0] == family and states >> sock[1] & 1 and sock[2] == port
        )
        self.replies.append(reply + done(seq))
        return len(data)

    def recv_into(self, buffer: bytearray, size: int, flags: int) -> int:
        data = self.replies.pop(0)
        buffer[: len(data)] = data
        return len(data)


def test_peers_over_netlink(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeDiag(
        [
            (socket.AF_INET, ESTABLISHED, 22, PEER4),
            (socket.AF_INET, ESTABLISHED, 2222, PEER4_B),
            (socket.AF_INET, LISTEN, 22, bytes(4)),
            (socket.AF_INET6, ESTABLISHED, 22, PEER6),
            (socket.AF_INET6, ESTABLISHED, 22, MAPPED + PEER4),
        ]
    )
    monkeypatch.setattr(socket, "socket", lambda *args: fake)
    with SshPeers([22]) as table:
        assert table.peers() == {PEER4, PEER6}
        assert table.backend == "netlink"
        assert fake.requests == 2  # one per family
        table.ports = (22, 2222)
        assert table.peers() == {PEER4, PEER4_B, PEER6}
    assert fake.closed


def test_falls_back_to_proc_when_sock_diag_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def refuse(*args: object) -> socket.socket:
        raise OSError(errno.EPROTONOSUPPORT, "Protocol not supported")

    monkeypatch.setattr(socket, "socket", refuse)
    (tmp_path / "tcp").write_text(PROC_TCP)
    table = SshPeers(proc_dir=str(tmp_path))  # no tcp6: IPv6 is off
    assert table.peers() == {PEER4}
    assert table.backend == "proc"
    assert table.fallback is not None
    assert "Protocol not supported" in table.fallback


def test_netlink_only_backend_does_not_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> socket.socket:
        raise OSError(errno.EPROTONOSUPPORT, "Protocol not supported")

    monkeypatch.setattr(socket, "socket", refuse)
    with pytest.raises(NetlinkError):
        SshPeers(backend="netlink").peers()


def test_proc_backend_and_unreadable_table(tmp_path: Path) -> None:
    (tmp_path / "tcp").write_text(PROC_TCP)
    (tmp_path / "tcp6").write_text(PROC_TCP6)
    assert SshPeers(backend="proc", proc_dir=str(tmp_path)).peers() == {PEER4, PEER4_B, PEER6}
    (tmp_path / "tcp6").unlink()
    (tmp_path / "tcp6").mkdir()
    with pytest.raises(CaptureError, match="cannot read"):
        SshPeers(backend="proc", proc_dir=str(tmp_path)).peers()


@pytest.mark.parametrize("ports", [[], [0], [65536]])
def test_bad_ports_are_refused(ports: list[int]) -> None:
    with pytest.raises(ValueError, match="SSH ports"):
        SshPeers(ports)


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        SshPeers(backend="magic")  # type: ignore[arg-type]


def test_failed_exchange_closes_the_socket_and_is_a_capture_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeDiag([])

    def time_out(buffer: bytearray, size: int, flags: int) -> int:
        raise TimeoutError("timed out")

    fake.recv_into = time_out  # type: ignore[method-assign]
    monkeypatch.setattr(socket, "socket", lambda *args: fake)
    table = SshPeers()
    with pytest.raises(CaptureError, match="exchange failed: timed out"):
        table.peers()
    assert fake.closed
    assert table.backend == "netlink"  # a timeout is no reason to give up on netlink
