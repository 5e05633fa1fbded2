"""Set elements straight to the kernel: one nfnetlink batch, no parser, no cache, no process.

A first ban must reach the kernel while the scan is still in its first milliseconds. nft (the
program or libnftables) parses a script and reads the ruleset into its cache before it sends
anything (0.1-0.5 ms, more as the sets grow); the kernel itself needs only a
``NFT_MSG_NEWSETELEM`` message. ``ElementWriter`` builds that message for the daemon's own
hash sets (``ban4``/``ban6``: no interval flag; a set with intervals needs start and end
elements, which stay with nft) and waits for the kernel's acknowledgement, so an element is in
its set when ``add`` returns (about 20 us). Adding an element that is already there succeeds,
as ``nft add element`` does; older kernels then keep its timeout, newer ones (6.18 here) take
the new one, so callers send the timeout they mean.

Wire format (``linux/netfilter/nf_tables.h``, ``nfnetlink.h``)::

    NFNL_MSG_BATCH_BEGIN   nfgenmsg{AF_UNSPEC, v0, res_id=NFNL_SUBSYS_NFTABLES}
    NFT_MSG_NEWSETELEM     nfgenmsg{NFPROTO_INET}  NLM_F_REQUEST|NLM_F_CREATE|NLM_F_ACK
        NFTA_SET_ELEM_LIST_TABLE "portsentinel", NFTA_SET_ELEM_LIST_SET "ban4",
        NFTA_SET_ELEM_LIST_ELEMENTS { NFTA_LIST_ELEM { NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE
        addr }, NFTA_SET_ELEM_TIMEOUT be64 ms } ... }
    NFNL_MSG_BATCH_END

``SetReader`` asks whether one key is in a set (``NFT_MSG_GETSETELEM``, no dump: a hash
lookup in the kernel, ~15 us) and, when the kernel says "no such element", whether the set is
there at all (``NFT_MSG_GETSET``): both answers are ENOENT. A set seen in the last
``SET_SEEN_FOR`` seconds (``touch`` asks, off the ban path) is taken to be there still, which
saves that second question on the path of a first ban.

The socket belongs to the network namespace the process is in when it is opened.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from portsentinel.block.nltemplate import Template
from portsentinel.errors import BackendError

NETLINK_NETFILTER: Final = 12
NFNL_SUBSYS_NFTABLES: Final = 10
NFNL_MSG_BATCH_BEGIN: Final = 0x10
NFNL_MSG_BATCH_END: Final = 0x11
NFT_MSG_GETSET: Final = 10
NFT_MSG_NEWSETELEM: Final = 12
NFT_MSG_DELSETELEM: Final = 14
NFT_MSG_GETSETELEM: Final = 13
NFTA_SET_TABLE: Final = 1
NFTA_SET_NAME: Final = 2
NFPROTO_INET: Final = 1
NFPROTO_NETDEV: Final = 5
NLMSG_ERROR: Final = 2
NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
NLM_F_CREATE: Final = 0x400
NLA_F_NESTED: Final = 0x8000

NFTA_SET_ELEM_LIST_TABLE: Final = 1
NFTA_SET_ELEM_LIST_SET: Final = 2
NFTA_SET_ELEM_LIST_ELEMENTS: Final = 3
NFTA_LIST_ELEM: Final = 1
NFTA_SET_ELEM_KEY: Final = 1
NFTA_SET_ELEM_TIMEOUT: Final = 4
NFTA_DATA_VALUE: Final = 1

# Elements per message, and per batch: a batch is one datagram, which must fit the socket's
# send buffer (~208 KiB by default; an IPv6 element takes ~40 bytes).
CHUNK: Final = 1024
BATCH: Final = 4096
ACK_TIMEOUT: Final = 1.0  # the kernel answers a batch at once; this only bounds a wedged socket
SET_SEEN_FOR: Final = 12.0  # a little over two of the never-block set's refreshes (5 s)

_HDR: Final = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_NFGEN: Final = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id (big-endian)
_ATTR: Final = struct.Struct("=HH")
_SEQ: Final = struct.Struct("=I")

Element = tuple[bytes, int | None]  # packed address, timeout in ms (None: no timeout)
_MAIN, _BOTH, _COPY = 0, 1, 2  # which tables a transaction writes: the table, both, the mirror


def _attr(kind: int, payload: bytes) -> bytes:
    size = _ATTR.size + len(payload)
    return _ATTR.pack(size, kind) + payload + b"\0" * (-size % 4)


def _message(
    kind: int, flags: int, seq: int, body: bytes, *, family: int = 0, res_id: int = 0
) -> bytes:
    head = _NFGEN.pack(family, 0, socket.htons(res_id))
    return _HDR.pack(_HDR.size + len(head) + len(body), kind, flags, seq, 0) + head + body


def element_message(  # noqa: PLR0917 - the message's parts, in its order
    table: str,
    set_name: str,
    elements: Sequence[Element],
    seq: int,
    family: int = NFPROTO_INET,
    kind: int = NFT_MSG_NEWSETELEM,
) -> bytes:
    """One NFT_MSG_NEWSETELEM message adding ``elements`` to ``table``'s ``set_name`` (or,
    with ``kind`` NFT_MSG_DELSETELEM, deleting them: their timeouts are not sent) (pure)."""
    # An element is its attributes' headers, its key, and its timeout attribute: the parts
    # around the key are the same for every key length and timeout, so they are made once
    # per message, not per element (thousands of them in a burst).
    timed = kind == NFT_MSG_NEWSETELEM
    around: dict[tuple[int, int | None], tuple[bytes, bytes]] = {}
    items: list[bytes] = []
    for key, timeout_ms in elements:
        shape = (len(key), timeout_ms if timed else None)
        parts = around.get(shape)
        if parts is None:
            parts = around[shape] = _around(*shape)
        items += (parts[0], key, parts[1])
    body = (
        _attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
        + _attr(NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0")
        + _attr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, b"".join(items))
    )
    flags = NLM_F_REQUEST | NLM_F_ACK
    if kind == NFT_MSG_NEWSETELEM:
        flags |= NLM_F_CREATE
    return _message((NFNL_SUBSYS_NFTABLES << 8) | kind, flags, seq, body, family=family)


def _around(length: int, timeout_ms: int | None) -> tuple[bytes, bytes]:
    """What goes before and after a key of ``length`` bytes in its ``NFTA_LIST_ELEM``: the
    nested headers (and padding), then its timeout attribute (none when None)."""
    timeout = (
        b"" if timeout_ms is None else _attr(NFTA_SET_ELEM_TIMEOUT, struct.pack(">Q", timeout_ms))
    )
    pad = b"\0" * (-length % 4)
    value = _ATTR.size + length
    key = _ATTR.size + value + len(pad)
    whole = _ATTR.size + key + len(timeout)
    head = (
        _ATTR.pack(whole, NFTA_LIST_ELEM | NLA_F_NESTED)
        + _ATTR.pack(key, NFTA_SET_ELEM_KEY | NLA_F_NESTED)
        + _ATTR.pack(value, NFTA_DATA_VALUE)
    )
    return head, pad + timeout


def get_element_message(table: str, set_name: str, key: bytes, seq: int) -> bytes:
    """One NFT_MSG_GETSETELEM message asking for ``key`` in ``table``'s ``set_name`` (pure)."""
    item = _attr(NFTA_LIST_ELEM | NLA_F_NESTED,
                 _attr(NFTA_SET_ELEM_KEY | NLA_F_NESTED, _attr(NFTA_DATA_VALUE, key)))  # fmt: skip
    body = (
        _attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
        + _attr(NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0")
        + _attr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, item)
    )
    kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM
    return _message(kind, NLM_F_REQUEST | NLM_F_ACK, seq, body, family=NFPROTO_INET)


