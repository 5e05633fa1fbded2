"""Root-free tests for ``portsentinel.capture.afpacket``: the block walker on a hand-built
TPACKET_V3 block, the interface rules on a fake ``/sys/class/net``, and configuration checks.

The live socket itself is tested in ``tests/e2e/test_afpacket.py``.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest

from portsentinel.capture.afpacket import PacketRing, RingConfig, walk_block
from portsentinel.capture.bpf import PortFilter, build_filter
from portsentinel.errors import CaptureError

_HEADER = 48  # TPACKET_ALIGN(sizeof(struct tpacket3_hdr))
_NET = 96  # where the kernel puts the network header for a SOCK_DGRAM socket


def block(*packets: tuple[int, int, int, int, bytes], first: int = 48) -> memoryview:
    """A block of (sec, nsec, ifindex, pkttype, data) packets, laid out as the kernel does."""
    frames = []
    for sec, nsec, ifindex, pkttype, data in packets:
        size = (_NET + len(data) + 15) & ~15
        header = struct.pack("=IIIIIIHH", size, sec, nsec, len(data), len(data), 1, _NET, _NET)
        sll = struct.pack("=HHiHBB8s", 17, 0x0008, ifindex, 1, pkttype, 6, b"")
        frame = header.ljust(_HEADER, b"\0") + sll
        frames.append((frame.ljust(_NET, b"\0") + data).ljust(size, b"\0"))
    descriptor = struct.pack("=IIIII", 3, 0, 1, len(packets), first).ljust(first, b"\0")
    return memoryview(bytearray(b"\xee" * 64 + descriptor + b"".join(frames)))


def test_walk_hands_on_counted_host_packets() -> None:
    view = block(
        (1700000000, 250_000_000, 2, 0, b"\x45first"),
        (1700000001, 0, 2, 1, b"\x45broadcast"),
        (1700000002, 0, 9, 0, b"\x45elsewhere"),
        (1700000003, 999_999_999, 3, 0, b"\x60last"),
    )
    got: list[tuple[bytes, int]] = []
    asked: list[int] = []

    def uncounted(ifindex: int) -> bool:
        asked.append(ifindex)
        return ifindex == 3

    def handler(ring: memoryview, start: int, length: int, ifindex: int) -> None:
        assert ring is view  # read in place: no copy, no slice
        got.append((bytes(ring[start : start + length]), ifindex))

    result = walk_block(view, 64, handler, {2}, uncounted)
    assert result == (2, 1, 1)
    assert got == [(b"\x45first", 2), (b"\x60last", 3)]
    assert asked == [9, 3]


def test_walk_of_an_empty_block_calls_nothing() -> None:
    assert walk_block(block(), 64, _never, set(), _never_counted) == (0, 0, 0)


def _never(*args: Any) -> None:
    raise AssertionError("called")


def _never_counted(ifindex: int) -> bool:
    raise AssertionError("asked")


def test_ring_defaults() -> None:
    config = RingConfig()
    assert config.ring_bytes == 32 * 1024 * 1024
    assert config.retire_timeout_ms <= 10
    assert config.interfaces == ()
    assert not config.include_loopback


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"block_size": 300_000}, "power of two"),
        ({"block_size": 1024}, "power of two"),
        ({"block_count": 1}, "block_count"),
        ({"frame_size": 100}, "frame_size"),
        ({"frame_size": 2056}, "frame_size"),
        ({"retire_timeout_ms": 0}, "retire_timeout_ms"),
    ],
)
def test_ring_config_rejects_bad_geometry(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RingConfig(**kwargs)


def test_missing_privilege_is_reported_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(socket, "socket", refuse)
    with pytest.raises(CaptureError, match="CAP_NET_RAW"):
        PacketRing(RingConfig(), build_filter(PortFilter.under(1024)))
