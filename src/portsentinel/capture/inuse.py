"""Which local ports are in use right now: PortSentry's advanced-mode logic, asked of the kernel.

PortSentry 1.2 test-binds every port at start-up (atcp/audp) and again for every probe
(SmartVerify); a bind that fails means a service owns the port and the probe is no probe.
Test-binding races with real services (their own bind can fail while ours holds the port)
and costs a socket per packet. The kernel already knows its socket table, so we read it:

- ``SocketTable`` reads it through ``NETLINK_SOCK_DIAG`` (``SOCK_DIAG_BY_FAMILY`` with an
  ``inet_diag_req_v2`` per address family), or, where that is missing (no ``inet_diag`` or
  ``udp_diag``), parses ``/proc/net/{tcp,tcp6,udp,udp6}``. A TCP port is in use when a socket
  LISTENs on it; a UDP port when any socket is bound to it. Both families count, and a socket
  bound to one address counts for its port, because the detector judges by port.
- ``InUseView`` is what the pure detector holds (``port in view``): a cached set refreshed
  by the caller, plus a bounded per-miss kernel re-check so that a listener opened since the
  last refresh (an FTP data port, a service just started) is seen on its first probe.

Only the kernel is asked; no packet is sent. All failures are ``CaptureError``.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from portsentinel.errors import CaptureError
from portsentinel.model import Proto

# --- netlink and sock_diag constants (linux/netlink.h, sock_diag.h, inet_diag.h) ------------
NETLINK_SOCK_DIAG: Final = 4
SOCK_DIAG_BY_FAMILY: Final = 20
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLMSG_OVERRUN: Final = 4
NLM_F_REQUEST: Final = 0x01
NLM_F_DUMP: Final = 0x300
INET_DIAG_REQ_BYTECODE: Final = 1
INET_DIAG_BC_S_GE: Final = 2
INET_DIAG_BC_S_LE: Final = 3
INET_DIAG_BC_S_EQ: Final = 11  # Linux 4.16+; older kernels answer EINVAL
TCP_LISTEN: Final = 10
ALL_STATES: Final = 0xFFFFFFFF

NLMSGHDR: Final = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
REQ_V2: Final = struct.Struct("=BBBxI48x")  # family, protocol, ext, pad, states, zero sockid
NLATTR: Final = struct.Struct("=HH")  # length, type
BC_OP: Final = struct.Struct("=BBH")  # code, yes, no (a port operand sits in ``no``)
NLERR: Final = struct.Struct("=i")
DIAG_MSG_HEAD: Final = struct.Struct("!BBxxH")  # family, state, timer, retrans, sport (BE)
DIAG_MSG_LEN: Final = 72  # sizeof(struct inet_diag_msg)

# TCP counts listeners only: an ESTABLISHED socket on port p does not accept new peers.
# UDP has no listen state: every socket in the table is bound, connected (state 1) or not (7).
STATES: Final[dict[Proto, int]] = {Proto.TCP: 1 << TCP_LISTEN, Proto.UDP: ALL_STATES}
FAMILIES: Final = (socket.AF_INET, socket.AF_INET6)
PROC_FILES: Final[dict[Proto, tuple[str, str]]] = {
    Proto.TCP: ("tcp", "tcp6"),
    Proto.UDP: ("udp", "udp6"),
}
# Errors that mean "netlink cannot answer here" (no diag support, or a policy forbids it):
# the auto backend falls back to /proc for that protocol.
_UNSUPPORTED: Final = frozenset(
    {
        errno.ENOENT,
        errno.EOPNOTSUPP,
        errno.EAFNOSUPPORT,
        errno.EPROTONOSUPPORT,
        errno.EPERM,
        errno.EACCES,
    }
)
_RECV_BUFFER: Final = 65536  # the kernel fills dump datagrams of at most 32 KiB

# The negative cache drops its expired entries when it reaches this size. Live entries are
# the re-checks of the last ``negative_ttl`` seconds: about 200 with the defaults.
_NEGATIVE_SWEEP: Final = 1024

Row = tuple[int, int]
"""One socket: (TCP state number, local port)."""


class NetlinkError(CaptureError):
    """The kernel refused a sock_diag request; ``errno`` is its error number."""

    def __init__(self, err: int, what: str) -> None:
        self.errno = err
        super().__init__(f"sock_diag {what}: {os.strerror(err)} (errno {err})")


# --- pure packing and parsing ----------------------------------------------------------------
def port_bytecode(port: int, *, exact: bool) -> bytes:
    """An inet_diag filter program accepting sockets whose local port is ``port``.

    The kernel runs it op by op: a true test jumps ``yes`` bytes, a false one ``no`` bytes,
    and the socket passes when the program ends exactly at its last byte. A false test jumps
    4 bytes past the end: rejected. The port operand sits in the ``no`` field of the next op.
    """
    operand = BC_OP.pack(0, 0, port)
    if exact:
        return BC_OP.pack(INET_DIAG_BC_S_EQ, 8, 12) + operand
    return (
        BC_OP.pack(INET_DIAG_BC_S_GE, 8, 20)
        + operand
        + BC_OP.pack(INET_DIAG_BC_S_LE, 8, 12)
        + operand
    )


def pack_request(seq: int, family: int, proto: int, states: int, bytecode: bytes = b"") -> bytes:
    """A SOCK_DIAG_BY_FAMILY dump request, with an optional bytecode filter attribute."""
    body = REQ_V2.pack(family, proto, 0, states)
    if bytecode:
        body += NLATTR.pack(NLATTR.size + len(bytecode), INET_DIAG_REQ_BYTECODE) + bytecode
    flags = NLM_F_REQUEST | NLM_F_DUMP
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, flags, seq, 0) + body


def parse_dump(data: bytes | memoryview, seq: int, rows: list[Row]) -> bool:
    """Append the (state, port) rows of one received datagram; True once the dump is done.

    Messages of another sequence number (the tail of an earlier, abandoned dump) are skipped.
    Raises ``NetlinkError`` for an error reply, ``CaptureError`` for a malformed datagram.
    """
    end = len(data)
    offset = 0
    done = False
    while offset < end:
        if end - offset < NLMSGHDR.size:
            raise CaptureError(f"sock_diag reply: {end - offset} stray bytes at offset {offset}")
        length, kind, _flags, msg_seq, _pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > end:
            raise CaptureError(f"sock_diag reply: bad message length {length} at {offset}")
        if msg_seq == seq:
            done = _parse_message(data, offset, length, kind, rows) or done
        offset += (length + 3) & ~3
    return done


def _parse_message(
    data: bytes | memoryview, offset: int, length: int, kind: int, rows: list[Row]
) -> bool:
    """Handle one message of our dump; True when it ends the dump."""
    payload = offset + NLMSGHDR.size
    if kind == SOCK_DIAG_BY_FAMILY:
        if length - NLMSGHDR.size < DIAG_MSG_LEN:
            raise CaptureError(f"sock_diag reply: short socket record ({length} bytes)")
        _family, state, port = DIAG_MSG_HEAD.unpack_from(data, payload)
        rows.append((state, port))
        return False
    if kind in (NLMSG_DONE, NLMSG_ERROR):
        # DONE may carry the dump's error; ERROR always does (0 is a plain acknowledgement).
        has_code = length >= NLMSGHDR.size + NLERR.size
        err = NLERR.unpack_from(data, payload)[0] if has_code else 0
        if err < 0:
            raise NetlinkError(-err, "request refused")
        return True
    if kind == NLMSG_OVERRUN:
        raise CaptureError("sock_diag reply: the kernel reported a buffer overrun")
    return False  # NLMSG_NOOP and unknown types carry nothing for us


def parse_proc_net(text: str) -> Iterator[Row]:
    """(state, port) of each socket row of a /proc/net/{tcp,tcp6,udp,udp6} table.

    A row reads ``sl local_address rem_address st ...`` with ``ADDR:PORT`` in hex; the
    address (in host-order 32-bit words) is not needed, as the detector checks by port.
    """
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] == "sl":
            continue
        try:
            port = int(fields[1].rpartition(":")[2], 16)
            state = int(fields[3], 16)
        except (IndexError, ValueError):
            raise CaptureError(f"/proc/net table line {number}: cannot parse {line!r}") from None
        yield state, port


def ports_from_rows(rows: Iterable[Row], states: int) -> frozenset[int]:
    """Ports of the rows whose state is in the ``states`` bit mask (port 0 is never bound)."""
    return frozenset(port for state, port in rows if port and states >> state & 1)


# --- the kernel's socket table ---------------------------------------------------------------
Backend = Literal["auto", "netlink", "proc"]


class SocketTable:
    """Local ports in use, from sock_diag netlink or, failing that, from /proc/net.

    ``backend="auto"`` uses netlink and falls back to /proc per protocol when the kernel
    cannot answer (no diag support compiled in or loaded); ``fallbacks`` says why. One
    netlink socket is opened lazily and reused; it is reopened after any failed exchange so
    that the rest of an abandoned dump never mixes with the next answer. Not thread-safe:
    one owner (the capture loop) asks at a time.
    """

    def __init__(
        self,
        backend: Backend = "auto",
        *,
        proc_dir: str = "/proc/net",
        timeout: float = 1.0,
        exact_filter: bool | None = None,
    ) -> None:
        """``exact_filter``: None probes once whether the kernel knows ``S_EQ`` (4.16+);
        False always sends the ``S_GE``/``S_LE`` pair. ``timeout``: seconds per receive."""
        if backend not in ("auto", "netlink", "proc"):
            raise ValueError(f"unknown backend {backend!r}")
        self._backend = backend
        self._proc_dir = proc_dir
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._seq = 0
        self._buf = bytearray(_RECV_BUFFER)
        self._view = memoryview(self._buf)
        self._exact = exact_filter  # does the kernel know INET_DIAG_BC_S_EQ? (None: probe)
        self.fallbacks: dict[Proto, str] = {}

    def backend_for(self, proto: Proto) -> str:
        """``netlink`` or ``proc``: what answers for ``proto`` now."""
        if self._backend == "proc" or proto in self.fallbacks:
            return "proc"
        return "netlink"

    @property
    def port_filter(self) -> str | None:
        """The bytecode ``port_in_use`` sends: ``S_EQ``, ``S_GE/S_LE``, or None (not probed)."""
        if self._exact is None:
            return None
        return "S_EQ" if self._exact else "S_GE/S_LE"

    def ports_in_use(self, proto: Proto) -> frozenset[int]:
        """TCP: ports with a listener; UDP: ports with a bound socket. Both families."""
        states = STATES[proto]
        rows = self._query(proto, None)
        return ports_from_rows(rows, states)

    def port_in_use(self, proto: Proto, port: int) -> bool:
        """A fresh kernel answer for one port, filtered in the kernel by local port."""
        if not 0 < port <= 0xFFFF:
            raise ValueError(f"port {port} out of range 1-65535")
        states = STATES[proto]
        return any(p == port and states >> s & 1 for s, p in self._query(proto, port))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> SocketTable:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- backends --------------------------------------------------------------------------
    def _query(self, proto: Proto, port: int | None) -> list[Row]:
        if self.backend_for(proto) == "netlink":
            try:
                return self._netlink_rows(proto, port)
            except NetlinkError as exc:
                if self._backend == "netlink" or exc.errno not in _UNSUPPORTED:
                    raise
                self.fallbacks[proto] = str(exc)
        return self._proc_rows(proto)

    def _proc_rows(self, proto: Proto) -> list[Row]:
        rows: list[Row] = []
        for name in PROC_FILES[proto]:
            path = os.path.join(self._proc_dir, name)
            try:
                with open(path, encoding="ascii") as table:
                    text = table.read()
            except FileNotFoundError:
                continue  # tcp6/udp6 are absent when IPv6 is off: no IPv6 sockets then
            except (OSError, UnicodeDecodeError) as exc:
                raise CaptureError(f"cannot read {path}: {exc}") from exc
            rows.extend(parse_proc_net(text))
        return rows

    def _netlink_rows(self, proto: Proto, port: int | None) -> list[Row]:
        rows: list[Row] = []
        states = STATES[proto]
        for family in FAMILIES:
            if port is None:
                seq = self._next_seq()
                self._dump(pack_request(seq, family, proto, states), seq, rows)
            else:
                self._port_dump(family, proto, states, port, rows)
                if any(p == port for _state, p in rows):
                    break  # found in IPv4: no need to ask about IPv6
        return rows

    def _port_dump(self, family: int, proto: int, states: int, port: int, rows: list[Row]) -> None:
        """Dump with a local-port filter; probe once whether the kernel knows S_EQ."""
        if self._exact is not False:
            try:
                self._filtered_dump(family, proto, states, port, exact=True, rows=rows)
            except NetlinkError as exc:
                if exc.errno != errno.EINVAL or self._exact is not None:
                    raise
                self._exact = False
            else:
                self._exact = True
                return
        self._filtered_dump(family, proto, states, port, exact=False, rows=rows)

    def _filtered_dump(
        self, family: int, proto: int, states: int, port: int, *, exact: bool, rows: list[Row]
    ) -> None:
        seq = self._next_seq()
        bytecode = port_bytecode(port, exact=exact)
        self._dump(pack_request(seq, family, proto, states, bytecode), seq, rows)

    def _next_seq(self) -> int:
        self._seq = self._seq % 0xFFFFFFFF + 1
        return self._seq

    def _dump(self, request: bytes, seq: int, rows: list[Row]) -> None:
        """Send one dump request and collect its rows until NLMSG_DONE or an error reply."""
        sock = self._socket()
        try:
            sock.send(request)
            while True:
                size = sock.recv_into(self._buf, 0, socket.MSG_TRUNC)
                if size > len(self._buf):
                    raise CaptureError(f"sock_diag reply of {size} bytes exceeds the buffer")
                if parse_dump(self._view[:size], seq, rows):
                    return
        except NetlinkError:
            raise  # the error reply ended the dump: the socket is clean
        except OSError as exc:
            self.close()
            raise CaptureError(f"sock_diag exchange failed: {exc.strerror or exc}") from exc
        except BaseException:  # a malformed reply, or an interrupt in the middle of a dump
            self.close()
            raise

    def _socket(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        except OSError as exc:
            raise NetlinkError(exc.errno or errno.EAFNOSUPPORT, "socket") from exc
        try:
            sock.bind((0, 0))
            # A kernel-side receive timeout: no Python-level poll() before every recv.
            seconds = int(self._timeout)
            micros = int((self._timeout - seconds) * 1e6)
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", seconds, micros)
            )
        except OSError as exc:
            sock.close()
            raise CaptureError(f"sock_diag socket setup failed: {exc.strerror or exc}") from exc
        self._sock = sock
        return sock


# --- the detector's view ---------------------------------------------------------------------
class PortQuery(Protocol):
    """What ``InUseView`` needs of a socket table (``SocketTable``, or a fake in tests)."""

    def ports_in_use(self, proto: Proto) -> frozenset[int]: ...

    def port_in_use(self, proto: Proto, port: int) -> bool: ...


@dataclass(slots=True)
class InUseStats:
    """Counters of an ``InUseView``, read by the status verb."""

    hits: int = 0  # answered True from the cache
    misses: int = 0  # not in the cache
    rechecks: int = 0  # misses that asked the kernel
    recheck_found: int = 0  # ... and found a socket opened since the last refresh
    recheck_cached: int = 0  # misses answered by the negative cache
    recheck_skipped: int = 0  # misses answered False because the re-check budget was spent
    recheck_errors: int = 0  # re-checks that failed (answered False)
    recheck_seconds: float = 0.0  # time spent in re-checks
    refreshes: int = 0


class InUseView(Container[int]):
    """Ports in use for one protocol, as the detector asks: ``port in view``.

    The cache holds the kernel's answer at the last ``refresh()`` (the caller's timer), the
    ``set_extra`` ports (e.g. DNAT-forwarded ports, fed by another module) and ports that a
    re-check found since. A miss asks the kernel about that port before answering False.

    The re-check is bounded, because a scan is a flood of misses to unused ports:
    - ``negative_ttl`` seconds: a port just re-checked and found free answers False without
      another query; it absorbs repeated probes to one port. The price: a listener opened
      within that window after such a probe is missed until the window ends.
    - ``recheck_share``: re-checks may take at most this share of the time (a token bucket
      counted in seconds of query time, ``recheck_burst`` seconds deep; None: no bound).
      The bound is in time, not in queries, because a query's cost depends on the backend:
      about 24 µs over netlink here, but ~10 ms for TCP from /proc, which walks every
      established socket. Once spent, misses answer False and count in ``recheck_skipped``;
      the price is that a listener opened since the last refresh can be taken for a closed
      port until the next refresh. The defaults (2 %, 5 ms) allow ~800 netlink re-checks
      per second, bursts of ~200.
    A listener closed since the last refresh still counts as in use until the next refresh.
    Both windows are bounded by the refresh interval, which the caller chooses (a full
    netlink refresh costs about two re-checks, so a short interval is cheap).
    """

    def __init__(
        self,
        table: PortQuery,
        proto: Proto,
        *,
        negative_ttl: float = 0.005,
        recheck_share: float | None = 0.02,
        recheck_burst: float = 0.005,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if negative_ttl < 0:
            raise ValueError("negative_ttl must be >= 0")
        if recheck_share is not None and not 0 < recheck_share <= 1:
            raise ValueError("recheck_share must be in (0, 1] (or None for no bound)")
        if recheck_burst <= 0:
            raise ValueError("recheck_burst must be > 0 seconds")
        self._table = table
        self._proto = proto
        self._negative_ttl = negative_ttl
        self._share = recheck_share
        self._burst = recheck_burst
        self._budget = recheck_burst  # seconds of query time left; may go below 0 (a debt)
        self._clock = clock
        self._last = clock()
        self._kernel: frozenset[int] = frozenset()
        self._extra: frozenset[int] = frozenset()
        self._found: set[int] = set()
        self._ports: set[int] = set()
        self._negative: dict[int, float] = {}  # port -> time its "free" answer expires
        self.stats = InUseStats()
        self.last_error: str | None = None

    @property
    def proto(self) -> Proto:
        return self._proto

    @property
    def ports(self) -> frozenset[int]:
        """Every port the view answers True for without a re-check."""
        return frozenset(self._ports)

    def refresh(self) -> frozenset[int]:
        """Re-read the kernel's table (raises ``CaptureError``); returns the kernel's ports."""
        self._kernel = self._table.ports_in_use(self._proto)
        self._found.clear()
        self._negative.clear()
        self._rebuild()
        self.stats.refreshes += 1
        return self._kernel

    def set_extra(self, ports: Iterable[int]) -> None:
        """Ports to treat as in use whatever the kernel says (replaces the previous set)."""
        self._extra = frozenset(ports)
        self._rebuild()

    def __contains__(self, port: object) -> bool:
        if port in self._ports:
            self.stats.hits += 1
            return True
        self.stats.misses += 1
        if not isinstance(port, int) or not 0 < port <= 0xFFFF:
            return False
        return self._recheck(port)

    def _rebuild(self) -> None:
        self._ports = set(self._kernel | self._extra)
        self._ports.update(self._found)

    def _recheck(self, port: int) -> bool:
        stats = self.stats
        now = self._clock()
        expiry = self._negative.get(port)
        if expiry is not None and now < expiry:
            stats.recheck_cached += 1
            return False
        if not self._budget_left(now):
            stats.recheck_skipped += 1
            return False
        stats.rechecks += 1
        try:
            found = self._table.port_in_use(self._proto, port)
        except CaptureError as exc:
            stats.recheck_errors += 1
            self.last_error = str(exc)
            found = False
        spent = self._clock() - now
        stats.recheck_seconds += spent
        self._budget -= spent
        if found:
            stats.recheck_found += 1
            self._found.add(port)
            self._ports.add(port)
        elif self._negative_ttl:
            self._remember_free(port, now)
        return found

    def _budget_left(self, now: float) -> bool:
        if self._share is None:
            return True
        self._budget = min(self._burst, self._budget + (now - self._last) * self._share)
        self._last = now
        return self._budget > 0

    def _remember_free(self, port: int, now: float) -> None:
        negative = self._negative
        if len(negative) >= _NEGATIVE_SWEEP:  # drop expired answers: keeps the dict small
            self._negative = negative = {p: t for p, t in negative.items() if t > now}
        negative[port] = now + self._negative_ttl