def get_set_message(table: str, set_name: str, seq: int) -> bytes:
    """One NFT_MSG_GETSET message asking for ``table``'s ``set_name`` (pure)."""
    body = _attr(NFTA_SET_TABLE, table.encode() + b"\0") + _attr(
        NFTA_SET_NAME, set_name.encode() + b"\0"
    )
    kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSET
    return _message(kind, NLM_F_REQUEST | NLM_F_ACK, seq, body, family=NFPROTO_INET)


def batch(messages: Sequence[bytes], first_seq: int) -> bytes:
    """``messages`` between a batch begin (``first_seq``) and end (pure)."""
    last = first_seq + len(messages) + 1
    begin = _message(
        NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first_seq, b"", res_id=NFNL_SUBSYS_NFTABLES
    )
    end = _message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, last, b"", res_id=NFNL_SUBSYS_NFTABLES)
    return begin + b"".join(messages) + end


def acks(data: bytes) -> list[tuple[int, int]]:
    """(sequence number, errno) of each NLMSG_ERROR in a datagram; 0 is success (pure)."""
    out, at = [], 0
    while at + _HDR.size <= len(data):
        length, kind, _flags, seq, _pid = _HDR.unpack_from(data, at)
        if length < _HDR.size or at + length > len(data):
            raise BackendError("nfnetlink: truncated answer from the kernel")
        if kind == NLMSG_ERROR and length >= _HDR.size + 4:
            (code,) = struct.unpack_from("=i", data, at + _HDR.size)
            out.append((seq, -code))
        at += (length + 3) & ~3
    return out


