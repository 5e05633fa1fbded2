"""The netlink envelope's bytes: message and attribute layout, building and parsing. Pure.

Every netlink family wraps its own records in the same envelope (``linux/netlink.h``): a
16-byte message header, 4-byte aligned type-length-value attributes, NLMSG_ERROR and
NLMSG_DONE to end an answer, sequence numbers and port ids to tell our answer from a stale or
foreign one. Reading it is where malformed input is caught: bytes in, values out, never a
read past the buffer; a malformed message raises ``CaptureError``, a refusal by the kernel
``NetlinkError``. ``DumpReply`` collects one dump's answer, fed datagram by datagram, so that
every branch is tested without a socket. The sockets that carry it are ``netlink.py``'s.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable
from typing import Final, Generic, NamedTuple, TypeVar

from portsentinel.errors import CaptureError

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
