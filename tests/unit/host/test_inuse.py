"""Unit tests for host/inuse.py: /proc/net parsing, sock_diag messages, InUseView.

No root and no kernel: netlink replies are built by hand here, with their own struct
formats (not the module's), and a small stand-in kernel answers ``SocketTable``'s requests,
running the filter bytecode the way net/ipv4/inet_diag.c does.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest

from portsentinel.errors import CaptureError
from portsentinel.host.inuse import (
    ALL_STATES,
    InUseView,
    NetlinkError,
    SocketTable,
    pack_request,
    parse_dump,
    parse_proc_net,
    port_bytecode,
    ports_from_rows,
)
from portsentinel.model import Proto

LISTEN, ESTABLISHED, TIME_WAIT, CLOSE = 10, 1, 6, 7
LISTEN_MASK = 1 << LISTEN

# --- /proc/net fixtures (the kernel's layout; addresses are host-order hex words) ------------
PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 020012C6:0050 010012C6:D431 01 00000000:00000000 02:000A7D4C 00000000     0        0 1002 2 0000000000000000 20 4 30 10 -1
   2: 020012C6:1F40 010012C6:C000 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
   3: 00000000:0019 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 100 0 0 10 0
"""  # noqa: E501
PROC_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 20 4 30 10 -1
   2: 000000FD000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2003 1 0000000000000000 100 0 0 10 0
"""  # noqa: E501
PROC_UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3001 2 0000000000000000 0
  456: 0100007F:E1C2 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 3002 2 0000000000000000 0
"""  # noqa: E501
PROC_UDP6 = """\
   sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
   77: 00000000000000000000000000000000:0223 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4001 2 0000000000000000 0
"""  # noqa: E501


def test_proc_rows_give_state_and_local_port_for_ipv4_and_ipv6() -> None:
    assert list(parse_proc_net(PROC_TCP)) == [
        (LISTEN, 22),
        (ESTABLISHED, 80),
        (TIME_WAIT, 8000),
        (LISTEN, 25),
    ]
    assert list(parse_proc_net(PROC_TCP6)) == [(LISTEN, 443), (ESTABLISHED, 8080), (LISTEN, 22)]
    assert list(parse_proc_net(PROC_UDP)) == [(CLOSE, 68), (ESTABLISHED, 57794)]


def test_tcp_counts_listeners_only_and_udp_every_bound_socket() -> None:
    tcp = ports_from_rows([*parse_proc_net(PROC_TCP), *parse_proc_net(PROC_TCP6)], LISTEN_MASK)
    assert tcp == {22, 25, 443}  # 80 and 8080 are ESTABLISHED, 8000 TIME_WAIT
    udp = ports_from_rows(parse_proc_net(PROC_UDP), ALL_STATES)
    assert udp == {68, 57794}


def test_port_zero_never_counts() -> None:
    assert ports_from_rows([(LISTEN, 0), (CLOSE, 0)], ALL_STATES) == frozenset()


def test_empty_table_and_blank_lines() -> None:
    header = PROC_TCP.splitlines()[0]
    assert list(parse_proc_net(header + "\n\n")) == []
    assert list(parse_proc_net("")) == []


@pytest.mark.parametrize(
    "line",
    ["   0: 0100007F:00ZZ 00000000:0000 0A 0", "   0: 0100007F:0016", "   0: 0100007F 0 XX"],
)
def test_malformed_proc_row_names_its_line(line: str) -> None:
    text = PROC_TCP.splitlines()[0] + "\n" + line + "\n"
    with pytest.raises(CaptureError, match="line 2"):
        list(parse_proc_net(text))


def write_proc(directory: Path, *, with_v6: bool = True) -> None:
    (directory / "tcp").write_text(PROC_TCP)
    (directory / "udp").write_text(PROC_UDP)
    if with_v6:
        (directory / "tcp6").write_text(PROC_TCP6)
        (directory / "udp6").write_text(PROC_UDP6)