def _bound_wait(sock: socket.socket) -> None:
    """A blocking socket whose receive gives up after ACK_TIMEOUT (EAGAIN, an OSError), by the
    kernel's SO_RCVTIMEO: Python's own time-out (``settimeout``) polls the socket before every
    send and receive, two more system calls on a first ban's way."""
    seconds = struct.pack("@ll", int(ACK_TIMEOUT), int(ACK_TIMEOUT % 1 * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, seconds)


class _RefusedError(BackendError):
    """The kernel refused a transaction; ``code`` is its errno."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class ElementWriter:
    """Adds elements to sets of one nftables table of the ``inet`` family; see the module.

    With ``mirror``, the same elements go to the same-named sets of that ``netdev`` table in
    the same transaction (the ingress copies, ``ingress.py``). A transaction refused for want
    of the mirror (ENOENT: not made yet, or the kernel has no netdev family) is sent again
    without it: the inet sets are the ban, the copies only save work, and the response
    worker's renewal writes them too.
    """

    def __init__(self, table: str, mirror: str | None = None, family: int = NFPROTO_INET) -> None:
        self.table = table
        self.mirror = mirror
        self.family = family
        self._sock: socket.socket | None = None
        self._seq = 0
        self._templates: dict[tuple[str, int, int | None, int], Template] = {}

    def _socket(self) -> socket.socket:
        sock = self._sock
        if sock is None:
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
                sock.bind((0, 0))
                _bound_wait(sock)
            except OSError as exc:
                raise BackendError(f"nfnetlink: cannot open a socket: {exc}") from None
            self._sock = sock
        return sock

    def open(self) -> None:
        """Open the socket now (BackendError if it cannot be), not on the first write."""
        self._socket()

    def add(self, set_name: str, elements: Sequence[Element]) -> None:
        """Add ``elements``, BATCH of them per transaction; BackendError (with the kernel's
        reason) when one is refused: that transaction added none of its elements."""
        step = BATCH if self.mirror is None else BATCH // 2  # a mirrored batch is twice the size
        for start in range(0, len(elements), step):
            part = elements[start : start + step]
            if self.mirror is None:
                self._add(set_name, part, which=_MAIN)
                continue
            try:
                self._add(set_name, part, which=_BOTH)
            except _RefusedError as exc:
                if exc.code != errno.ENOENT:
                    raise
                self._add(set_name, part, which=_MAIN)

    def delete(self, set_name: str, keys: Sequence[bytes]) -> int:
        """Delete the elements of ``keys`` from the table's set (not the mirror), one
        transaction each, so a key that is not there (expired) stops no other; how many were
        there. BackendError for any other refusal."""
        deleted = 0
        for key in keys:
            try:
                self._add(set_name, [(key, None)], which=_MAIN, kind=NFT_MSG_DELSETELEM)
            except _RefusedError as exc:
                if exc.code != errno.ENOENT:
                    raise
            else:
                deleted += 1
        return deleted

    def add_one(
        self, set_name: str, key: bytes, timeout_ms: int | None, *, mirror: bool = True
    ) -> None:
        """``add`` of one element (a first ban), from a datagram built once per set, key
        size and timeout (``prepare``) and sent again with its key and sequence numbers
        written in: the ban's path builds no message (~0.1 ms of Python, cold, on a scan's
        first probe). ``mirror`` False: the table's set alone (``copy`` writes the mirror's
        later)."""
        if self.mirror is not None and mirror:
            try:
                self._add_one(set_name, key, timeout_ms, which=_BOTH)
            except _RefusedError as exc:
                if exc.code != errno.ENOENT:
                    raise
            else:
                return
        self._add_one(set_name, key, timeout_ms, which=_MAIN)

    def copy(self, set_name: str, elements: Sequence[Element]) -> bool:
        """Add ``elements`` to the mirror's set alone, in one transaction per BATCH; False
        when there is no mirror (none named, or ENOENT: not made, no netdev family).
        BackendError for any other refusal."""
        if self.mirror is None:
            return False
        for start in range(0, len(elements), BATCH):
            try:
                self._add(set_name, elements[start : start + BATCH], which=_COPY)
            except _RefusedError as exc:
                if exc.code != errno.ENOENT:
                    raise
                return False
        return bool(elements)

    def prepare(
        self, set_name: str, key_size: int, timeout_ms: int | None, *, mirror: bool = True
    ) -> None:
        """Build ``add_one``'s datagrams for these now (with and without the mirror; with
        ``mirror`` False, for the table alone)."""
        for which in (_BOTH, _MAIN) if self.mirror is not None and mirror else (_MAIN,):
            self._template(set_name, key_size, timeout_ms, which=which)

    def _template(
        self, set_name: str, key_size: int, timeout_ms: int | None, *, which: int
    ) -> Template:
        index = (set_name, key_size, timeout_ms, which)
        template = self._templates.get(index)
        if template is None:
            targets = self._targets(which)

            def make(key: bytes, seq: int) -> bytes:
                return batch([element_message(table, set_name, [(key, timeout_ms)], seq + i,
                                              family) for i, (table, family) in
                              enumerate(targets, 1)], seq)  # fmt: skip

            template = self._templates[index] = Template(make, key_size)
        return template

    def _add_one(self, set_name: str, key: bytes, timeout_ms: int | None, *, which: int) -> None:
        template = self._template(set_name, len(key), timeout_ms, which=which)
        first = (self._seq + 1) & 0x7FFFFFFF
        count = len(template.heads) - 2  # the element messages, between begin and end
        self._seq = first + count + 1
        data = template.fill(key, first)
        where = f"{self.table} {set_name}"
        self._transact(data, range(first + 1, first + 1 + count), where, NFT_MSG_NEWSETELEM)

    def _targets(self, which: int) -> list[tuple[str, int]]:
        targets = [] if which == _COPY else [(self.table, self.family)]
        if which != _MAIN and self.mirror is not None:
            targets.append((self.mirror, NFPROTO_NETDEV))
        return targets

    def _add(
        self,
        set_name: str,
        elements: Sequence[Element],
        *,
        which: int,
        kind: int = NFT_MSG_NEWSETELEM,
    ) -> None:
        messages, seqs = [], []
        first = self._seq = (self._seq + 1) & 0x7FFFFFFF
        seq = first
        for table, family in self._targets(which):
            for start in range(0, len(elements), CHUNK):
                seq += 1
                seqs.append(seq)
                part = elements[start : start + CHUNK]
                messages.append(element_message(table, set_name, part, seq, family, kind))
        self._seq = seq + 1
        table = self.mirror if which == _COPY and self.mirror is not None else self.table
        self._transact(batch(messages, first), seqs, f"{table} {set_name}", kind)

    def _transact(self, data: bytes, seqs: Iterable[int], where: str, kind: int) -> None:
        """Send one batch and wait for the acknowledgement of each of ``seqs``."""
        sock = self._socket()
        try:
            sock.send(data)
            pending = set(seqs)
            failure = 0
            while pending:
                for got, code in acks(sock.recv(65536)):
                    if got in pending:
                        pending.discard(got)
                        failure = failure or code
                        if code:  # the whole batch is aborted: no further answer comes
                            pending.clear()
        except OSError as exc:
            self.close()
            raise BackendError(f"nfnetlink: {exc}") from None
        if failure:
            verb = "add to" if kind == NFT_MSG_NEWSETELEM else "delete from"
            raise _RefusedError(
                f"nfnetlink: cannot {verb} {where}: {os.strerror(failure)}"
                + (" (no such table, set or element)" if failure == errno.ENOENT else ""),
                failure,
            )

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class SetReader:
    """Asks one table's sets (``inet`` family) for single keys; see the module. Used from one
    thread."""

    def __init__(self, table: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.table = table
        self._sock: socket.socket | None = None
        self._seq = 0
        self._clock = clock
        self._seen: dict[str, float] = {}  # set name -> when the kernel last showed it
        self._templates: dict[tuple[str, int], Template] = {}

    def contains(self, set_name: str, key: bytes) -> bool | None:
        """Is ``key`` in the set? None when the kernel cannot tell (no such set or table, the
        socket failed)."""
        try:
            code = self._ask(self._question(set_name, len(key)).fill(key, self._next()))
            now = self._clock()
            if code == 0:
                self._seen[set_name] = now
                return True
            if now - self._seen.get(set_name, -math.inf) < SET_SEEN_FOR:
                return False
            if self._ask(get_set_message(self.table, set_name, self._next())) == 0:
                self._seen[set_name] = now
                return False  # the set is there: the element is not
        except OSError:
            self.close()
        self._seen.pop(set_name, None)
        return None

    def prepare(self, set_name: str, key_size: int) -> None:
        """Build ``contains``' question for keys of this size now, off the ban path."""
        self._question(set_name, key_size)

    def _question(self, set_name: str, key_size: int) -> Template:
        """The GETSETELEM message for a key of this set, built once (``Template``)."""
        template = self._templates.get((set_name, key_size))
        if template is None:
            table = self.table
            template = self._templates[(set_name, key_size)] = Template(
                lambda key, seq: get_element_message(table, set_name, key, seq), key_size
            )
        return template

    def touch(self, *set_names: str) -> None:
        """Ask whether the sets are there (off the ban path: a timer), so that ``contains``
        need not ask it."""
        for name in set_names:
            try:
                there = self._ask(get_set_message(self.table, name, self._next())) == 0
            except OSError:
                self.close()
                there = False
            if there:
                self._seen[name] = self._clock()
            else:
                self._seen.pop(name, None)

    def _next(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF
        return self._seq

    def _ask(self, message: bytes) -> int:
        """Send one request; its errno (0: the kernel answered with the object and an ack)."""
        sock = self._sock
        if sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            try:
                sock.bind((0, 0))
                _bound_wait(sock)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        (seq,) = struct.unpack_from("=I", message, 8)
        sock.send(message)
        while True:
            for got, code in acks(sock.recv(65536)):
                if got == seq:
                    return code

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
