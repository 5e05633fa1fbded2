"""A netlink datagram built once and filled again: the first ban's message (``nfnetlink.
ElementWriter.prepare``) and the never-block question (``SetReader.prepare``) are built at
start, and only the key and the sequence numbers are written in when they are needed."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

_HDR: Final = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_SEQ: Final = struct.Struct("=I")


class Template:
    """A datagram built once by ``make(key, first_seq)`` and filled again with another key and
    first sequence number (its messages take ``first_seq``, ``first_seq + 1``... in order, as
    ``batch`` numbers them). Where the key lies is found by building it twice, with a key of
    zero bytes and one of 0xff bytes: only the key's copies differ."""

    def __init__(self, make: Callable[[bytes, int], bytes], key_size: int) -> None:
        low, high = make(bytes(key_size), 0), make(b"\xff" * key_size, 0)
        differ = [at for at in range(len(low)) if low[at] != high[at]]
        self.keys = differ[::key_size]
        if len(low) != len(high) or differ != [k + i for k in self.keys for i in range(key_size)]:
            raise ValueError("the key does not lie in whole copies in the datagram")
        self.key_size = key_size
        self.data = bytearray(low)
        self.heads: list[int] = []  # where each message's header starts
        at = 0
        while at + _HDR.size <= len(low):
            self.heads.append(at)
            at += (_HDR.unpack_from(low, at)[0] + 3) & ~3

    def fill(self, key: bytes, first_seq: int) -> bytes:
        if len(key) != self.key_size:
            raise ValueError(f"a key of {len(key)} bytes in a template for {self.key_size}")
        data, size = self.data, self.key_size
        for at in self.keys:
            data[at : at + size] = key
        for number, at in enumerate(self.heads):
            _SEQ.pack_into(data, at + 8, (first_seq + number) & 0xFFFFFFFF)
        return bytes(data)