def test_proc_backend_reads_both_families(tmp_path: Path) -> None:
    write_proc(tmp_path)
    table = SocketTable("proc", proc_dir=str(tmp_path))
    assert table.ports_in_use(Proto.TCP) == {22, 25, 443}
    assert table.ports_in_use(Proto.UDP) == {68, 57794, 547}
    assert table.port_in_use(Proto.TCP, 443)
    assert not table.port_in_use(Proto.TCP, 80)  # established, not listening
    assert table.port_in_use(Proto.UDP, 547)
    assert not table.port_in_use(Proto.UDP, 53)
    assert table.backend_for(Proto.TCP) == "proc"


def test_proc_backend_without_ipv6_files(tmp_path: Path) -> None:
    write_proc(tmp_path, with_v6=False)
    table = SocketTable("proc", proc_dir=str(tmp_path))
    assert table.ports_in_use(Proto.TCP) == {22, 25}


def test_proc_backend_unreadable_table_is_a_capture_error(tmp_path: Path) -> None:
    write_proc(tmp_path)
    (tmp_path / "udp").unlink()
    (tmp_path / "udp").mkdir()
    table = SocketTable("proc", proc_dir=str(tmp_path))
    with pytest.raises(CaptureError, match="cannot read"):
        table.ports_in_use(Proto.UDP)


def test_port_out_of_range_is_refused() -> None:
    table = SocketTable("proc")
    for port in (0, -1, 65536):
        with pytest.raises(ValueError, match="out of range"):
            table.port_in_use(Proto.TCP, port)


# --- netlink messages, built independently of the module ------------------------------------
NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN, SOCK_DIAG = 2, 3, 4, 20
NLM_F_MULTI = 0x02
S_GE, S_LE, S_EQ = 2, 3, 11


def nlmsg(kind: int, seq: int, payload: bytes, flags: int = NLM_F_MULTI) -> bytes:
    """One netlink message, padded to 4 bytes as the kernel sends it."""
    body = struct.pack("=IHHII", 16 + len(payload), kind, flags, seq, 4242) + payload
    return body + b"\0" * (-len(body) % 4)


def diag_record(seq: int, state: int, port: int, family: int = socket.AF_INET) -> bytes:
    """A struct inet_diag_msg for a socket, followed by one attribute as real replies have."""
    head = struct.pack("!BBBBHH16s16s", family, state, 0, 0, port, 0, b"\1" * 16, b"\0" * 16)
    tail = struct.pack("=IIIIIIIII", 0, 0xFFFFFFFF, 0xFFFFFFFF, 0, 0, 0, 0, 0, 1234)
    attribute = struct.pack("=HHB3x", 5, 8, 0)  # INET_DIAG_SHUTDOWN, 1 byte + padding
    return nlmsg(SOCK_DIAG, seq, head + tail + attribute)


def done(seq: int, err: int = 0) -> bytes:
    return nlmsg(NLMSG_DONE, seq, struct.pack("=i", err))


def error(seq: int, err: int) -> bytes:
    original = struct.pack("=IHHII", 72, SOCK_DIAG, 0x301, seq, 0)
    return nlmsg(NLMSG_ERROR, seq, struct.pack("=i", err) + original, flags=0)


def test_request_layout() -> None:
    bytecode = port_bytecode(8080, exact=True)
    request = pack_request(77, socket.AF_INET6, 17, ALL_STATES, bytecode)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", request)
    assert (length, kind, flags, seq, pid) == (len(request), 20, 0x301, 77, 0)
    family, proto, ext, _pad, states = struct.unpack_from("=BBBBI", request, 16)
    assert (family, proto, ext, states) == (socket.AF_INET6, 17, 0, ALL_STATES)
    assert request[24:72] == b"\0" * 48  # no socket identity: the bytecode filters
    attr_len, attr_type = struct.unpack_from("=HH", request, 72)
    assert (attr_len, attr_type) == (4 + len(bytecode), 1)  # INET_DIAG_REQ_BYTECODE
    assert request[76:] == bytecode
    assert len(pack_request(1, socket.AF_INET, 6, LISTEN_MASK)) == 72  # no attribute


