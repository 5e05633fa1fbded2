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
import math
import os
import socket
import struct
import time
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar, Final, Literal, Protocol, TypeVar

from portsentinel.errors import CaptureError
from portsentinel.host import netlink, netlink_messages
from portsentinel.host.netlink import NetlinkSocket, Receive
from portsentinel.host.netlink_messages import DumpReply, pack_attr, pack_message
from portsentinel.model import Proto

# --- sock_diag constants (linux/sock_diag.h, inet_diag.h; the envelope: netlink_messages.py)
NETLINK_SOCK_DIAG: Final = netlink.NETLINK_SOCK_DIAG
SOCK_DIAG_BY_FAMILY: Final = 20
NLMSG_ERROR: Final = netlink_messages.NLMSG_ERROR
NLMSG_DONE: Final = netlink_messages.NLMSG_DONE
NLMSG_OVERRUN: Final = netlink_messages.NLMSG_OVERRUN
NLM_F_REQUEST: Final = netlink_messages.NLM_F_REQUEST
NLM_F_DUMP: Final = netlink_messages.NLM_F_DUMP
INET_DIAG_REQ_BYTECODE: Final = 1
INET_DIAG_BC_S_GE: Final = 2
INET_DIAG_BC_S_LE: Final = 3
INET_DIAG_BC_S_EQ: Final = 11  # Linux 4.16+; older kernels answer EINVAL
TCP_LISTEN: Final = 10
ALL_STATES: Final = 0xFFFFFFFF

NLMSGHDR: Final = netlink_messages.NLMSGHDR
REQ_V2: Final = struct.Struct("=BBBxI48x")  # family, protocol, ext, pad, states, zero sockid
NLATTR: Final = netlink_messages.NLATTR
BC_OP: Final = struct.Struct("=BBH")  # code, yes, no (a port operand sits in ``no``)
NLERR: Final = netlink_messages.NLERR
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
_WHAT: Final = "sock_diag"

# The negative cache drops its expired entries when it reaches this size. Live entries are
# the re-checks of the last ``negative_ttl`` seconds: about 200 with the defaults.
_NEGATIVE_SWEEP: Final = 1024

Row = tuple[int, int]
"""One socket: (TCP state number, local port)."""
T = TypeVar("T")

