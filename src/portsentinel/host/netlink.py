"""Netlink sockets, once: what the rtnetlink, ctnetlink and sock_diag clients share.

Every family speaks the same envelope (``netlink_messages.py``: headers, attributes, the end
of an answer, pure) over the same kind of socket; this module is the socket half, written and
tested once for ``addresses``/``routes`` (rtnetlink), ``conntrack`` (ctnetlink) and
``inuse``/``sshpeers`` (sock_diag): ``NetlinkSocket``, the base of the client classes, opens a
socket, runs request/answer and dump exchanges with timeouts, and turns socket errors into
``CaptureError``.

Where the families differ in strictness the difference is chosen by the caller, never lost:
``strict=False`` walks (ctnetlink stops at a length that does not fit instead of failing),
``DumpReply``'s optional port id check, the ``Receive`` mode (rtnetlink believes the kernel
only; sock_diag detects a datagram larger than its buffer) and the bound on unrelated
datagrams of a request exchange (ctnetlink).
"""

from __future__ import annotations

import enum
import errno
import socket
import struct
import sys
from collections.abc import Callable
from types import TracebackType
from typing import ClassVar, Final, Self, TypeVar

from portsentinel.errors import CaptureError
from portsentinel.host.netlink_messages import NetlinkError, NlMsg, split_messages

NETLINK_ROUTE: Final = 0
NETLINK_SOCK_DIAG: Final = 4
NETLINK_NETFILTER: Final = 12
_FAMILY_NAMES: Final[dict[int, str]] = {
    NETLINK_ROUTE: "NETLINK_ROUTE",
    NETLINK_SOCK_DIAG: "NETLINK_SOCK_DIAG",
    NETLINK_NETFILTER: "NETLINK_NETFILTER",
}

KERNEL: Final = (0, 0)  # the kernel's netlink address: port id 0, no multicast group
RECV_SIZE: Final = 65536  # the kernel fills dump datagrams up to 32 KiB
# How many datagrams a request exchange reads before giving up on its answer: stale answers
# are skipped, but a confused conversation must not spin.
MAX_UNRELATED_DATAGRAMS: Final = 16
R = TypeVar("R")


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
    family this kernel lacks (``netlink_messages.UNAVAILABLE``) from a passing failure.
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