def run_bytecode(bytecode: bytes, sport: int) -> bool:
    """inet_diag_bc_audit's jump rules and inet_diag_bc_run's port tests, for port ops."""
    remaining = len(bytecode)
    position = 0
    while remaining > 0:
        code, yes, no = struct.unpack_from("=BBH", bytecode, position)
        operand = struct.unpack_from("=BBH", bytecode, position + 4)[2]
        assert code in (S_GE, S_LE, S_EQ)
        for jump in (yes, no):  # whole ops, at most 4 bytes past the end (= reject)
            assert jump >= 8
            assert jump % 4 == 0
            assert jump <= remaining + 4
        ok = {S_GE: sport >= operand, S_LE: sport <= operand, S_EQ: sport == operand}[code]
        step = yes if ok else no
        position += step
        remaining -= step
    return remaining == 0


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("port", [1, 22, 8080, 65535])
def test_bytecode_accepts_exactly_the_port(port: int, exact: bool) -> None:
    bytecode = port_bytecode(port, exact=exact)
    assert run_bytecode(bytecode, port)
    for other in (port - 1, port + 1, 0, 65535 if port != 65535 else 1):
        assert not run_bytecode(bytecode, other)


def test_reply_with_records_and_done_in_one_datagram() -> None:
    data = diag_record(5, LISTEN, 22) + diag_record(5, LISTEN, 443, socket.AF_INET6) + done(5)
    rows: list[tuple[int, int]] = []
    assert parse_dump(data, 5, rows)
    assert rows == [(LISTEN, 22), (LISTEN, 443)]


def test_multipart_reply_until_done() -> None:
    rows: list[tuple[int, int]] = []
    assert not parse_dump(diag_record(9, CLOSE, 53) + diag_record(9, CLOSE, 123), 9, rows)
    assert not parse_dump(memoryview(diag_record(9, ESTABLISHED, 5353)), 9, rows)
    assert parse_dump(done(9), 9, rows)
    assert rows == [(CLOSE, 53), (CLOSE, 123), (ESTABLISHED, 5353)]


def test_messages_of_another_sequence_are_skipped() -> None:
    rows: list[tuple[int, int]] = []
    stale = diag_record(3, LISTEN, 21) + done(3)
    assert not parse_dump(stale, 4, rows)
    assert rows == []
    assert parse_dump(stale + diag_record(4, LISTEN, 22) + done(4), 4, rows)
    assert rows == [(LISTEN, 22)]


def test_error_reply_raises_with_errno() -> None:
    with pytest.raises(NetlinkError) as raised:
        parse_dump(error(6, -errno.EINVAL), 6, [])
    assert raised.value.errno == errno.EINVAL
    assert "Invalid argument" in str(raised.value)
    assert isinstance(raised.value, CaptureError)


def test_acknowledgement_and_bare_done_end_the_dump() -> None:
    assert parse_dump(error(6, 0), 6, [])
    assert parse_dump(nlmsg(NLMSG_DONE, 6, b""), 6, [])


def test_done_carrying_an_error_raises() -> None:
    with pytest.raises(NetlinkError) as raised:
        parse_dump(done(2, -errno.ENOBUFS), 2, [])
    assert raised.value.errno == errno.ENOBUFS


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (diag_record(1, LISTEN, 22)[:-8], "bad message length"),
        (diag_record(1, LISTEN, 22) + b"\0" * 8, "stray bytes"),
        (struct.pack("=IHHII", 8, SOCK_DIAG, 0, 1, 0), "bad message length"),
        (nlmsg(SOCK_DIAG, 1, b"\0" * 40), "short socket record"),
        (nlmsg(NLMSG_OVERRUN, 1, b""), "overrun"),
    ],
)
def test_malformed_replies_raise_capture_error(data: bytes, message: str) -> None:
    with pytest.raises(CaptureError, match=message):
        parse_dump(data, 1, [])


