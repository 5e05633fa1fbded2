"""Listeners on real loopback sockets (127.0.0.1 and ::1, high ports picked at run time)."""

from __future__ import annotations

import errno
import os
import resource
import selectors
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from portsentinel.capture.listeners import (
    IN6_PKTINFO,
    IN_PKTINFO,
    IP_PKTINFO,
    IPV6_PKTINFO,
    Hit,
    Listeners,
    destination_from_ancillary,
    packed_address,
    raise_fd_limit,
)
from portsentinel.model import Proto

V4 = "127.0.0.1"
V6 = "::1"
LOOPBACK = (V4, V6)
DEADLINE = 5.0


def _has_v6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind((V6, 0))
    except OSError:
        return False
    return True


needs_v6 = pytest.mark.skipif(not _has_v6_loopback(), reason="no IPv6 loopback (::1)")
FAMILIES = [pytest.param(V4, id="v4"), pytest.param(V6, id="v6", marks=needs_v6)]


def free_ports(count: int, kind: int = socket.SOCK_STREAM) -> list[int]:
    """Ports free on both loopback addresses right now (held until all are found)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            s4 = socket.socket(socket.AF_INET, kind)
            held.append(s4)
            s4.bind((V4, 0))
            port = s4.getsockname()[1]
            s6 = socket.socket(socket.AF_INET6, kind)
            held.append(s6)
            try:
                s6.bind((V6, port))
            except OSError:
                continue
            ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


@pytest.fixture
def make() -> Iterator[Callable[..., Listeners]]:
    """Build and open Listeners on loopback; every one is closed after the test."""
    made: list[Listeners] = []

    def build(tcp: list[int] = [], udp: list[int] = [], **kw: Any) -> Listeners:  # noqa: B006
        kw.setdefault("addresses", LOOPBACK if _has_v6_loopback() else (V4,))
        lst = Listeners(tcp, udp, **kw)
        made.append(lst)
        results = lst.open()
        assert all(r.ok for r in results), results
        return lst

    yield build
    for lst in made:
        lst.close()


def collect(lst: Listeners, count: int, now: float = 0.0) -> list[Hit]:
    """Hand readable sockets to ``handle`` until ``count`` hits arrived (or fail at a deadline)."""
    hits: list[Hit] = []
    deadline = time.monotonic() + DEADLINE
    with selectors.DefaultSelector() as sel:
        for sock in lst.sockets():
            sel.register(sock, selectors.EVENT_READ)
        while len(hits) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"only {len(hits)} of {count} hits before the deadline")
            for key, _ in sel.select(left):
                assert isinstance(key.fileobj, socket.socket)
                hits.extend(lst.handle(key.fileobj, now))
    return hits


def family_of(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def connect(address: str, port: int) -> socket.socket:
    client = socket.socket(family_of(address), socket.SOCK_STREAM)
    client.settimeout(DEADLINE)
    client.connect((address, port))
    return client


def read_all(client: socket.socket) -> bytes:
    data = b""
    while chunk := client.recv(4096):
        data += chunk
    return data


# --- binding -----------------------------------------------------------------------------------


@needs_v6
def test_open_binds_every_port_on_both_families() -> None:
    tcp, udp = free_ports(2), free_ports(1, socket.SOCK_DGRAM)
    with Listeners(tcp, udp, addresses=LOOPBACK) as lst:
        results = lst.open()
        got = [(r.proto, r.port, r.family, r.ok, r.error, r.address) for r in results]
        assert got == [
            (Proto.TCP, tcp[0], socket.AF_INET, True, None, V4),
            (Proto.TCP, tcp[0], socket.AF_INET6, True, None, V6),
            (Proto.TCP, tcp[1], socket.AF_INET, True, None, V4),
            (Proto.TCP, tcp[1], socket.AF_INET6, True, None, V6),
            (Proto.UDP, udp[0], socket.AF_INET, True, None, V4),
            (Proto.UDP, udp[0], socket.AF_INET6, True, None, V6),
        ]
        socks = lst.sockets()
        assert len(socks) == 6
        assert all(s.getblocking() is False for s in socks)
        for s in socks:
            if s.family == socket.AF_INET6:
                assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
            if s.type == socket.SOCK_STREAM:
                assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    assert lst.sockets() == []
    assert all(s.fileno() == -1 for s in socks)


def test_port_in_use_is_reported_and_the_others_still_bind() -> None:
    taken, free = free_ports(2)
    utaken, ufree = free_ports(2, socket.SOCK_DGRAM)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tblock,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ublock,
        Listeners([taken, free], [utaken, ufree], addresses=(V4,)) as lst,
    ):
        tblock.bind((V4, taken))
        tblock.listen()
        ublock.bind((V4, utaken))
        results = lst.open()
        status = {(r.proto, r.port): (r.ok, r.error) for r in results}
        assert status[(Proto.TCP, free)] == (True, None)
        assert status[(Proto.UDP, ufree)] == (True, None)
        for key in ((Proto.TCP, taken), (Proto.UDP, utaken)):
            ok, error = status[key]
            assert ok is False
            assert error is not None
            assert error.startswith("EADDRINUSE")
        assert sorted(s.getsockname()[1] for s in lst.sockets()) == sorted([free, ufree])


def test_every_port_taken_binds_nothing_and_raises_nothing() -> None:
    (port,) = free_ports(1)
    with socket.socket() as blocker, Listeners([port], [], addresses=(V4,)) as lst:
        blocker.bind((V4, port))
        blocker.listen()
        assert [r.ok for r in lst.open()] == [False]
        assert lst.sockets() == []


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="1-65535"):
        Listeners([0], [])
    with pytest.raises(ValueError, match="1-65535"):
        Listeners([], [65536])
    with pytest.raises(ValueError, match="does not appear"):
        Listeners([1], [], addresses=("localhost",))
    with pytest.raises(ValueError, match="at least 1"):
        Listeners([1], [], max_pending=0)


def test_open_twice_is_a_programming_error(make: Callable[..., Listeners]) -> None:
    lst = make(free_ports(1))
    with pytest.raises(RuntimeError):
        lst.open()


def test_duplicate_ports_bind_once() -> None:
    (port,) = free_ports(1)
    with Listeners([port, port], [], addresses=(V4,)) as lst:
        assert len(lst.open()) == 1


# --- TCP ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", FAMILIES)
def test_tcp_connect_gives_a_hit(make: Callable[..., Listeners], address: str) -> None:
    (port,) = free_ports(1)
    lst = make([port])
    with connect(address, port) as client:
        (hit,) = collect(lst, 1, now=10.0)
        family = family_of(address)
        assert hit.proto == Proto.TCP
        assert hit.src == socket.inet_pton(family, address)
        assert hit.sport == client.getsockname()[1]
        assert hit.dst == socket.inet_pton(family, address)
        assert hit.dport == port
        assert lst.pending_count == 1
        assert lst.stats.accepted == 1


@pytest.mark.parametrize("address", FAMILIES)
def test_banner_reaches_the_client_then_the_connection_closes(
    make: Callable[..., Listeners], address: str
) -> None:
    (port,) = free_ports(1)
    lst = make([port])
    with connect(address, port) as client:
        (hit,) = collect(lst, 1)
        lst.respond(hit, "220 ready\r\n")
        assert read_all(client) == b"220 ready\r\n"
    assert lst.pending_count == 0


@pytest.mark.parametrize("address", FAMILIES)
def test_no_banner_just_closes(make: Callable[..., Listeners], address: str) -> None:
    (port,) = free_ports(1)
    lst = make([port])
    with connect(address, port) as client:
        (hit,) = collect(lst, 1)
        lst.respond(hit, None)
        assert read_all(client) == b""  # EOF straight away, no banner first
    assert lst.pending_count == 0
    assert lst.stats.stale == 0


def test_banner_survives_unread_client_data(make: Callable[..., Listeners]) -> None:
    (port,) = free_ports(1)
    lst = make([port])
    with connect(V4, port) as client:
        client.sendall(b"GET / HTTP/1.0\r\n\r\n")
        (hit,) = collect(lst, 1)
        lst.respond(hit, "banner")
        assert read_all(client) == b"banner"


def test_respond_twice_is_harmless(make: Callable[..., Listeners]) -> None:
    (port,) = free_ports(1)
    lst = make([port])
    with connect(V4, port):
        (hit,) = collect(lst, 1)
        lst.respond(hit, None)
        lst.respond(hit, "late")
        assert lst.stats.stale == 1


def test_peer_reset_before_accept_is_still_a_hit_on_linux(make: Callable[..., Listeners]) -> None:
    """Linux returns a connection reset in the accept queue, with its peer address."""
    (port,) = free_ports(1)
    lst = make([port])
    client = connect(V4, port)
    sport = client.getsockname()[1]
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST, like nmap -sT
    (hit,) = collect(lst, 1)
    assert (hit.src, hit.sport, hit.dport) == (socket.inet_aton(V4), sport, port)
    lst.respond(hit, "too late")  # the send fails; nothing is raised
    assert lst.pending_count == 0
    assert (lst.stats.peer_gone, lst.stats.send_dropped) == (1, 0)
    assert lst.take_aborted() == []


def test_accept_failure_is_reported_without_a_source(
    make: Callable[..., Listeners], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The BSD race: accept() fails with ECONNABORTED; the port is reported, not a hit."""
    (port,) = free_ports(1)
    lst = make([port])
    real_accept = socket.socket.accept
    failures = [ConnectionAbortedError(errno.ECONNABORTED, "aborted")]

    def flaky_accept(self: socket.socket) -> tuple[socket.socket, Any]:
        if failures:
            raise failures.pop()
        return real_accept(self)

    monkeypatch.setattr(socket.socket, "accept", flaky_accept)
    with connect(V4, port):
        hits = collect(lst, 1)
    assert len(hits) == 1  # accepting went on after the failure
    assert lst.take_aborted() == [port]
    assert lst.take_aborted() == []
    assert lst.stats.aborted == 1


