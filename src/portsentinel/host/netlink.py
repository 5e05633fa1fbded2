"""The netlink envelope, once: what the rtnetlink, ctnetlink and sock_diag clients share.

Why one module: every netlink family wraps its own records in the same envelope
(``linux/netlink.h``): a 16-byte message header, 4-byte aligned type-length-value attributes,
NLMSG_ERROR and NLMSG_DONE to end an answer, sequence numbers and port ids to tell our answer
from a stale or foreign one. Reading that envelope is where malformed input is caught, so it
is written and tested here once, for ``hostaddr``/``routes`` (rtnetlink), ``conntrack``
(ctnetlink) and ``inuse``/``sshpeers`` (sock_diag).

Two halves:

- pure functions and ``DumpReply``: bytes in, values out, never a read past the buffer; a
  malformed message raises ``CaptureError``, a refusal by the kernel ``NetlinkError``;
- ``NetlinkSocket``, the base of the client classes: opening a socket, request/answer and dump
  exchanges, timeouts, and turning socket errors into ``CaptureError``.

Where the families differ in strictness the difference is chosen by the caller, never lost:
``strict=False`` walks (ctnetlink stops at a length that does not fit instead of failing),
``DumpReply``'s optional port id check, the ``Receive`` mode (rtnetlink believes the kernel
only; sock_diag detects a datagram larger than its buffer) and the bound on unrelated
datagrams of a request exchange (ctnetlink).
"""

from __future__ import annotations

import enum
import errno
import os
import socket
import struct
import sys
from collections.abc import Callable
from types import TracebackType
from typing import ClassVar, Final, Generic, NamedTuple, Self, TypeVar

from portsentinel.errors import CaptureError

NETLINK_ROUTE: Final = 0
NETLINK_SOCK_DIAG: Final = 4
NETLINK_NETFILTER: Final = 12
_FAMILY_NAMES: Final[dict[int, str]] = {
    NETLINK_ROUTE: "NETLINK_ROUTE",
    NETLINK_SOCK_DIAG: "NETLINK_SOCK_DIAG",
    NETLINK_NETFILTER: "NETLINK_NETFILTER",
}

NLMSGHDR: Final = struct.Struct("=IHHII")  # length, type, flags, sequence, sender port id
NLATTR: Final = struct.Struct("=HH")  # length, type
NLERR: Final = struct.Struct("=i")  # the (negative) errno opening NLMSG_ERROR and NLMSG_DONE
NLMSG_NOOP: Final = 1
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLMSG_OVERRUN: Final = 4
NLM_F_REQUEST: Final = 0x1
NLM_F_MULTI: Final = 0x2
NLM_F_DUMP_INTR: Final = 0x10
NLM_F_DUMP: Final = 0x300
# The two top bits of an attribute type are flags (nested, network byte order).
NLA_F_NESTED: Final = 0x8000
NLA_TYPE_MASK: Final = 0x3FFF

KERNEL: Final = (0, 0)  # the kernel's netlink address: port id 0, no multicast group
RECV_SIZE: Final = 65536  # the kernel fills dump datagrams up to 32 KiB
# How many datagrams a request exchange reads before giving up on its answer: stale answers
# are skipped, but a confused conversation must not spin.
MAX_UNRELATED_DATAGRAMS: Final = 16
# errno values that say the kernel (or a policy) cannot answer a family at all, rather than
# that one request failed: no such family or diag module, or no permission.
UNAVAILABLE: Final = frozenset(
    {
        errno.ENOENT,
        errno.EOPNOTSUPP,
        errno.EAFNOSUPPORT,
        errno.EPROTONOSUPPORT,
        errno.EPERM,
        errno.EACCES,
    }
)

T = TypeVar("T")
R = TypeVar("R")


class NetlinkError(CaptureError):
    """The kernel refused: ``errno`` is its error number (also for a socket it cannot open)."""

    def __init__(self, err: int, what: str) -> None:
        self.errno = err
        super().__init__(f"{what}: {os.strerror(err)} (errno {err})")