# --- SocketTable against a stand-in kernel ----------------------------------------------------
Sock = tuple[int, int, int, int]  # family, protocol, state, port


@dataclass
class FakeKernel:
    """Plays the netlink socket: answers dump requests from a socket list, two per datagram."""

    sockets: list[Sock]
    knows_s_eq: bool = True
    refuse: dict[int, int] = field(default_factory=dict)  # protocol -> errno
    fail_recv: OSError | None = None
    per_datagram: int = 2
    requests: list[bytes] = field(default_factory=list)
    pending: list[bytes] = field(default_factory=list)
    closed: bool = False

    def send(self, request: bytes | bytearray) -> int:
        request = bytes(request)
        self.requests.append(request)
        seq = struct.unpack_from("=I", request, 8)[0]
        family, proto, _ext, _pad, states = struct.unpack_from("=BBBBI", request, 16)
        bytecode = request[76:]
        if proto in self.refuse:
            self.pending.append(error(seq, -self.refuse[proto]))
        elif bytecode and bytecode[0] == S_EQ and not self.knows_s_eq:
            self.pending.append(error(seq, -errno.EINVAL))
        else:
            self.pending.extend(self._answer(seq, family, proto, states, bytecode))
        return len(request)

    def _answer(self, seq: int, family: int, proto: int, states: int, bc: bytes) -> list[bytes]:
        records = [
            diag_record(seq, state, port, fam)
            for fam, prot, state, port in self.sockets
            if fam == family and prot == proto and states >> state & 1
            if not bc or run_bytecode(bc, port)
        ]
        step = self.per_datagram
        datagrams = [b"".join(records[i : i + step]) for i in range(0, len(records), step)]
        return [*datagrams, done(seq)]

    def recv_into(self, buffer: bytearray, nbytes: int = 0, flags: int = 0) -> int:
        if self.fail_recv is not None:
            raise self.fail_recv
        data = self.pending.pop(0)
        size = min(len(data), len(buffer))
        buffer[:size] = data[:size]
        return len(data)  # MSG_TRUNC: the real length

    def close(self) -> None:
        self.closed = True


V4, V6, TCP, UDP = socket.AF_INET, socket.AF_INET6, 6, 17
SOCKETS: list[Sock] = [
    (V4, TCP, LISTEN, 22),
    (V4, TCP, ESTABLISHED, 22),
    (V4, TCP, ESTABLISHED, 40000),
    (V6, TCP, LISTEN, 443),
    (V6, TCP, LISTEN, 8443),
    (V6, TCP, TIME_WAIT, 9000),
    (V4, UDP, CLOSE, 53),
    (V4, UDP, ESTABLISHED, 50000),
    (V6, UDP, CLOSE, 546),
]


def table_with(kernel: FakeKernel, backend: str = "auto", **kwargs: str) -> SocketTable:
    table = SocketTable(backend, **kwargs)  # type: ignore[arg-type]
    table._sock = cast("socket.socket", kernel)
    return table


def test_netlink_ports_in_use_both_families_multipart() -> None:
    kernel = FakeKernel(SOCKETS)
    table = table_with(kernel)
    assert table.ports_in_use(Proto.TCP) == {22, 443, 8443}
    assert table.ports_in_use(Proto.UDP) == {53, 50000, 546}
    families = [struct.unpack_from("=B", r, 16)[0] for r in kernel.requests]
    assert families == [V4, V6, V4, V6]
    seqs = [struct.unpack_from("=I", r, 8)[0] for r in kernel.requests]
    assert len(set(seqs)) == 4  # a new sequence number per request
    assert table.backend_for(Proto.TCP) == "netlink"