def test_out_of_descriptors_closes_the_oldest_connection_and_goes_on(
    make: Callable[..., Listeners], monkeypatch: pytest.MonkeyPatch
) -> None:
    (port,) = free_ports(1)
    lst = make([port])
    with connect(V4, port) as first:
        collect(lst, 1)
        real_accept = socket.socket.accept
        failures = [OSError(errno.EMFILE, "Too many open files")]

        def starved_accept(self: socket.socket) -> tuple[socket.socket, Any]:
            if failures:
                raise failures.pop()
            return real_accept(self)

        monkeypatch.setattr(socket.socket, "accept", starved_accept)
        with connect(V4, port):
            assert len(collect(lst, 1)) == 1
        assert read_all(first) == b""  # the oldest was closed to make room
        assert (lst.stats.evicted, lst.stats.accept_errors, lst.pending_count) == (1, 1, 1)


def test_open_connections_are_capped_oldest_closed_first(
    make: Callable[..., Listeners],
) -> None:
    (port,) = free_ports(1)
    lst = make([port], max_pending=3)
    clients = [connect(V4, port) for _ in range(5)]
    try:
        hits = collect(lst, 5)
        assert lst.pending_count == 3
        assert lst.stats.evicted == 2
        evicted = {h.sport for h in hits[:2]}
        oldest = [c for c in clients if c.getsockname()[1] in evicted]
        assert len(oldest) == 2
        for client in oldest:
            assert read_all(client) == b""
        for hit in hits[:2]:
            lst.respond(hit, "not sent")
        assert lst.stats.stale == 2
        for hit in hits[2:]:
            lst.respond(hit, "sent")
        assert lst.pending_count == 0
        for client in clients:
            expected = b"" if client in oldest else b"sent"
            assert read_all(client) == expected
    finally:
        for client in clients:
            client.close()


