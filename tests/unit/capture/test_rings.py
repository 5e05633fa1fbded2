"""``capture.rings.ProtocolRings``: two rings read as one, with stand-in rings on socket pairs
(the live sockets are in ``tests/e2e/test_ingress.py``)."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any, ClassVar

import pytest

from portsentinel.capture import rings as rings_module
from portsentinel.capture.afpacket import ETH_P_IP, ETH_P_IPV6, CaptureStats, RingConfig
from portsentinel.capture.rings import ProtocolRings


class StandInRing:
    """A ring whose "packets" are bytes written to the peer of its socket."""

    made: ClassVar[list[StandInRing]] = []

    def __init__(self, config: RingConfig, program: Sequence[Any], protocol: int) -> None:
        self.protocol = protocol
        self.program = list(program)
        self.sock, self.peer = socket.socketpair()
        self.sock.setblocking(False)
        self.counted: list[int] = []
        self.closed = False
        self.reads: list[int] = []
        self.timeouts: list[float] = []  # -1: only what is ready, no system call
        StandInRing.made.append(self)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_batch(self, handler: Any, timeout: float, limit: int = 0) -> int:
        assert timeout in (-1.0, 0.0)  # the wrapper waits, never the ring
        self.reads.append(limit)
        self.timeouts.append(timeout)
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return 0
        view = memoryview(data)
        for i in range(len(data)):
            handler(view, i, 1, self.protocol)
        return len(data)

    def set_filter(self, program: Sequence[Any]) -> None:
        self.program = list(program)

    def refresh_interfaces(self) -> list[Any]:
        return [self.protocol]

    def set_counted_interfaces(self, ifindexes: Any) -> None:
        self.counted = list(ifindexes)

    @property
    def counted_ifindexes(self) -> frozenset[int]:
        return frozenset(self.counted)

    def stats(self) -> CaptureStats:
        return (
            CaptureStats(10, 1, 0, 5, 2, 1)
            if self.protocol == ETH_P_IP
            else CaptureStats(3, 0, 1, 2, 0, 0)
        )

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        self.peer.close()


@pytest.fixture
def rings(monkeypatch: pytest.MonkeyPatch) -> ProtocolRings:
    StandInRing.made = []
    monkeypatch.setattr(rings_module, "PacketRing", StandInRing)
    return ProtocolRings(RingConfig(), [(6, 0, 0, 0)])


def test_one_ring_per_family_bound_to_its_protocol(rings: ProtocolRings) -> None:
    assert [r.protocol for r in StandInRing.made] == [ETH_P_IP, ETH_P_IPV6]
    assert len(rings.rings) == 2


def test_either_ring_wakes_the_one_descriptor_and_both_are_read(rings: ProtocolRings) -> None:
    v4, v6 = StandInRing.made
    got: list[tuple[int, int]] = []

    def handler(view: memoryview, start: int, length: int, tag: int) -> None:
        got.append((view[start], tag))

    assert rings.read_batch(handler, 0.0) == 0
    assert rings.read_batch(handler, 0.05) == 0  # waited, nothing came
    v6.peer.send(b"\x06")
    assert rings.read_batch(handler, 5.0, 16) == 1
    assert got == [(6, ETH_P_IPV6)]
    v4.peer.send(b"\x04\x04")
    v6.peer.send(b"\x06")
    assert rings.read_batch(handler, 5.0, 16) == 3
    assert sorted(got[1:]) == [(4, ETH_P_IP), (4, ETH_P_IP), (6, ETH_P_IPV6)]
    assert v4.reads[-1] == 16
    assert v6.reads[-1] == 16


def test_an_empty_ring_is_polled_only_when_neither_brought_anything(
    rings: ProtocolRings,
) -> None:
    """A real ring's poll (which clears a socket error) is a system call: a frame in one ring
    is read without one to the other; with nothing in either, both are polled once."""
    v4, v6 = StandInRing.made
    v4.peer.send(b"\x04")
    assert rings.read_batch(lambda view, start, length, tag: None, 0.0, 16) == 1
    assert v4.timeouts == [-1.0]
    assert v6.timeouts == [-1.0]
    assert rings.read_batch(lambda view, start, length, tag: None, 0.0, 16) == 0
    assert v4.timeouts[1:] == [-1.0, 0.0]
    assert v6.timeouts[1:] == [-1.0, 0.0]


def test_the_first_ring_read_alternates(rings: ProtocolRings) -> None:
    v4, v6 = StandInRing.made
    order: list[int] = []
    v4.peer.send(b"\x04")
    v6.peer.send(b"\x06")
    rings.read_batch(lambda view, start, length, tag: order.append(tag), 0.0, 1)
    v4.peer.send(b"\x04")
    v6.peer.send(b"\x06")
    rings.read_batch(lambda view, start, length, tag: order.append(tag), 0.0, 1)
    assert order == [ETH_P_IP, ETH_P_IPV6, ETH_P_IPV6, ETH_P_IP]


def test_filter_interfaces_and_statistics_cover_both(rings: ProtocolRings) -> None:
    rings.set_filter([(6, 0, 0, 1)])
    assert all(r.program == [(6, 0, 0, 1)] for r in StandInRing.made)
    rings.set_counted_interfaces([2, 3])
    assert rings.counted_ifindexes == frozenset({2, 3})
    assert all(r.counted == [2, 3] for r in StandInRing.made)
    assert rings.stats() == CaptureStats(13, 1, 1, 7, 2, 1)
    rings.close()
    assert all(r.closed for r in StandInRing.made)


def test_a_ring_that_cannot_open_closes_the_other(monkeypatch: pytest.MonkeyPatch) -> None:
    StandInRing.made = []

    def second_fails(config: RingConfig, program: Sequence[Any], protocol: int) -> StandInRing:
        if protocol == ETH_P_IPV6:
            raise OSError("no ring")
        return StandInRing(config, program, protocol)

    monkeypatch.setattr(rings_module, "PacketRing", second_fails)
    with pytest.raises(OSError, match="no ring"):
        ProtocolRings(RingConfig(), [(6, 0, 0, 0)])
    assert [r.closed for r in StandInRing.made] == [True]
