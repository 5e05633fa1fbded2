"""The daemon's capture: an IPv4 ring and an IPv6 ring read as one.

One packet socket takes one protocol. An ``ETH_P_ALL`` socket is served before the ingress
hooks, so it sees the packets of banned sources that nftables drops there; a socket bound to
``ETH_P_IP`` or ``ETH_P_IPV6`` is served after them and does not (``block/ingress.py``). So
the daemon opens one ring per family and reads them through one epoll descriptor, which its
selector watches as it watched the single ring: ``ProtocolRings`` has ``PacketRing``'s
interface. Each family has a ring of the configured size.

Bound sockets see only what the host receives, never what it sends, so nothing that needs
outgoing frames may rely on them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import select
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Final

from portsentinel.capture.afpacket import (
    ETH_P_IP,
    ETH_P_IPV6,
    CaptureStats,
    Handler,
    PacketRing,
    RingConfig,
)
from portsentinel.capture.bpf import Instruction
from portsentinel.capture.interfaces import Interface

PROTOCOLS: Final = (ETH_P_IP, ETH_P_IPV6)


class ProtocolRings:
    """One ``PacketRing`` per protocol of ``protocols``, read as one; see the module."""

    def __init__(
        self,
        config: RingConfig,
        program: Sequence[Instruction],
        protocols: Sequence[int] = PROTOCOLS,
    ) -> None:
        self._rings: list[PacketRing] = []
        self._epoll = select.epoll()
        try:
            for protocol in protocols:
                ring = PacketRing(config, program, protocol)
                self._rings.append(ring)
                self._epoll.register(ring.fileno(), select.EPOLLIN | select.EPOLLERR)
        except BaseException:
            self.close()
            raise
        self._next = 0  # the ring read first next time, so neither starves the other

    @property
    def rings(self) -> tuple[PacketRing, ...]:
        return tuple(self._rings)

    def fileno(self) -> int:
        """Readable when either ring has packets."""
        return self._epoll.fileno()

    def read_batch(self, handler: Handler, timeout: float, limit: int = 0) -> int:
        """``PacketRing.read_batch`` over both rings: what is ready in either (``limit`` per
        ring), waiting up to ``timeout`` seconds when neither has anything."""
        handled = self._read(handler, limit)
        if handled or timeout <= 0:
            return handled
        if not self._epoll.poll(max(0.001, math.ceil(timeout * 1000) / 1000)):
            return 0
        return self._read(handler, limit)

    def _read(self, handler: Handler, limit: int) -> int:
        """What either ring holds; the rings are asked with a system call (their poll, which
        also clears a pending socket error) only when neither had anything: a scan's first
        probe is not kept waiting by a question to the other, empty ring."""
        rings, first = self._rings, self._next
        self._next = (first + 1) % len(rings)
        for timeout in (-1.0, 0.0):
            handled = 0
            for i in range(len(rings)):
                handled += rings[(first + i) % len(rings)].read_batch(handler, timeout, limit)
            if handled:
                return handled
        return 0

    def set_filter(self, program: Sequence[Instruction]) -> None:
        for ring in self._rings:
            ring.set_filter(program)

    def refresh_interfaces(self) -> list[Interface]:
        found: list[Interface] = []
        for ring in self._rings:
            found = ring.refresh_interfaces()
        return found

    def set_counted_interfaces(self, ifindexes: Iterable[int]) -> None:
        wanted = list(ifindexes)
        for ring in self._rings:
            ring.set_counted_interfaces(wanted)

    @property
    def counted_ifindexes(self) -> frozenset[int]:
        return self._rings[0].counted_ifindexes if self._rings else frozenset()

    def stats(self) -> CaptureStats:
        """The rings' counters, summed."""
        parts = [dataclasses.astuple(ring.stats()) for ring in self._rings]
        return CaptureStats(*(sum(values) for values in zip(*parts, strict=True)))

    def close(self) -> None:
        """Close both rings and the epoll descriptor; the statistics stay readable."""
        for ring in self._rings:
            ring.close()
        with contextlib.suppress(OSError):
            self._epoll.close()

    def __enter__(self) -> ProtocolRings:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
