"""Packets the daemon's own nft rules hand over: an NFLOG group read through nfnetlink.

The capture rings never see a TCP segment with ACK (the kernel filter keeps established
traffic in the kernel). The ones that belong to no connection the kernel knows are probes
too (ACK, Window and Maimon scans), and conntrack can tell them: a rule in the daemon's table
(``block/table.py``) logs exactly those, rate-limited in the kernel, to an NFLOG group, and
``NflogReader`` reads them. Each message carries the packet from its network header on.

Wire format (``linux/netfilter/nfnetlink_log.h``): configuration messages
``NFULNL_MSG_CONFIG`` (``NFULA_CFG_CMD`` bind, ``NFULA_CFG_MODE`` copy range,
``NFULA_CFG_QTHRESH`` 1: the kernel otherwise holds packets until 100 wait or its one-second
flush timer fires, so a short scan's events came a second late), then
``NFULNL_MSG_PACKET`` messages with attributes, ``NFULA_PAYLOAD`` the packet. An NFLOG group
belongs to one socket per network namespace: a group already taken (by ulogd, say) is an
error that says so. When the socket's buffer overflows the kernel drops messages and the next
receive fails with ENOBUFS: counted, not fatal.

Needs CAP_NET_ADMIN. Runs in the network namespace of the calling process.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Final

from portsentinel.errors import CaptureError

NETLINK_NETFILTER: Final = 12
NFNL_SUBSYS_ULOG: Final = 4
NFULNL_MSG_PACKET: Final = 0
NFULNL_MSG_CONFIG: Final = 1
NFULA_CFG_CMD: Final = 1
NFULA_CFG_MODE: Final = 2
NFULA_CFG_NLBUFSIZ: Final = 3
NFULA_CFG_QTHRESH: Final = 5
NFULNL_CFG_CMD_BIND: Final = 1
NFULNL_CFG_CMD_UNBIND: Final = 2
NFULNL_COPY_PACKET: Final = 2
NFULA_PAYLOAD: Final = 9
NFULA_PREFIX: Final = 10
NLMSG_ERROR: Final = 2
NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
COPY_RANGE: Final = 128  # enough for IPv6 + TCP headers with options
# Packets the kernel queues before it sends them (its default is 100, with a 1 s flush timer):
# one, so each probe reaches the daemon at once. The nft rule's rate limit bounds the cost.
QUEUE_THRESHOLD: Final = 1
RECEIVE_BUFFER: Final = 1 << 20
PACKET_TYPE: Final = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
_HDR: Final = struct.Struct("=IHHII")  # nlmsghdr
_NFGEN: Final = struct.Struct("=BBH")  # family, version, res_id (big-endian)
_ATTR: Final = struct.Struct("=HH")
_NLA_TYPE_MASK: Final = 0x3FFF

Handler = Callable[[memoryview, bytes], None]
"""Called with the packet from its network header on (valid during the call only) and the
rule's log prefix (``b""`` without one)."""


def _attr(kind: int, payload: bytes) -> bytes:
    size = _ATTR.size + len(payload)
    return _ATTR.pack(size, kind) + payload + b"\0" * (-size % 4)


def config_message(group: int, seq: int, *attrs: bytes) -> bytes:
    """One NFULNL_MSG_CONFIG message for ``group`` carrying ``attrs`` (pure)."""
    head = _NFGEN.pack(socket.AF_UNSPEC, 0, socket.htons(group))
    body = head + b"".join(attrs)
    kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    return _HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def bind_messages(group: int, copy_range: int, first_seq: int) -> list[bytes]:
    """Bind ``group``, ask for ``copy_range`` bytes of each packet, and for each packet to be
    sent as soon as it is logged (``QUEUE_THRESHOLD``) (pure)."""
    return [
        config_message(group, first_seq, _attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND]))),
        config_message(
            group,
            first_seq + 1,
            _attr(NFULA_CFG_MODE, struct.pack(">IBx", copy_range, NFULNL_COPY_PACKET)),
        ),
        config_message(
            group, first_seq + 2, _attr(NFULA_CFG_QTHRESH, struct.pack(">I", QUEUE_THRESHOLD))
        ),
    ]