def test_port_in_use_filters_in_the_kernel_with_s_eq() -> None:
    kernel = FakeKernel(SOCKETS)
    table = table_with(kernel)
    assert table.port_in_use(Proto.TCP, 22)
    assert len(kernel.requests) == 1  # found over IPv4: IPv6 not asked
    assert table.port_in_use(Proto.TCP, 8443)
    assert not table.port_in_use(Proto.TCP, 40000)  # established only
    assert table.port_in_use(Proto.UDP, 546)
    assert not table.port_in_use(Proto.UDP, 54)
    assert table.port_filter == "S_EQ"
    assert all(r[76] == S_EQ for r in kernel.requests)


def test_port_in_use_falls_back_to_a_range_on_an_old_kernel() -> None:
    kernel = FakeKernel(SOCKETS, knows_s_eq=False)
    table = table_with(kernel)
    assert table.port_filter is None
    assert table.port_in_use(Proto.TCP, 443)
    assert table.port_filter == "S_GE/S_LE"
    assert not table.port_in_use(Proto.TCP, 444)
    assert [r[76] for r in kernel.requests] == [S_EQ, S_GE, S_GE, S_GE, S_GE]


def test_auto_falls_back_to_proc_when_udp_diag_is_missing(tmp_path: Path) -> None:
    write_proc(tmp_path)
    kernel = FakeKernel(SOCKETS, refuse={UDP: errno.ENOENT})
    table = table_with(kernel, proc_dir=str(tmp_path))
    assert table.ports_in_use(Proto.UDP) == {68, 57794, 547}  # from the /proc fixtures
    assert table.backend_for(Proto.UDP) == "proc"
    assert "No such file" in table.fallbacks[Proto.UDP]
    assert table.ports_in_use(Proto.TCP) == {22, 443, 8443}  # TCP still over netlink
    assert table.backend_for(Proto.TCP) == "netlink"


def test_netlink_backend_does_not_fall_back() -> None:
    table = table_with(FakeKernel(SOCKETS, refuse={UDP: errno.ENOENT}), backend="netlink")
    with pytest.raises(NetlinkError):
        table.ports_in_use(Proto.UDP)


def test_other_errors_are_not_hidden_by_the_fallback() -> None:
    table = table_with(FakeKernel(SOCKETS, refuse={TCP: errno.EBUSY}))
    with pytest.raises(NetlinkError, match="busy"):
        table.ports_in_use(Proto.TCP)
    assert table.backend_for(Proto.TCP) == "netlink"


def test_socket_failure_becomes_capture_error_and_reopens() -> None:
    kernel = FakeKernel(SOCKETS, fail_recv=TimeoutError(errno.EAGAIN, "timed out"))
    table = table_with(kernel)
    with pytest.raises(CaptureError, match="sock_diag exchange failed"):
        table.ports_in_use(Proto.TCP)
    assert kernel.closed
    assert table._sock is None


def test_oversized_datagram_is_refused() -> None:
    many: list[Sock] = [(V4, TCP, LISTEN, port) for port in range(1, 1001)]  # ~96 KB
    kernel = FakeKernel(many, per_datagram=1000)
    table = table_with(kernel)
    with pytest.raises(CaptureError, match="exceeds the buffer"):
        table.ports_in_use(Proto.TCP)
    assert kernel.closed


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        SocketTable("bind")  # type: ignore[arg-type]


# --- InUseView --------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeTable:
    """Sockets the test opens and closes; counts the queries and makes each take ``cost``."""

    def __init__(self, *ports: int, clock: Clock | None = None, cost: float = 0.0) -> None:
        self.open: set[int] = set(ports)
        self.full_queries = 0
        self.port_queries: list[int] = []
        self.fail = False
        self.clock = clock
        self.cost = cost

    def ports_in_use(self, proto: Proto) -> frozenset[int]:
        self.full_queries += 1
        return frozenset(self.open)

    def port_in_use(self, proto: Proto, port: int) -> bool:
        self.port_queries.append(port)
        if self.clock is not None:
            self.clock.now += self.cost
        if self.fail:
            raise CaptureError("sock_diag exchange failed: test")
        return port in self.open