NetlinkError = netlink_messages.NetlinkError
"""The kernel refused a sock_diag request (or has no sock_diag); ``errno`` is its number."""


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
        body += pack_attr(INET_DIAG_REQ_BYTECODE, bytecode)
    return pack_message(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


def diag_reply(seq: int, parse: Callable[[memoryview], T | None], items: list[T]) -> DumpReply[T]:
    """The answer to one sock_diag dump, each socket record decoded by ``parse`` into
    ``items``. Matched by sequence number alone, as sock_diag answers have always been here."""
    return DumpReply(seq, None, SOCK_DIAG_BY_FAMILY, parse, what=_WHAT, items=items)


def short_record(payload: memoryview) -> CaptureError:
    """The error for a socket record shorter than struct inet_diag_msg."""
    return CaptureError(f"{_WHAT} reply: short socket record ({len(payload)} bytes)")


def _row(payload: memoryview) -> Row:
    if len(payload) < DIAG_MSG_LEN:
        raise short_record(payload)
    _family, state, port = DIAG_MSG_HEAD.unpack_from(payload)
    return state, port


def parse_dump(data: bytes | memoryview, seq: int, rows: list[Row]) -> bool:
    """Append the (state, port) rows of one received datagram; True once the dump is done.

    Messages of another sequence number (the tail of an earlier, abandoned dump) are skipped.
    Raises ``NetlinkError`` for an error reply, ``CaptureError`` for a malformed datagram.
    """
    return diag_reply(seq, _row, rows).feed(data)


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


def _holds(rows: list[Row], port: int, states: int) -> bool:
    """True when a row has ``port`` in one of ``states``. A loop, not ``any()`` over a
    generator: on ``port_in_use``'s path that is 0.2 µs less per call, twice."""
    for state, row_port in rows:  # noqa: SIM110 - see the docstring
        if row_port == port and states >> state & 1:
            return True
    return False


# --- the kernel's socket table ---------------------------------------------------------------
Backend = Literal["auto", "netlink", "proc"]


class SocketTable(NetlinkSocket):
    """Local ports in use, from sock_diag netlink or, failing that, from /proc/net.

    ``backend="auto"`` uses netlink and falls back to /proc per protocol when the kernel
    cannot answer (no diag support compiled in or loaded); ``fallbacks`` says why. One
    netlink socket is opened lazily and reused; it is reopened after any failed exchange so
    that the rest of an abandoned dump never mixes with the next answer. Not thread-safe:
    one owner (the capture loop) asks at a time.
    """

    PROTOCOL: ClassVar[int] = NETLINK_SOCK_DIAG
    WHAT: ClassVar[str] = _WHAT
    RECEIVE: ClassVar[Receive] = Receive.INTO_BUFFER

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
        super().__init__(timeout=timeout)
        self._backend = backend
        self._proc_dir = proc_dir
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
        return _holds(self._query(proto, port), port, STATES[proto])

    # -- backends --------------------------------------------------------------------------
    def _query(self, proto: Proto, port: int | None, states: int | None = None) -> list[Row]:
        if self.backend_for(proto) == "netlink":
            try:
                return self._netlink_rows(proto, port, states)
            except NetlinkError as exc:
                if self._backend == "netlink" or exc.errno not in netlink_messages.UNAVAILABLE:
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

    def _netlink_rows(self, proto: Proto, port: int | None, states: int | None = None) -> list[Row]:
        rows: list[Row] = []
        states = STATES[proto] if states is None else states
        for family in FAMILIES:
            if port is None:
                self._dump_rows(family, proto, states, b"", rows)
            else:
                self._port_dump(family, proto, states, port, rows)
                if _holds(rows, port, ALL_STATES):
                    break  # found in IPv4: no need to ask about IPv6
        return rows

    def _port_dump(self, family: int, proto: int, states: int, port: int, rows: list[Row]) -> None:
        """Dump with a local-port filter; probe once whether the kernel knows S_EQ."""
        if self._exact is not False:
            try:
                self._dump_rows(family, proto, states, port_bytecode(port, exact=True), rows)
            except NetlinkError as exc:
                if exc.errno != errno.EINVAL or self._exact is not None:
                    raise
                self._exact = False
            else:
                self._exact = True
                return
        self._dump_rows(family, proto, states, port_bytecode(port, exact=False), rows)

    def _dump_rows(
        self, family: int, proto: int, states: int, bytecode: bytes, rows: list[Row]
    ) -> None:
        seq = self._next_seq()
        request = pack_request(seq, family, proto, states, bytecode)
        self._exchange(request, diag_reply(seq, _row, rows).feed)


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
        self._broke_until = -math.inf
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

    @property
    def cached(self) -> set[int]:
        """The ports known in use right now, without asking the kernel: the same set object
        for the view's life (updated in place), so a caller may keep it and test membership
        at set speed, then ``recheck`` a miss that matters. Read only."""
        return self._ports

    def __contains__(self, port: object) -> bool:
        if port in self._ports:
            self.stats.hits += 1
            return True
        return self.recheck(port)

    def recheck(self, port: object) -> bool:
        """A port not in ``cached``: ask the kernel (within the budget, with the short cache of
        "free" answers); True if it is in use after all."""
        stats = self.stats
        stats.misses += 1
        if port.__class__ is not int or not 0 < port <= 0xFFFF:
            return False
        # The answers that ask nothing, written out (a scan's every probe comes here): a
        # "free" answer still fresh, or the budget spent.
        now = self._clock()
        expiry = self._negative.get(port)
        if expiry is not None and now < expiry:
            stats.recheck_cached += 1
            return False
        if now < self._broke_until:  # the budget is spent: no need to refill it yet
            stats.recheck_skipped += 1
            return False
        return self._recheck(port, now)

    def _rebuild(self) -> None:
        ports = self._ports
        ports.clear()
        ports |= self._kernel
        ports |= self._extra
        ports |= self._found

    def _recheck(self, port: int, now: float) -> bool:
        """``recheck`` past its cache and the spent budget: a query, if the budget allows."""
        stats = self.stats
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
        share = self._share
        if share is None:
            return True
        budget = self._budget = min(self._burst, self._budget + (now - self._last) * share)
        self._last = now
        if budget > 0:
            return True
        # Refilled at ``share`` seconds per second: positive again only after this.
        self._broke_until = now - budget / share
        return False

    def _remember_free(self, port: int, now: float) -> None:
        negative = self._negative
        if len(negative) >= _NEGATIVE_SWEEP:  # drop expired answers: keeps the dict small
            self._negative = negative = {p: t for p, t in negative.items() if t > now}
        negative[port] = now + self._negative_ttl
