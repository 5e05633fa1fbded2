"""Bound-port capture for PortSentry's classic modes (1.2 ``tcp``/``udp``, 2.0 ``--connect``).

PortSentry owns each watched port: it binds it, accepts every TCP connection and reads every
UDP datagram, so a hit is a full connect or a real datagram and no service check is needed.
This module is that capture source, and nothing more: it binds, accepts, receives and answers;
the detector decides, and the caller logs.

- Non-blocking sockets, driven by the caller's event loop (``selectors``); no threads. Register
  ``sockets()``, call ``handle(sock, now)`` when one is readable, and ``respond(hit, banner)``
  once the detector has decided (PORT_BANNER is sent only once the trigger has fired, so the
  banner is the caller's choice, ``None`` for no banner).
- Each port is bound on IPv4 and IPv6 separately (``IPV6_V6ONLY``), so a failure in one family
  leaves the other watched, and no peer ever shows up as an IPv4-mapped address.
- A port that cannot be bound is reported in its ``BindResult`` and skipped; the caller logs
  PortSentry's "could not bind" line and stops only when nothing bound at all.
- An accepted TCP connection stays open until ``respond`` (the banner goes over it); a connect
  flood cannot exhaust descriptors: open connections are capped (oldest closed first) and
  ``expire(now)`` closes those older than ``pending_ttl``.
- ``accept()`` failures for connections the peer already reset (BSD: ``ECONNABORTED`` after the
  fast RST of ``nmap -sT``) have no source address. They are not hits: ``take_aborted()``
  returns their ports for PortSentry's "Possible stealth scan from unknown host to TCP port: %d
  (accept failed)" line. Linux hands such a connection out normally (the peer address comes
  with ``accept``; only ``getpeername`` and ``send`` fail afterwards), so there it is a hit,
  and its banner is lost (``stats.peer_gone``): against ``nmap -sT`` that is most of them.
- The descriptor soft limit is raised when the ports need it (2.0 raises it to ports + 4);
  ``fd_limit`` reports what happened.

Times are the caller's monotonic seconds; nothing here reads a clock.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import itertools
import os
import resource
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, NamedTuple

from portsentinel.model import Proto

# Linux values; Python 3.11's socket module lacks IP_PKTINFO.
IP_PKTINFO: Final[int] = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO: Final[int] = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO: Final[int] = getattr(socket, "IPV6_PKTINFO", 50)
IN_PKTINFO: Final = struct.Struct("=i4s4s")  # ifindex, spec_dst (local), addr (header dst)
IN6_PKTINFO: Final = struct.Struct("=16sI")  # addr, ifindex
_ANCILLARY_SIZE: Final = socket.CMSG_SPACE(max(IN_PKTINFO.size, IN6_PKTINFO.size))

DEFAULT_ADDRESSES: Final = ("0.0.0.0", "::")
DEFAULT_BACKLOG: Final = 64
BATCH: Final = 256  # accepts or datagrams per handle() call: one busy port cannot starve others
MAX_PENDING: Final = 256  # accepted connections waiting for respond()
PENDING_TTL: Final = 5.0  # seconds an accepted connection may wait for respond()
MAX_ABORTED: Final = 1024  # aborted accepts kept for take_aborted(); beyond, only counted
FD_RESERVE: Final = 16  # descriptors left for the rest of the daemon (logs, store, selector)

_SEND_FLAGS: Final = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
_ABORTED_ERRNOS: Final = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.ECONNRESET})
_OUT_OF_FDS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_V4_MAPPED: Final = b"\x00" * 10 + b"\xff\xff"


@dataclass(frozen=True)
class BindResult:
    """The outcome of binding one port on one address; ``error`` is set when ``ok`` is False."""

    proto: Proto
    port: int
    family: int
    ok: bool
    error: str | None
    address: str = ""


class Hit(NamedTuple):
    """A connection or datagram on a watched port. A tuple: cheap to build during a flood.

    ``src``/``dst`` are packed addresses (4 bytes IPv4, 16 bytes IPv6; IPv4-mapped IPv6 is
    turned into IPv4). ``dst`` is the local address the peer reached. ``handle`` is opaque:
    pass the hit back to ``Listeners.respond``.
    """

    proto: Proto
    src: bytes
    sport: int
    dst: bytes
    dport: int
    handle: object


@dataclass(frozen=True)
class FdLimit:
    """What ``raise_fd_limit`` found and did; an unlimited limit is ``resource.RLIM_INFINITY``."""

    needed: int
    soft_before: int
    soft_after: int
    hard: int
    error: str | None = None

    @property
    def raised(self) -> bool:
        return self.soft_after != self.soft_before

    @property
    def sufficient(self) -> bool:
        return _at_least(self.soft_after, self.needed)


@dataclass
class ListenerStats:
    """Counters for the status view; none of these is a hit."""

    accepted: int = 0
    datagrams: int = 0
    aborted: int = 0  # accept() failed because the peer was gone (no source address)
    accept_errors: int = 0  # accept() failed for another reason (out of descriptors...)
    recv_errors: int = 0
    expired: int = 0  # closed by expire() before respond()
    evicted: int = 0  # closed because MAX_PENDING connections were already open
    stale: int = 0  # respond() for a connection already closed (no banner sent)
    send_dropped: int = 0  # banner not (fully) sent: it would have blocked
    peer_gone: int = 0  # banner not sent: the peer had already reset or closed


class _Bound(NamedTuple):
    sock: socket.socket
    proto: Proto
    port: int
    family: int
    local: bytes  # packed bound address: the destination when nothing better is known


class _Pending(NamedTuple):
    sock: socket.socket
    opened: float


class _UdpPeer(NamedTuple):
    """What a UDP answer needs: the socket that received, the peer, and where it was sent."""

    fileno: int
    peer: tuple[Any, ...]
    dst: bytes
    ifindex: int


class Listeners:
    """The listening sockets of the classic modes, their accepted connections and answers."""

    def __init__(
        self,
        tcp_ports: Iterable[int],
        udp_ports: Iterable[int],
        *,
        addresses: Sequence[str] = DEFAULT_ADDRESSES,
        backlog: int = DEFAULT_BACKLOG,
        max_pending: int = MAX_PENDING,
        pending_ttl: float = PENDING_TTL,
        batch: int = BATCH,
    ) -> None:
        if max_pending < 1 or batch < 1 or backlog < 1:
            raise ValueError("backlog, max_pending and batch must be at least 1")
        self._ports = {Proto.TCP: _check_ports(tcp_ports), Proto.UDP: _check_ports(udp_ports)}
        self._addresses = tuple(_check_address(a) for a in addresses)
        self._backlog = backlog
        self._max_pending = max_pending
        self._ttl = pending_ttl
        self._batch = batch
        self._bound: dict[int, _Bound] = {}  # by fileno
        self._pending: dict[int, _Pending] = {}  # by token, oldest first
        self._tokens = itertools.count(1)
        self._aborted: list[int] = []
        self._opened = False
        self.stats = ListenerStats()
        self.fd_limit: FdLimit | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def open(self) -> list[BindResult]:
        """Bind every port on every address; one result each. A failure is reported, not raised."""
        if self._opened:
            raise RuntimeError("Listeners.open() called twice")
        self._opened = True
        wanted = sum(len(p) for p in self._ports.values()) * len(self._addresses)
        self.fd_limit = raise_fd_limit(_open_fds() + wanted + self._max_pending + FD_RESERVE)
        return [
            self._bind(proto, port, family, address)
            for proto, ports in self._ports.items()
            for port in ports
            for family, address in self._addresses
        ]

    def sockets(self) -> list[socket.socket]:
        """The bound sockets, to register with a selector for reading."""
        return [b.sock for b in self._bound.values()]

    def close(self) -> None:
        """Close every listening socket and every accepted connection. Idempotent."""
        for pending in self._pending.values():
            pending.sock.close()
        self._pending.clear()
        for bound in self._bound.values():
            bound.sock.close()
        self._bound.clear()

    def __enter__(self) -> Listeners:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def pending_count(self) -> int:
        """Accepted connections still waiting for ``respond``."""
        return len(self._pending)

    # --- reading -------------------------------------------------------------------------

    def handle(self, sock: socket.socket, now: float) -> list[Hit]:
        """Drain a readable socket (at most ``batch`` connections or datagrams) into hits."""
        bound = self._bound.get(sock.fileno())
        if bound is None:
            return []
        if bound.proto == Proto.TCP:
            return self._accept_all(bound, now)
        return self._receive_all(bound)

    def take_aborted(self) -> list[int]:
        """Ports of accepts that failed since the last call (peer gone, source unknown)."""
        ports, self._aborted = self._aborted, []
        return ports

    def expire(self, now: float) -> int:
        """Close accepted connections older than ``pending_ttl``; returns how many.

        Connections are kept in the order they were accepted, so with a monotonic ``now`` the
        oldest are at the front and the scan stops at the first young one.
        """
        deadline = now - self._ttl
        closed = 0
        while self._pending:
            token = next(iter(self._pending))
            if self._pending[token].opened > deadline:
                break
            self._pending.pop(token).sock.close()
            closed += 1
        self.stats.expired += closed
        return closed

    # --- answering -----------------------------------------------------------------------

    def respond(self, hit: Hit, banner: str | None) -> None:
        """Send ``banner`` (if not None) to the peer, never blocking, and close a TCP connection.

        The banner is written as is, like PortSentry's ``write()``: no newline is added.
        """
        data = banner.encode() if banner is not None else None
        if hit.proto == Proto.TCP:
            self._respond_tcp(hit.handle, data)
        elif data is not None:
            self._respond_udp(hit.handle, data)

    def _respond_tcp(self, handle: object, data: bytes | None) -> None:
        pending = self._pending.pop(handle, None) if isinstance(handle, int) else None
        if pending is None:
            self.stats.stale += 1
            return
        conn = pending.sock
        try:
            if data:
                _send_banner(conn, data, self.stats)
        finally:
            conn.close()

    def _respond_udp(self, handle: object, data: bytes) -> None:
        if not isinstance(handle, _UdpPeer) or handle.fileno not in self._bound:
            self.stats.stale += 1  # the listeners were closed in between
            return
        bound = self._bound[handle.fileno]
        source = _source_cmsg(bound.family, handle.dst, handle.ifindex)
        try:
            # Answer from the address the peer reached, as a connected reply would.
            bound.sock.sendmsg([data], source, _SEND_FLAGS, handle.peer)
            return
        except OSError:
            pass  # e.g. a broadcast destination cannot be a source: let the kernel choose
        try:
            bound.sock.sendto(data, _SEND_FLAGS, handle.peer)
        except OSError:
            self.stats.send_dropped += 1

    # --- internals -----------------------------------------------------------------------

    def _bind(self, proto: Proto, port: int, family: int, address: str) -> BindResult:
        try:
            sock = _listening_socket(proto, family, address, port, self._backlog)
        except OSError as exc:
            return BindResult(proto, port, family, False, _describe(exc), address)
        local = socket.inet_pton(family, address)
        self._bound[sock.fileno()] = _Bound(sock, proto, port, family, local)
        return BindResult(proto, port, family, True, None, address)

    def _accept_all(self, bound: _Bound, now: float) -> list[Hit]:
        hits: list[Hit] = []
        for _ in range(self._batch):
            try:
                conn, peer = bound.sock.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if self._accept_failed(bound, exc):
                    continue
                break
            hits.append(self._admit(conn, peer, bound, now))
        return hits

    def _accept_failed(self, bound: _Bound, exc: OSError) -> bool:
        """Account for a failed accept; True when accepting may go on."""
        if exc.errno in _ABORTED_ERRNOS:
            self.stats.aborted += 1
            if len(self._aborted) < MAX_ABORTED:
                self._aborted.append(bound.port)
            return True
        self.stats.accept_errors += 1
        if exc.errno in _OUT_OF_FDS and self._pending:
            self._evict_oldest()  # frees a descriptor for the next try
            return True
        return False

    def _admit(self, conn: socket.socket, peer: tuple[Any, ...], bound: _Bound, now: float) -> Hit:
        # The accepted socket is left in blocking mode: every later call passes MSG_DONTWAIT,
        # which saves a syscall per connection during a flood.
        self.stats.accepted += 1
        try:
            dst = packed_address(conn.getsockname()[0])
        except OSError:
            dst = bound.local
        if len(self._pending) >= self._max_pending:
            self._evict_oldest()
        token = next(self._tokens)
        self._pending[token] = _Pending(conn, now)
        return Hit(Proto.TCP, packed_address(peer[0]), peer[1], dst, bound.port, token)

    def _evict_oldest(self) -> None:
        token = next(iter(self._pending))
        self._pending.pop(token).sock.close()
        self.stats.evicted += 1

    def _receive_all(self, bound: _Bound) -> list[Hit]:
        hits: list[Hit] = []
        sock = bound.sock
        fileno = sock.fileno()
        for _ in range(self._batch):
            try:
                # One byte is enough (PortSentry reads one): the rest of the datagram is dropped.
                _data, ancillary, _flags, peer = sock.recvmsg(1, _ANCILLARY_SIZE)
            except BlockingIOError:
                break
            except OSError:
                self.stats.recv_errors += 1  # a queued ICMP error, say: the next read may work
                continue
            self.stats.datagrams += 1
            dst, ifindex = destination_from_ancillary(ancillary)
            if dst is None:
                dst = bound.local
            handle = _UdpPeer(fileno, peer, dst, ifindex)
            hits.append(Hit(Proto.UDP, packed_address(peer[0]), peer[1], dst, bound.port, handle))
        return hits


# --- helpers ---------------------------------------------------------------------------------


def raise_fd_limit(needed: int) -> FdLimit:
    """Raise RLIMIT_NOFILE's soft limit to ``needed`` (at most the hard limit) if it is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if _at_least(soft, needed):
        return FdLimit(needed, soft, soft, hard)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        return FdLimit(needed, soft, soft, hard, str(exc))
    return FdLimit(needed, soft, target, hard)