class NlMsg(NamedTuple):
    """One netlink message: header fields and a view of the payload after the header."""

    kind: int
    flags: int
    seq: int
    pid: int
    payload: memoryview


def align(length: int) -> int:
    """``length`` rounded up to the 4-byte boundary messages and attributes start on."""
    return (length + 3) & ~3


# --- building -------------------------------------------------------------------------------


def pack_message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    """A message to the kernel: header (port id 0, the kernel fills in ours) and ``body``."""
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def pack_attr(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to four bytes."""
    length = NLATTR.size + len(payload)
    return NLATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def pack_nested(kind: int, *children: bytes) -> bytes:
    """An attribute holding other attributes, flagged NLA_F_NESTED."""
    return pack_attr(kind | NLA_F_NESTED, b"".join(children))


# --- parsing --------------------------------------------------------------------------------


def _misfit(view: memoryview, offset: int, what: str) -> CaptureError:
    """The error for the message at ``offset``, whose header or length does not fit.

    The walks check the header inline (they run once per message on the hot paths) and ask
    this for the words only.
    """
    left = len(view) - offset
    if left < NLMSGHDR.size:
        return CaptureError(f"{what}: {left} stray bytes at offset {offset}")
    length = NLMSGHDR.unpack_from(view, offset)[0]
    return CaptureError(f"{what}: bad message length {length} at offset {offset}: does not fit")


def split_messages(
    data: bytes | memoryview, what: str = "netlink", *, strict: bool = True
) -> list[NlMsg]:
    """Split one datagram into its messages.

    A length that does not fit raises ``CaptureError``; with ``strict=False`` it ends the list
    instead, keeping the messages before it.
    """
    view = memoryview(data)
    end = len(view)
    messages: list[NlMsg] = []
    offset = 0
    while offset < end:
        if end - offset >= NLMSGHDR.size:
            length, kind, flags, seq, pid = NLMSGHDR.unpack_from(view, offset)
            if NLMSGHDR.size <= length <= end - offset:
                payload = view[offset + NLMSGHDR.size : offset + length]
                messages.append(NlMsg(kind, flags, seq, pid, payload))
                offset += (length + 3) & ~3  # align(), inline: once per message
                continue
        if strict:
            raise _misfit(view, offset, what)
        break
    return messages


def parse_attrs(
    data: bytes | memoryview, what: str = "netlink", *, strict: bool = True
) -> dict[int, memoryview]:
    """Map attribute type (flag bits cleared) to payload; a later duplicate wins.

    Strict: a truncated attribute is an error rather than the end of the list, because
    stopping early could silently drop an attribute that changes the meaning of the others
    (rtnetlink's IFA_LOCAL). ``strict=False`` stops at it and keeps what came before.
    """
    view = memoryview(data)
    found: dict[int, memoryview] = {}
    offset = 0
    while offset < len(view):
        left = len(view) - offset
        if left < NLATTR.size:
            if strict:
                raise CaptureError(f"{what}: truncated attribute header")
            break
        length, kind = NLATTR.unpack_from(view, offset)
        if not NLATTR.size <= length <= left:
            if strict:
                raise CaptureError(f"{what}: attribute {kind} of length {length} does not fit")
            break
        found[kind & NLA_TYPE_MASK] = view[offset + NLATTR.size : offset + length]
        offset += (length + 3) & ~3  # align(), inline: once per attribute
    return found


def error_code(payload: bytes | memoryview, what: str = "netlink") -> int:
    """The positive errno opening an NLMSG_ERROR (or NLMSG_DONE) payload; 0 is success."""
    if len(payload) < NLERR.size:
        raise CaptureError(f"{what}: error message without an error code")
    return -int(NLERR.unpack_from(payload)[0])


def refusal(code: int, what: str) -> NetlinkError:
    """The error for a request the kernel answered with errno ``code``."""
    hint = " (permission denied)" if code in (errno.EPERM, errno.EACCES) else ""
    return NetlinkError(code, f"{what} request refused{hint}")


class DumpReply(Generic[T]):
    """Collects the answer to one dump request, datagram by datagram.

    Pure (fed bytes, no socket) so that every branch is testable. A message whose sequence
    number is not ours, or whose port id is not ``portid`` (None: not checked), is a stale
    answer to an earlier request and is skipped, as is anything after the end of the dump.
    Each ``reply_type`` message is decoded by ``parse`` (None: nothing to keep) into
    ``items``, which may be a list the caller already holds.
    """

    __slots__ = (
        "_parse",
        "done",
        "interrupted",
        "items",
        "portid",
        "reply_type",
        "seq",
        "skipped",
        "what",
    )

    def __init__(
        self,
        seq: int,
        portid: int | None,
        reply_type: int,
        parse: Callable[[memoryview], T | None],
        *,
        what: str = "netlink",
        items: list[T] | None = None,
    ) -> None:
        self.seq = seq
        self.portid = portid
        self.reply_type = reply_type
        self.what = what
        self._parse = parse
        self.items: list[T] = [] if items is None else items
        self.done = False
        self.interrupted = False
        """The kernel flagged the dump inconsistent (the table changed while it was read)."""
        self.skipped = 0

    def feed(self, datagram: bytes | memoryview) -> bool:
        """Take one datagram; True once the dump is complete."""
        # On sock_diag's hot path: the common case is inline, the rest in ``_control``.
        view = memoryview(datagram)
        end = len(view)
        offset = 0
        while offset < end:
            if end - offset < NLMSGHDR.size:
                raise _misfit(view, offset, self.what)
            length, kind, flags, seq, pid = NLMSGHDR.unpack_from(view, offset)
            if not NLMSGHDR.size <= length <= end - offset:
                raise _misfit(view, offset, self.what)
            if self.done or seq != self.seq or (self.portid is not None and pid != self.portid):
                self.skipped += 1
            else:
                if flags & NLM_F_DUMP_INTR:
                    self.interrupted = True
                payload = view[offset + NLMSGHDR.size : offset + length]
                if kind == self.reply_type:
                    item = self._parse(payload)
                    if item is not None:
                        self.items.append(item)
                    # A reply without NLM_F_MULTI is a whole answer by itself.
                    self.done = not flags & NLM_F_MULTI
                elif kind == NLMSG_DONE and (
                    # Since Linux 4.x the payload carries the dump's final status.
                    length < NLMSGHDR.size + NLERR.size or not NLERR.unpack_from(payload)[0]
                ):
                    self.done = True
                else:
                    self._control(kind, payload)
            offset += (length + 3) & ~3  # align(), inline: once per message
        return self.done

    def _control(self, kind: int, payload: memoryview) -> None:
        """The rarer messages: a failed NLMSG_DONE, NLMSG_ERROR, overrun, anything else."""
        if kind == NLMSG_DONE:  # ``feed`` took the successful ones
            raise refusal(error_code(payload, self.what), self.what)
        if kind == NLMSG_ERROR:
            code = error_code(payload, self.what)
            if code != 0:
                raise refusal(code, self.what)
            self.done = True  # an acknowledgement
        elif kind == NLMSG_OVERRUN:
            raise CaptureError(f"{self.what}: the kernel reported a data overrun during a dump")
        else:
            self.skipped += 1  # NLMSG_NOOP, or a type we did not ask for


# --- sockets --------------------------------------------------------------------------------


class Receive(enum.Enum):
    """How a client reads its datagrams (and sends its requests).

    ``send`` and ``sendto(KERNEL)`` are the same on a netlink socket; each mode keeps the
    calls its clients have always made, which their unit tests' stand-in kernels implement.
    """

    FROM_KERNEL = "sendto + recvmsg: datagrams from any other sender are dropped"
    """For rtnetlink: any local process may send unicast netlink to our port id."""
    INTO_BUFFER = "send + recv_into one reused buffer; MSG_TRUNC reports the full size"
    """For sock_diag's hot path: no allocation per datagram, no silent truncation."""
    COPY = "sendto + recv of a new bytes object"
    """For ctnetlink's point lookups, whose answers are a few hundred bytes."""


# Looking up an enum member costs ~50 ns in CPython 3.11; the exchanges compare with these.
_FROM_KERNEL: Final = Receive.FROM_KERNEL
_INTO_BUFFER: Final = Receive.INTO_BUFFER


def open_socket(protocol: int, what: str, flags: int = 0) -> socket.socket:
    """A new netlink socket of family ``protocol`` (``flags``: SOCK_NONBLOCK, SOCK_CLOEXEC).

    ``NetlinkError`` with the errno when the kernel cannot open one: the errno tells a
    family this kernel lacks (``UNAVAILABLE``) from a passing failure.
    """
    try:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | flags, protocol)
    except OSError as exc:
        name = _FAMILY_NAMES.get(protocol, f"netlink family {protocol}")
        raise NetlinkError(
            exc.errno or errno.EAFNOSUPPORT, f"{what} unavailable: cannot open a {name} socket"
        ) from exc


def _too_large(what: str, limit: int, size: int | None = None) -> CaptureError:
    actual = "" if size is None else f" ({size} bytes)"
    return CaptureError(f"{what}: a datagram larger than {limit} bytes exceeds the buffer{actual}")


class NetlinkSocket:
    """One netlink socket, and the exchanges of requests and answers with the kernel over it.

    The client classes derive from it and name their family in the class constants. The
    socket is opened on first use (a client that should fail early opens it in its
    constructor), and closed after an exchange that failed half-way, so that the rest of an
    abandoned answer never mixes with the next one; a refusal by the kernel ends its answer
    cleanly and keeps the socket. Not thread-safe.
    """

    PROTOCOL: ClassVar[int] = NETLINK_ROUTE
    WHAT: ClassVar[str] = "netlink"
    """The family's name in error messages: ``rtnetlink``, ``ctnetlink``, ``sock_diag``."""
    RECEIVE: ClassVar[Receive] = Receive.FROM_KERNEL
    GROUPS: ClassVar[int] = 0
    """The multicast groups the socket is bound to (0: answers to our own requests only)."""

    _sock: socket.socket | None
    _seq: int

    def __init__(
        self,
        *,
        timeout: float | None = None,
        kernel_timeout: bool = True,
        rcvbuf: int | None = None,
    ) -> None:
        """``timeout``: seconds per receive (None: wait for ever, or non-blocking when the
        socket was opened so). ``kernel_timeout``: enforce it with SO_RCVTIMEO in the kernel;
        False: with ``settimeout``, which makes Python poll() before every send and receive
        (two more system calls per exchange). ``rcvbuf``: SO_RCVBUF, for sockets that must
        absorb bursts of notifications."""
        self._sock = None
        self._seq = 0
        self._timeout = timeout
        self._kernel_timeout = kernel_timeout
        self._rcvbuf = rcvbuf
        self._buf = bytearray(RECV_SIZE if self.RECEIVE is _INTO_BUFFER else 0)
        self._view = memoryview(self._buf)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def fileno(self) -> int:
        return self._socket().fileno()

    # -- opening -------------------------------------------------------------------------
    def _socket(self) -> socket.socket:
        """The open socket; opened and set up now if there is none."""
        sock = self._sock
        if sock is None:
            sock = self._new_socket()
            try:
                self._setup(sock)
            except OSError as exc:
                sock.close()
                raise self._setup_error(exc) from exc
            self._sock = sock
        return sock

    def _new_socket(self) -> socket.socket:
        """A fresh socket of the class's family; a client may take its sockets elsewhere."""
        return open_socket(self.PROTOCOL, self.WHAT)

    def _setup(self, sock: socket.socket) -> None:
        if self._rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)
        sock.bind((0, self.GROUPS))
        if self._timeout is None:
            return
        if self._kernel_timeout:
            seconds = int(self._timeout)
            micros = int((self._timeout - seconds) * 1e6)
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", seconds, micros)
            )
        else:
            sock.settimeout(self._timeout)

    def _setup_error(self, exc: OSError) -> CaptureError:
        name = _FAMILY_NAMES.get(self.PROTOCOL, "netlink")
        return CaptureError(f"{self.WHAT}: cannot set up a {name} socket ({exc.strerror or exc})")

    def _next_seq(self) -> int:
        """A new sequence number, never 0, wrapping after 2**32 - 1 requests."""
        self._seq = self._seq % 0xFFFFFFFF + 1
        return self._seq

    # -- exchanges -----------------------------------------------------------------------
    def _receive(self, sock: socket.socket) -> bytes | None:
        """One datagram of a FROM_KERNEL or COPY socket (None: dropped, not from the kernel);
        ``CaptureError`` if truncated. INTO_BUFFER sockets are read in ``_exchange``."""
        if self.RECEIVE is _FROM_KERNEL:
            data, _ancillary, flags, sender = sock.recvmsg(RECV_SIZE)
            if flags & socket.MSG_TRUNC:
                raise _too_large(self.WHAT, RECV_SIZE)
            return data if sender[0] == 0 else None
        return sock.recv(RECV_SIZE)

    def _request_exchange(
        self,
        request: bytes,
        seq: int,
        *,
        strict: bool = True,
        limit: int = MAX_UNRELATED_DATAGRAMS,
    ) -> NlMsg:
        """Send one request; return the first message carrying ``seq``, whatever its type.

        Messages of other sequence numbers are skipped; after ``limit`` datagrams without
        ours the exchange fails. ``strict``: as in ``split_messages``.
        """

        def ours(data: bytes | memoryview) -> NlMsg | None:
            for msg in split_messages(data, self.WHAT, strict=strict):
                if msg.seq == seq:
                    return msg
            return None

        answer = self._exchange(request, ours, limit)
        assert answer is not None  # _exchange returns only a true answer
        return answer

    def _exchange(
        self,
        request: bytes,
        take: Callable[[bytes | memoryview], R],
        limit: int = sys.maxsize,
    ) -> R:
        """Send ``request``, then hand each datagram to ``take`` until it returns an answer
        (anything true); after ``limit`` datagrams without one give up. A dump passes its
        ``DumpReply.feed``.

        Socket failures become ``CaptureError`` and, like a malformed answer or an interrupt,
        close the socket; a ``NetlinkError`` (the kernel's refusal) passes as it is. An
        INTO_BUFFER datagram is a view of the reused buffer: valid until the next receive.
        """
        sock = self._socket()
        buffered = self.RECEIVE is _INTO_BUFFER
        try:
            if buffered:
                sock.send(request)
            else:
                sock.sendto(request, KERNEL)
            for _ in range(limit):
                if buffered:  # read here, not in ``_receive``: sock_diag's hot path
                    size = sock.recv_into(self._buf, 0, socket.MSG_TRUNC)
                    if size > len(self._buf):
                        raise _too_large(self.WHAT, len(self._buf), size)
                    data: bytes | memoryview | None = self._view[:size]
                else:
                    data = self._receive(sock)
                if data is not None and (answer := take(data)):
                    return answer
        except NetlinkError:
            raise  # the refusal ended the answer: the socket is clean
        except (TimeoutError, BlockingIOError) as exc:  # BlockingIOError: SO_RCVTIMEO expired
            self.close()
            raise CaptureError(
                f"{self.WHAT} exchange failed: timed out (the kernel did not answer in time)"
            ) from exc
        except OSError as exc:
            self.close()
            raise CaptureError(
                f"{self.WHAT} exchange failed: the request failed ({exc.strerror or exc})"
            ) from exc
        except BaseException:  # a malformed answer, or an interrupt in the middle of one
            self.close()
            raise
        self.close()
        raise CaptureError(f"{self.WHAT}: no answer to our request among the messages received")
