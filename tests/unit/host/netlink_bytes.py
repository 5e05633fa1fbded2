"""A tiny netlink encoder of the tests' own, independent of the package's: messages,
attributes, the ends of an answer, and the 32-bit records the tests' dumps ask for."""

from __future__ import annotations

import errno
import struct

PORTID = 4242
REPLY = 20  # the reply type the dumps of the tests ask for


def nlmsg(kind: int, payload: bytes, *, seq: int = 1, flags: int = 2, pid: int = PORTID) -> bytes:
    """One message, padded to four bytes; NLM_F_MULTI by default as in a dump."""
    length = 16 + len(payload)
    return struct.pack("=IHHII", length, kind, flags, seq, pid) + payload + b"\0" * (-length % 4)


def nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def done(seq: int = 1, code: int = 0) -> bytes:
    return nlmsg(3, struct.pack("=i", -code), seq=seq)


def error(seq: int = 1, code: int = errno.EPERM) -> bytes:
    return nlmsg(2, struct.pack("=i", -code) + b"\0" * 16, seq=seq, flags=0)


def record(value: int, *, seq: int = 1, flags: int = 2, pid: int = PORTID) -> bytes:
    return nlmsg(REPLY, struct.pack("=I", value), seq=seq, flags=flags, pid=pid)


def as_int(payload: memoryview) -> int | None:
    """The test's record parser: a 32-bit value; 0 means "nothing to keep"."""
    value: int = struct.unpack("=I", payload)[0]
    return value or None
