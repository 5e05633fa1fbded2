"""The TPACKET_V2 frame walker on a hand-built ring: frames laid out as the kernel lays them
(also when frames do not fill a block), handed on in ring order, each given back, the walk
stopping at the first frame the kernel owns, and a handler that raises losing nothing else.
The live ring is tested in tests/e2e/test_afpacket.py."""

from __future__ import annotations

import struct

import pytest

from portsentinel.capture import frames
from portsentinel.capture.frames import HEADER_BYTES, frame_offsets, frame_ready, walk_frames

BLOCK, FRAME = 12288, 384  # 32 frames per block, as the daemon's ring


def ring(blocks: int = 2) -> tuple[memoryview, list[int]]:
    offsets = frame_offsets(BLOCK, blocks, FRAME)
    return memoryview(bytearray(BLOCK * blocks)), offsets


def put(view: memoryview, at: int, data: bytes, ifindex: int = 2, pkttype: int = 0) -> None:
    """A frame as the kernel fills it: header, sockaddr_ll, data at tp_net; status user."""
    header = struct.pack("=IIIHHII", 1, len(data), len(data), HEADER_BYTES, HEADER_BYTES, 7, 9)
    view[at : at + len(header)] = header
    sll = struct.pack("=HHiHBB8s", 17, 0x0008, ifindex, 1, pkttype, 6, b"")
    view[at + 32 : at + 32 + len(sll)] = sll
    view[at + HEADER_BYTES : at + HEADER_BYTES + len(data)] = data


def collect() -> tuple[list[bytes], frames.Handler]:
    seen: list[bytes] = []
    return seen, lambda v, start, length, _ifindex: seen.append(bytes(v[start : start + length]))


def test_offsets_keep_frames_inside_their_block() -> None:
    offsets = frame_offsets(BLOCK, 2, FRAME)
    assert len(offsets) == 64
    assert offsets[31] == 31 * FRAME
    assert offsets[32] == BLOCK  # the second block starts a new run of frames
    assert all(at % BLOCK + FRAME <= BLOCK for at in offsets)
    with pytest.raises(ValueError, match="larger than block_size"):
        frame_offsets(4096, 2, 8192)


def test_ready_frames_are_handed_on_in_order_and_given_back() -> None:
    view, offsets = ring()
    for i, index in enumerate((0, 1, 2)):
        put(view, offsets[index], bytes([i]) * 20)
    seen, handler = collect()
    position = [0]
    done = walk_frames(view, offsets, position, handler, counted={2}, uncounted=lambda _i: False)
    assert done == (3, 0, 0)
    assert seen == [b"\0" * 20, b"\1" * 20, b"\2" * 20]
    assert position == [3]
    assert not any(frame_ready(view, at) for at in offsets)  # all given back
    assert walk_frames(view, offsets, position, handler, counted={2},
                       uncounted=lambda _i: False) == (0, 0, 0)  # fmt: skip


def test_a_limit_ends_the_walk_early_and_the_next_walk_goes_on_from_there() -> None:
    """Under a flood the daemon reads a few hundred frames per loop turn, not a lap: its
    held bans, timers and control socket wait for the turn to end."""
    view, offsets = ring()
    for index in range(10):
        put(view, offsets[index], bytes([index]) * 20)
    seen, handler = collect()
    position = [0]

    def walk() -> tuple[int, int, int]:
        return walk_frames(view, offsets, position, handler, counted={2},
                           uncounted=lambda _i: False, limit=4)  # fmt: skip

    assert walk() == (4, 0, 0)
    assert position == [4]
    assert [frame_ready(view, offsets[i]) for i in (3, 4)] == [False, True]
    assert walk() == (4, 0, 0)
    assert walk() == (2, 0, 0)  # what is left, then the first frame the kernel owns
    assert seen == [bytes([i]) * 20 for i in range(10)]


def test_the_walk_wraps_and_sorts_out_what_is_not_for_us() -> None:
    view, offsets = ring()
    last = len(offsets) - 1
    put(view, offsets[last], b"a" * 20)
    put(view, offsets[0], b"b" * 20, pkttype=3)  # not to this host
    put(view, offsets[1], b"c" * 20, ifindex=9)  # an interface that does not count
    put(view, offsets[2], b"d" * 20, ifindex=5)  # a new one, accepted on asking
    seen, handler = collect()
    position = [last]
    asked: list[int] = []
    done = walk_frames(view, offsets, position, handler, counted={2},
                       uncounted=lambda i: asked.append(i) or i == 5)  # type: ignore[func-returns-value]  # fmt: skip
    assert done == (2, 1, 1)
    assert seen == [b"a" * 20, b"d" * 20]
    assert asked == [9, 5]
    assert position == [3]


def test_a_handler_that_raises_gives_its_frame_back_and_keeps_the_place() -> None:
    view, offsets = ring()
    for index in (0, 1):
        put(view, offsets[index], b"x" * 20)

    def boom(_v: memoryview, _s: int, _l: int, _i: int) -> None:
        raise RuntimeError("decoder bug")

    position = [0]
    with pytest.raises(RuntimeError):
        walk_frames(view, offsets, position, boom, counted={2}, uncounted=lambda _i: False)
    assert position == [1]
    assert not frame_ready(view, offsets[0])
    assert frame_ready(view, offsets[1])  # untouched: read on the next call