def make_view(table: FakeTable, clock: Clock, **kwargs: float | None) -> InUseView:
    view = InUseView(table, Proto.TCP, clock=clock, **kwargs)  # type: ignore[arg-type]
    view.refresh()
    return view


def test_cache_hit_asks_nothing() -> None:
    table, clock = FakeTable(22, 80), Clock()
    view = make_view(table, clock)
    assert 22 in view
    assert 80 in view
    assert table.port_queries == []
    assert view.stats.hits == 2
    assert view.stats.misses == 0


def test_miss_rechecks_and_sees_a_new_listener() -> None:
    table, clock = FakeTable(22), Clock()
    view = make_view(table, clock)
    table.open.add(2121)  # e.g. an FTP data port opened after the refresh
    assert 2121 in view
    assert 2121 in view  # now cached: no second query
    assert table.port_queries == [2121]
    assert (view.stats.misses, view.stats.rechecks, view.stats.recheck_found) == (1, 1, 1)
    assert view.stats.hits == 1
    assert 2121 in view.ports


def test_miss_not_found_is_cached_for_negative_ttl() -> None:
    table, clock = FakeTable(), Clock()
    view = make_view(table, clock, negative_ttl=0.005)
    assert 1234 not in view
    clock.now += 0.004
    table.open.add(1234)
    assert 1234 not in view  # within the window: the cached answer, no query
    assert table.port_queries == [1234]
    assert view.stats.recheck_cached == 1
    clock.now += 0.002
    assert 1234 in view  # window over: asked again, found
    assert table.port_queries == [1234, 1234]


def test_zero_negative_ttl_always_rechecks() -> None:
    table, clock = FakeTable(), Clock()
    view = make_view(table, clock, negative_ttl=0.0)
    for _ in range(3):
        assert 1234 not in view
    assert table.port_queries == [1234] * 3


def test_recheck_budget_bounds_a_flood_of_misses() -> None:
    clock = Clock()
    table = FakeTable(clock=clock, cost=0.001)  # each re-check takes 1 ms
    view = make_view(table, clock, recheck_share=0.01, recheck_burst=0.0045)
    for port in range(1000, 1050):  # a scan: 50 distinct unused ports at one instant
        assert port not in view
    assert view.stats.rechecks == 5  # 4.5 ms of burst: the fifth query overdraws it
    assert view.stats.recheck_skipped == 45
    assert view.stats.recheck_seconds == pytest.approx(0.005)
    # The fifth query left a debt of 0.46 ms; 40 ms at 1 % repays 0.41 ms of it: not enough.
    clock.now += 0.04
    assert 2000 not in view
    assert view.stats.rechecks == 5
    clock.now += 0.01  # now it is repaid: one more re-check
    assert 2001 not in view
    assert view.stats.rechecks == 6
    clock.now += 10.0  # a long pause refills only up to the burst
    for port in range(3000, 3050):
        assert port not in view
    assert view.stats.rechecks == 11


@pytest.mark.parametrize("cost", [24e-6, 0.01])  # netlink, and TCP from /proc, as measured
def test_recheck_time_stays_within_its_share(cost: float) -> None:
    clock = Clock()
    table = FakeTable(clock=clock, cost=cost)
    view = make_view(table, clock, recheck_share=0.02, recheck_burst=0.005)
    start = clock.now
    for i in range(20000):  # 10,000 probes per second to distinct unused ports
        assert 1000 + i not in view
        clock.now += 0.0001
    elapsed = clock.now - start
    spent = view.stats.recheck_seconds
    assert spent <= 0.005 + 0.02 * elapsed + cost
    assert spent >= 0.02 * elapsed * 0.9  # the budget is used, not starved
    assert view.stats.rechecks + view.stats.recheck_skipped == 20000


def test_unbounded_share_rechecks_every_miss() -> None:
    table, clock = FakeTable(), Clock()
    view = make_view(table, clock, recheck_share=None)
    for port in range(1000, 1300):
        assert port not in view
    assert len(table.port_queries) == 300