def payloads(data: memoryview) -> Iterator[tuple[memoryview, bytes]]:
    """(packet, log prefix) of each NFULNL_MSG_PACKET message in one datagram (pure); a
    message cut short ends the walk, one without a payload is skipped."""
    at, end = 0, len(data)
    while at + _HDR.size <= end:
        length, kind, _flags, _seq, _pid = _HDR.unpack_from(data, at)
        if length < _HDR.size or at + length > end:
            return
        if kind == PACKET_TYPE:
            attr, stop = at + _HDR.size + _NFGEN.size, at + length
            payload, prefix = None, b""
            while attr + _ATTR.size <= stop:
                size, attr_kind = _ATTR.unpack_from(data, attr)
                if size < _ATTR.size or attr + size > stop:
                    break
                attr_kind &= _NLA_TYPE_MASK
                if attr_kind == NFULA_PAYLOAD:
                    payload = data[attr + _ATTR.size : attr + size]
                elif attr_kind == NFULA_PREFIX:
                    prefix = bytes(data[attr + _ATTR.size : attr + size]).rstrip(b"\0")
                attr += (size + 3) & ~3
            if payload is not None:
                yield payload, prefix
        at += (length + 3) & ~3


def errors(data: bytes) -> list[tuple[int, int]]:
    """(sequence number, errno) of each NLMSG_ERROR in a datagram; 0 is success (pure)."""
    out, at = [], 0
    while at + _HDR.size <= len(data):
        length, kind, _flags, seq, _pid = _HDR.unpack_from(data, at)
        if length < _HDR.size:
            break
        if kind == NLMSG_ERROR and length >= _HDR.size + 4:
            (code,) = struct.unpack_from("=i", data, at + _HDR.size)
            out.append((seq, -code))
        at += (length + 3) & ~3
    return out


class NflogReader:
    """One NFLOG group, read without blocking: ``read`` in a loop when ``fileno`` is ready."""

    def __init__(self, group: int, copy_range: int = COPY_RANGE) -> None:
        self.group = group
        self.received = 0  # packets handed on
        self.overflows = 0  # times the kernel dropped messages: the socket buffer was full
        self._buffer = bytearray(65536)
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as exc:
            raise CaptureError(f"cannot open an nfnetlink socket: {exc}") from None
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            self._sock.bind((0, 0))
            self._sock.settimeout(1.0)
            self._configure(bind_messages(group, copy_range, 1))
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise

    def _configure(self, messages: list[bytes]) -> None:
        for seq, message in enumerate(messages, start=1):
            try:
                self._sock.send(message)
                answer = self._sock.recv(65536)
            except OSError as exc:
                raise CaptureError(f"NFLOG group {self.group}: {exc}") from None
            for got, code in errors(answer):
                if got == seq and code:
                    taken = " (another program reads it)" if code == errno.EBUSY else ""
                    raise CaptureError(
                        f"cannot read NFLOG group {self.group}: {os.strerror(code)}{taken}"
                    )

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self, handler: Handler, limit: int = 256) -> int:
        """Hand on the packets that wait, at most ``limit`` datagrams' worth; how many."""
        view, handled = memoryview(self._buffer), 0
        recv_into = self._sock.recv_into
        for _ in range(limit):
            try:
                size = recv_into(self._buffer)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overflows += 1
                    continue
                raise CaptureError(f"NFLOG group {self.group}: {exc}") from None
            for packet, prefix in payloads(view[:size]):
                handler(packet, prefix)
                handled += 1
        self.received += handled
        return handled

    def close(self) -> None:
        self._sock.close()