def packed_address(host: str) -> bytes:
    """Packed form of a socket-module host string; IPv4-mapped IPv6 becomes 4-byte IPv4."""
    if ":" not in host:
        return socket.inet_pton(socket.AF_INET, host)
    packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])  # drop a zone index
    return packed[12:] if packed[:12] == _V4_MAPPED else packed


def destination_from_ancillary(
    ancillary: Iterable[tuple[int, int, bytes]],
) -> tuple[bytes | None, int]:
    """The header destination address and interface index from IP(V6)_PKTINFO, if present."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= IN_PKTINFO.size:
            ifindex, _spec_dst, addr = IN_PKTINFO.unpack_from(data)
            return addr, ifindex
        if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= IN6_PKTINFO.size:
            addr6, ifindex = IN6_PKTINFO.unpack_from(data)
            return (addr6[12:] if addr6[:12] == _V4_MAPPED else addr6), ifindex
    return None, 0


def _listening_socket(
    proto: Proto, family: int, address: str, port: int, backlog: int
) -> socket.socket:
    kind = socket.SOCK_STREAM if proto is Proto.TCP else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    try:
        sock.setblocking(False)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if proto is Proto.TCP:
            # Rebinding over TIME_WAIT after a restart; Linux still refuses a port in LISTEN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        elif family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.bind((address, port))
        if proto is Proto.TCP:
            sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _send_banner(conn: socket.socket, data: bytes, stats: ListenerStats) -> None:
    try:
        sent = conn.send(data, _SEND_FLAGS)
    except (ConnectionResetError, BrokenPipeError):
        stats.peer_gone += 1  # nmap -sT resets right after the handshake, often before this
        return
    except OSError:  # would block, or out of buffers
        stats.send_dropped += 1
        return
    if sent < len(data):
        stats.send_dropped += 1
    # Unread input would make close() send RST, which can destroy the banner in flight.
    with contextlib.suppress(OSError):  # nothing to drain, or the peer is gone
        conn.recv(4096, socket.MSG_DONTWAIT)


def _source_cmsg(family: int, dst: bytes, ifindex: int) -> list[tuple[int, int, bytes]]:
    if family == socket.AF_INET and len(dst) == 4:
        return [(socket.IPPROTO_IP, IP_PKTINFO, IN_PKTINFO.pack(0, dst, bytes(4)))]
    if family == socket.AF_INET6 and len(dst) == 16:
        link_local = dst[0] == 0xFE and dst[1] & 0xC0 == 0x80
        return [
            (socket.IPPROTO_IPV6, IPV6_PKTINFO, IN6_PKTINFO.pack(dst, ifindex if link_local else 0))
        ]
    return []


def _check_ports(ports: Iterable[int]) -> tuple[int, ...]:
    unique = tuple(dict.fromkeys(ports))
    bad = [p for p in unique if not 1 <= p <= 65535]
    if bad:
        raise ValueError(f"ports must be 1-65535, got {bad}")
    return unique


def _check_address(address: str) -> tuple[int, str]:
    ip = ipaddress.ip_address(address)  # raises ValueError for anything else
    return (socket.AF_INET if ip.version == 4 else socket.AF_INET6), str(ip)


def _describe(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "error")
    return f"{name}: {exc.strerror or exc}"


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0  # no /proc: FD_RESERVE has to cover what is already open


def _at_least(limit: int, needed: int) -> bool:
    return limit == resource.RLIM_INFINITY or limit >= needed