def test_expire_closes_connections_older_than_the_ttl(make: Callable[..., Listeners]) -> None:
    (port,) = free_ports(1)
    lst = make([port], pending_ttl=5.0)
    with connect(V4, port) as a, connect(V4, port) as b:
        collect(lst, 2, now=100.0)
        with connect(V4, port) as c:
            (young,) = collect(lst, 1, now=103.0)
            assert lst.expire(104.9) == 0
            assert lst.expire(105.0) == 2
            assert (read_all(a), read_all(b)) == (b"", b"")
            assert lst.pending_count == 1
            assert lst.stats.expired == 2
            lst.respond(young, "still here")
            assert read_all(c) == b"still here"
        assert lst.expire(1000.0) == 0


def test_one_call_accepts_at_most_batch_connections(make: Callable[..., Listeners]) -> None:
    (port,) = free_ports(1)
    lst = make([port], addresses=(V4,), batch=2)
    clients = [connect(V4, port) for _ in range(5)]
    try:
        (sock,) = lst.sockets()
        seen: list[int] = []
        deadline = time.monotonic() + DEADLINE
        while sum(seen) < 5 and time.monotonic() < deadline:
            seen.append(len(lst.handle(sock, 0.0)))
        assert sum(seen) == 5
        assert max(seen) == 2
    finally:
        for client in clients:
            client.close()


def test_unknown_socket_gives_no_hits(make: Callable[..., Listeners]) -> None:
    lst = make(free_ports(1))
    with socket.socket() as stranger:
        assert lst.handle(stranger, 0.0) == []


# --- UDP ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", FAMILIES)
def test_udp_datagram_gives_a_hit_and_the_banner_goes_back(
    make: Callable[..., Listeners], address: str
) -> None:
    (port,) = free_ports(1, socket.SOCK_DGRAM)
    lst = make([], [port])
    family = family_of(address)
    with socket.socket(family, socket.SOCK_DGRAM) as client:
        client.settimeout(DEADLINE)
        client.sendto(b"first", (address, port))
        client.sendto(b"", (address, port))  # an empty datagram is a hit too
        first, second = collect(lst, 2)
        packed = socket.inet_pton(family, address)
        for hit in (first, second):
            assert (hit.proto, hit.src, hit.dst, hit.dport) == (Proto.UDP, packed, packed, port)
            assert hit.sport == client.getsockname()[1]
        lst.respond(first, None)  # nothing goes back
        lst.respond(second, "udp banner")
        data, sender = client.recvfrom(4096)
        assert data == b"udp banner"  # the first thing back is the second answer
        assert (sender[0], sender[1]) == (address, port)
        assert lst.stats.datagrams == 2


