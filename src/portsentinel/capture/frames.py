"""The TPACKET_V2 ring's frames: one packet per fixed-size slot, handed over one at a time.

Why the daemon reads V2 and not V3's blocks: V3 wakes the reader when a block closes, full or
by its retire timer, and that timer is coarse or worse. Measured in a namespace lab on 6.18
(``bench/README.md``, "First probe"): a lone packet in an open V3 block was delivered only
when the next packet arrived (after 5 ms with packets 5 ms apart, after 200 ms with 200 ms
gaps), whatever the timeout (1 or 8 ms); Debian 12's 6.1 counts the timeout in jiffies
(4 ms at HZ=250). V2 wakes the reader for every packet it queues: the first probe of a scan
is read ~0.1 ms after it arrived. The reader still takes every ready frame per wake-up, so
a burst costs one wake-up, not one per packet.

A frame is ``tpacket2_hdr`` (32 bytes) and ``sockaddr_ll`` then, at ``tp_net``, the packet
from its network header (``SOCK_DGRAM``), at most ``tp_snaplen`` bytes::

    0 tp_status  4 tp_len  8 tp_snaplen  12 tp_mac  14 tp_net  16 tp_sec  20 tp_nsec ...
    32 sll_family  34 sll_protocol  36 sll_ifindex  40 sll_hatype  42 sll_pkttype ...

Frame ``i`` lives at ``(i // per_block) * block_size + (i % per_block) * frame_size``: frames
never cross a block, and a block may end with unused bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Final

TPACKET_V2: Final = 1
TP_STATUS_KERNEL: Final = 0
TP_STATUS_USER: Final = 1
PACKET_HOST: Final = 0
HEADER_BYTES: Final = 80  # where the network header starts: TPACKET_ALIGN(52 + 16)

# status, (tp_len), snaplen, (tp_mac), tp_net, (times, vlan, padding, sll_family,
# sll_protocol), sll_ifindex, (sll_hatype), sll_pkttype
FRAME: Final = struct.Struct("=I4xI2xH16x4xi2xB")
_STATUS: Final = struct.Struct("=I")
TPACKET_REQ: Final = struct.Struct("=4I")  # block size, block count, frame size, frame count

Handler = Callable[[memoryview, int, int, int], None]


def frame_offsets(block_size: int, block_count: int, frame_size: int) -> list[int]:
    """The byte offset of every frame, in ring order."""
    per_block = block_size // frame_size
    if per_block < 1:
        raise ValueError(f"frame_size {frame_size} is larger than block_size {block_size}")
    return [b * block_size + f * frame_size for b in range(block_count) for f in range(per_block)]


def frame_ready(view: memoryview, offset: int) -> bool:
    return bool(_STATUS.unpack_from(view, offset)[0] & TP_STATUS_USER)


def walk_frames(
    view: memoryview,
    offsets: Sequence[int],
    position: list[int],
    handler: Handler,
    *,
    counted: set[int] | frozenset[int],
    uncounted: Callable[[int], bool],
    limit: int = 0,
) -> tuple[int, int, int]:
    """Hand every ready frame from index ``position[0]`` on (one lap at most, or ``limit``
    frames when it is positive) to ``handler``, each given back to the kernel right after;
    stops at the first frame the kernel still owns.

    ``position[0]`` is moved past every frame given back, also when the handler raises (its
    frame is given back and the error propagates). Returns (handled, not host, not counted).
    """
    unpack = FRAME.unpack_from
    words = view.cast("I")  # the status word read and given back as an item: no struct call
    count = len(offsets)
    index = position[0]
    handled = not_host = not_counted = 0
    try:
        for _ in range(count if limit <= 0 else min(limit, count)):
            at = offsets[index]
            if not words[at >> 2] & TP_STATUS_USER:
                break
            _status, snaplen, net, ifindex, pkttype = unpack(view, at)
            index = index + 1 if index + 1 < count else 0
            try:
                if pkttype != PACKET_HOST:
                    not_host += 1  # the filter checks it too; this is the safety net
                elif ifindex in counted or uncounted(ifindex):
                    handler(view, at + net, snaplen, ifindex)
                    handled += 1
                else:
                    not_counted += 1
            finally:
                words[at >> 2] = TP_STATUS_KERNEL
    finally:
        position[0] = index
    return handled, not_host, not_counted
