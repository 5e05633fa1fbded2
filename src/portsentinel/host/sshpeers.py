"""The peers of this host's current SSH sessions: the admin's own machine, never to block.

Why: an admin logged in over SSH who runs a port scanner from the same machine (or shares a
NAT address with one) would lock themselves out. The peers are the remote ends of ESTABLISHED
TCP connections whose LOCAL port is an SSH port (22 unless the daemon runs elsewhere).
Connections the host opened to someone else's port 22 have a high local port and do not count:
reaching a server over SSH gives it no protection.

The kernel is asked through ``NETLINK_SOCK_DIAG`` with the request and port filter of
``inuse.py`` (the local-port range test every kernel knows), one dump per family and port;
where sock_diag cannot answer (no ``inet_diag``, or a policy forbids it) ``/proc/net/tcp`` and
``tcp6`` are read instead. Only the kernel is asked; nothing is sent on the network.

When: on every refresh of the never-block set, and, in the daemon, just before a ban of a source
the set does not hold (``NeverBlock.confirm``): a session opened a moment ago is then already
here, since the kernel lists a connection as ESTABLISHED from the end of its handshake. Why
not conntrack's event groups instead: see ``daemon/protection.py``.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Container, Iterable, Iterator
from typing import ClassVar, Final, Literal

from portsentinel.errors import CaptureError
from portsentinel.host.inuse import (
    DIAG_MSG_LEN,
    NETLINK_SOCK_DIAG,
    diag_reply,
    pack_request,
    port_bytecode,
    short_record,
)
from portsentinel.host.netlink import NetlinkSocket, Receive
from portsentinel.host.netlink_messages import UNAVAILABLE, NetlinkError

DEFAULT_SSH_PORTS: Final = (22,)
TCP_ESTABLISHED: Final = 1
# inet_diag_msg: family, state, timer, retrans, then inet_diag_sockid: local port, remote
# port (both big-endian), local address, remote address (16 bytes each, IPv4 in the first 4)
_PEER_RECORD: Final = struct.Struct("!BBxxHH16s16s")
_V4_MAPPED: Final = b"\x00" * 10 + b"\xff\xff"
_HOST_WORD: Final = struct.Struct("=I")  # /proc prints addresses as host-order 32-bit words
_PROC_FILES: Final = ("tcp", "tcp6")

Backend = Literal["auto", "netlink", "proc"]


# --- pure packing and parsing ----------------------------------------------------------------
def pack_peer_request(seq: int, family: int, port: int) -> bytes:
    """A sock_diag dump of ESTABLISHED TCP sockets of ``family`` whose local port is ``port``."""
    return pack_request(
        seq, family, socket.IPPROTO_TCP, 1 << TCP_ESTABLISHED, port_bytecode(port, exact=False)
    )


def _unmapped(address: bytes) -> bytes:
    """An IPv4 client of a dual-stack listener shows as ``::ffff:a.b.c.d``: give a.b.c.d."""
    return address[12:] if address[:12] == _V4_MAPPED else address


def parse_peer_dump(
    data: bytes | memoryview, seq: int, ports: Container[int], peers: list[bytes]
) -> bool:
    """Append the remote addresses of one datagram's ESTABLISHED sockets on ``ports``.

    True once the dump is done. The state and port are checked again here, so a kernel that
    ignored the filter still yields only SSH peers. Messages of another sequence number
    (an earlier, abandoned dump) are skipped. Raises ``NetlinkError`` for an error reply and
    ``CaptureError`` for a malformed datagram.
    """
    return diag_reply(seq, lambda record: _peer(record, ports), peers).feed(data)


def _peer(payload: memoryview, ports: Container[int]) -> bytes | None:
    """The remote address of an ESTABLISHED socket record on ``ports``; None for another."""
    if len(payload) < DIAG_MSG_LEN:
        raise short_record(payload)
    family, state, sport, _dport, _src, dst = _PEER_RECORD.unpack_from(payload)
    if state != TCP_ESTABLISHED or sport not in ports:
        return None
    return dst[:4] if family == socket.AF_INET else _unmapped(dst)


def _proc_address(text: str) -> bytes:
    if len(text) not in (8, 32):
        raise ValueError(f"address of {len(text)} hex digits")
    words = (int(text[i : i + 8], 16) for i in range(0, len(text), 8))
    return _unmapped(b"".join(_HOST_WORD.pack(word) for word in words))


def parse_proc_peers(text: str, ports: Container[int]) -> Iterator[bytes]:
    """Remote addresses of ESTABLISHED rows on ``ports`` in a /proc/net/tcp or tcp6 table.

    A row reads ``sl local_address rem_address st ...``, with ``ADDR:PORT`` in hex and the
    address as host-order 32-bit words.
    """
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] == "sl":
            continue
        try:
            port = int(fields[1].rpartition(":")[2], 16)
            state = int(fields[3], 16)
            if state == TCP_ESTABLISHED and port in ports:
                yield _proc_address(fields[2].rpartition(":")[0])
        except (IndexError, ValueError):
            raise CaptureError(f"/proc/net table line {number}: cannot parse {line!r}") from None


# --- the kernel's answer -----------------------------------------------------------------------
class SshPeers(NetlinkSocket):
    """Remote addresses of the current sessions to the local SSH ports (both families).

    ``backend="auto"`` asks sock_diag and falls back to /proc for good when the kernel cannot
    answer (``fallback`` says why). The netlink socket is opened lazily, reused, and reopened
    after a failed exchange. Not thread-safe.
    """

    PROTOCOL: ClassVar[int] = NETLINK_SOCK_DIAG
    WHAT: ClassVar[str] = "sock_diag"
    RECEIVE: ClassVar[Receive] = Receive.INTO_BUFFER

    def __init__(
        self,
        ports: Iterable[int] = DEFAULT_SSH_PORTS,
        *,
        backend: Backend = "auto",
        proc_dir: str = "/proc/net",
        timeout: float = 1.0,
    ) -> None:
        self.ports = tuple(dict.fromkeys(ports))
        if not self.ports or not all(0 < port <= 0xFFFF for port in self.ports):
            raise ValueError(f"SSH ports must be 1-65535, at least one: {self.ports}")
        if backend not in ("auto", "netlink", "proc"):
            raise ValueError(f"unknown backend {backend!r}")
        # A Python-level timeout, as before: read once per refresh, not once per packet.
        super().__init__(timeout=timeout, kernel_timeout=False)
        self._backend = backend
        self._proc_dir = proc_dir
        self.fallback: str | None = None

    @property
    def backend(self) -> str:
        """``netlink`` or ``proc``: what answers now."""
        return "proc" if self._backend == "proc" or self.fallback else "netlink"

    def peers(self) -> frozenset[bytes]:
        """Packed remote addresses (4 or 16 bytes; IPv4-mapped ones as IPv4)."""
        if self.backend == "netlink":
            try:
                return frozenset(self._netlink_peers())
            except NetlinkError as exc:
                if self._backend == "netlink" or exc.errno not in UNAVAILABLE:
                    raise
                self.fallback = str(exc)
        return frozenset(self._proc_peers())

    def _proc_peers(self) -> list[bytes]:
        peers: list[bytes] = []
        for name in _PROC_FILES:
            path = os.path.join(self._proc_dir, name)
            try:
                with open(path, encoding="ascii") as table:
                    text = table.read()
            except FileNotFoundError:
                continue  # tcp6 is absent when IPv6 is off
            except (OSError, UnicodeDecodeError) as exc:
                raise CaptureError(f"cannot read {path}: {exc}") from exc
            peers.extend(parse_proc_peers(text, self.ports))
        return peers

    def _netlink_peers(self) -> list[bytes]:
        peers: list[bytes] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for port in self.ports:
                seq = self._next_seq()
                reply = diag_reply(seq, lambda record: _peer(record, self.ports), peers)
                self._exchange(pack_peer_request(seq, family, port), reply.feed)
        return peers