def test_udp_reply_after_close_is_dropped(make: Callable[..., Listeners]) -> None:
    (port,) = free_ports(1, socket.SOCK_DGRAM)
    lst = make([], [port])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"x", (V4, port))
        (hit,) = collect(lst, 1)
        lst.close()
        lst.respond(hit, "nobody")
        assert lst.stats.stale == 1


def test_destination_from_ipv4_pktinfo() -> None:
    data = IN_PKTINFO.pack(7, socket.inet_aton("10.0.0.9"), socket.inet_aton("198.18.0.1"))
    ancillary = [(socket.IPPROTO_IP, IP_PKTINFO, data)]
    assert destination_from_ancillary(ancillary) == (socket.inet_aton("198.18.0.1"), 7)


def test_destination_from_ipv6_pktinfo_unmaps_ipv4() -> None:
    v6 = socket.inet_pton(socket.AF_INET6, "fd00:5e::1")
    mapped = socket.inet_pton(socket.AF_INET6, "::ffff:198.18.0.1")
    assert destination_from_ancillary(
        [(socket.IPPROTO_IPV6, IPV6_PKTINFO, IN6_PKTINFO.pack(v6, 3))]
    ) == (
        v6,
        3,
    )
    unmapped = destination_from_ancillary(
        [(socket.IPPROTO_IPV6, IPV6_PKTINFO, IN6_PKTINFO.pack(mapped, 3))]
    )
    assert unmapped == (socket.inet_aton("198.18.0.1"), 3)


def test_destination_missing_or_truncated() -> None:
    assert destination_from_ancillary([]) == (None, 0)
    assert destination_from_ancillary([(socket.IPPROTO_IP, IP_PKTINFO, b"\x00" * 4)]) == (None, 0)


@pytest.mark.parametrize(
    ("host", "packed"),
    [
        ("198.18.0.2", bytes([198, 18, 0, 2])),
        ("::ffff:198.18.0.2", bytes([198, 18, 0, 2])),
        ("fe80::1%eth0", socket.inet_pton(socket.AF_INET6, "fe80::1")),
        ("fd00:5e::2", socket.inet_pton(socket.AF_INET6, "fd00:5e::2")),
    ],
)
def test_packed_address(host: str, packed: bytes) -> None:
    assert packed_address(host) == packed


# --- descriptor limit ---------------------------------------------------------------------------


@pytest.fixture
def restore_nofile() -> Iterator[tuple[int, int]]:
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield limits
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def test_many_ports_raise_the_soft_limit(restore_nofile: tuple[int, int]) -> None:
    _soft, hard = restore_nofile
    open_now = len(os.listdir("/proc/self/fd"))
    low = open_now + 30
    if hard != resource.RLIM_INFINITY and hard < low + 200:
        pytest.skip(f"hard RLIMIT_NOFILE {hard} leaves no room for the test")
    ports = free_ports(40)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    with Listeners(ports, [], addresses=(V4,), max_pending=8) as lst:
        results = lst.open()
        assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
        assert lst.fd_limit is not None
        assert lst.fd_limit.raised
        assert lst.fd_limit.sufficient
        assert lst.fd_limit.soft_before == low
        assert lst.fd_limit.needed >= open_now + 40 + 8
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == lst.fd_limit.soft_after


def test_fd_limit_left_alone_when_it_suffices(restore_nofile: tuple[int, int]) -> None:
    soft, _hard = restore_nofile
    report = raise_fd_limit(10)
    assert (report.raised, report.sufficient, report.soft_after) == (False, True, soft)


def test_fd_limit_stops_at_the_hard_limit(restore_nofile: tuple[int, int]) -> None:
    soft, hard = restore_nofile
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit to stop at")
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard - 1), hard))
    report = raise_fd_limit(hard + 1000)
    assert (report.soft_after, report.sufficient, report.raised) == (hard, False, True)


def test_fd_limit_failure_is_reported(
    restore_nofile: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(_which: int, _limits: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "setrlimit", refuse)
    soft, _hard = restore_nofile
    report = raise_fd_limit(soft + 1 if soft != resource.RLIM_INFINITY else 1)
    if soft == resource.RLIM_INFINITY:
        assert report.error is None
    else:
        assert (report.raised, report.error) == (False, "not allowed")