def test_negative_cache_stays_bounded() -> None:
    table, clock = FakeTable(), Clock()
    view = make_view(table, clock, recheck_share=None, negative_ttl=0.001)
    for port in range(1, 5001):
        assert port not in view
        clock.now += 0.0001  # ten new entries per ttl
    assert len(view._negative) <= 1024


def test_refresh_forgets_found_and_negative_answers() -> None:
    table, clock = FakeTable(), Clock()
    view = make_view(table, clock, negative_ttl=60.0)
    table.open.add(5000)
    assert 5000 in view
    assert 6000 not in view
    table.open = {6000}  # 5000 closed, 6000 opened
    assert 5000 in view  # stale until the next refresh, as documented
    assert view.refresh() == {6000}
    assert 6000 in view
    assert 5000 not in view
    assert view.stats.refreshes == 2


def test_extra_ports_count_and_are_replaced() -> None:
    table, clock = FakeTable(22), Clock()
    view = make_view(table, clock)
    view.set_extra([8080, 8443])
    assert 8080 in view
    assert view.ports == {22, 8080, 8443}
    view.set_extra([9090])
    assert 8080 not in view
    assert view.ports == {22, 9090}
    view.refresh()
    assert 9090 in view  # extras survive a refresh


def test_recheck_error_answers_false_and_is_counted() -> None:
    table, clock = FakeTable(), Clock()
    view = make_view(table, clock)
    table.fail = True
    assert 7000 not in view
    assert 7000 not in view  # the failure is not retried for every probe
    assert table.port_queries == [7000]
    assert view.stats.recheck_errors == 1
    assert view.last_error is not None
    assert "test" in view.last_error


def test_non_ports_are_never_in_use_and_never_queried() -> None:
    table, clock = FakeTable(), Clock()
    view = make_view(table, clock)
    for value in (0, -5, 70000, "22", 2.5):
        assert value not in view
    assert table.port_queries == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"negative_ttl": -1.0},
        {"recheck_share": 0.0},
        {"recheck_share": 1.5},
        {"recheck_burst": 0.0},
    ],
)
def test_bad_bounds_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        InUseView(FakeTable(), Proto.UDP, **kwargs)  # type: ignore[arg-type]


def test_view_is_a_container_for_the_detector() -> None:
    view: Container[int] = make_view(FakeTable(22), Clock())
    assert isinstance(view, Container)
    assert 22 in view


def test_default_clock_is_used_when_none_given() -> None:
    view = InUseView(FakeTable(1), Proto.UDP)
    view.refresh()
    assert 1 in view
    assert 2 not in view
    assert view.proto is Proto.UDP


def test_auto_falls_back_when_netlink_sockets_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_args: object) -> socket.socket:
        raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")

    write_proc(tmp_path)
    monkeypatch.setattr(socket, "socket", refuse)
    table = SocketTable(proc_dir=str(tmp_path))
    assert table.ports_in_use(Proto.TCP) == {22, 25, 443}
    assert table.port_in_use(Proto.UDP, 68)
    assert set(table.fallbacks) == {Proto.TCP, Proto.UDP}
    with pytest.raises(NetlinkError, match="socket"):
        SocketTable("netlink").ports_in_use(Proto.TCP)


def test_cached_is_one_live_set_and_recheck_asks_the_kernel() -> None:
    table, clock = FakeTable(22), Clock()
    view = make_view(table, clock)
    cached = view.cached
    assert cached == {22}
    table.open = {22, 8080}
    assert 8080 not in cached  # the set alone never asks the kernel
    assert table.port_queries == []
    assert view.recheck(8080)  # a miss that matters: asked, and remembered
    assert table.port_queries == [8080]
    assert 8080 in cached
    table.open = {443}
    view.refresh()
    assert view.cached is cached  # refreshed in place: the detector's reference stays good
    assert cached == {443}
    assert not view.recheck(99999)  # not a port: no query
    assert table.port_queries == [8080]
