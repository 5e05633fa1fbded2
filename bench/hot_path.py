"""The daemon's per-packet path in process, stage by stage: where a probe's microseconds go.

No traffic: synthetic TPACKET_V3 blocks (the kernel's ring layout, built in memory) go through
``walk_block`` into the daemon's own ``Pipeline._on_packet`` (decode, detect, outputs), the
pipeline started as ``portsentinel run --mode atcp`` starts it (``Pipeline.start``: real
sockets, so it runs inside a fresh lab's target namespace, created and removed here), without
an events stream, as the packaged service runs. Every frame is a 58-byte SYN with MSS.

Scenarios:
- ``repeats``: 200 sources probing the 1,021 ports atcp watches, BLOCK_TCP 0, SCAN_TRIGGER 0:
  each source's first probe is its alert, every later one a repeat of a source already
  responded to (the throughput bench's load);
- ``fresh``: every probe from a new random source (a spoofed flood), default BLOCK_TCP 1, so
  each is a trigger the ban budget refuses once spent (dry run: no responder).

Stages (µs per packet, CPU time of this process, best of ``--runs``): the ring walk alone
(a handler that does nothing), decode alone, ``Detector.feed`` alone, and the whole
``walk_block`` -> ``_on_packet`` path with its records; then the same walk and whole path over
TPACKET_V2 frames (``walk_frames``, the daemon's ring since issue 14), each frame given back
as it is read, from other sources than the V3 pass. Prints figures; asserts nothing.

Usage: python3 bench/hot_path.py [--packets N] [--runs R]   (root, iproute2)
"""

from __future__ import annotations

import argparse
import io
import random
import shlex
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))

import netns

from portsentinel.alert.sinks import LogSink
from portsentinel.capture.afpacket import walk_block
from portsentinel.capture.frames import FRAME, frame_offsets, walk_frames
from portsentinel.config.setup import load_setup
from portsentinel.daemon.pipeline import Pipeline
from portsentinel.daemon.service import settle_gc
from portsentinel.decode import decode_ip

TARGET = bytes([198, 18, 0, 1])
NET_OFFSET = 80  # where a frame's network header starts inside its ring slot
BLOCK_HEADER = 48
FRAMES_PER_BLOCK = 400
IFINDEX = 2
_SLOT = struct.Struct("=IIII10xH24xi2xB")  # next, sec, nsec, snaplen, net, ifindex, pkttype
SCENARIOS = {
    "repeats": 'BLOCK_TCP="0"\nBLOCK_UDP="0"\nSCAN_TRIGGER="0"\n',
    "fresh": 'SCAN_TRIGGER="0"\n',
}
ATCP_PORTS = [p for p in range(1, 1024) if p not in {113, 139}]


def syn(src: bytes, dport: int) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 6 << 4, 0x02, 1024, 0, 0)
    tcp += bytes.fromhex("020405b4")  # MSS, as nmap sends
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, src, TARGET)
    return ip + tcp


def ring_block(frames: list[bytes]) -> memoryview:
    """One retired TPACKET_V3 block holding ``frames`` (status TP_STATUS_USER)."""
    block = bytearray(BLOCK_HEADER)
    struct.pack_into("=I", block, 8, 1)
    struct.pack_into("=II", block, 12, len(frames), BLOCK_HEADER)
    for i, frame in enumerate(frames):
        size = (NET_OFFSET + len(frame) + 15) & ~15
        slot = bytearray(size)
        next_offset = size if i < len(frames) - 1 else 0
        _SLOT.pack_into(slot, 0, next_offset, 0, 0, len(frame), NET_OFFSET, IFINDEX, 0)
        slot[NET_OFFSET : NET_OFFSET + len(frame)] = frame
        block += slot
    return memoryview(bytes(block))


V2_FRAME, V2_BLOCK = 384, 12288  # the daemon's geometry (daemon/sources.py)


def frame_ring(frames: list[bytes]) -> tuple[memoryview, list[int]]:
    """A TPACKET_V2 ring holding ``frames``, every frame handed to user space."""
    blocks = -(-len(frames) * V2_FRAME // V2_BLOCK)
    offsets = frame_offsets(V2_BLOCK, blocks, V2_FRAME)[: len(frames)]
    ring = memoryview(bytearray(blocks * V2_BLOCK))
    for at, frame in zip(offsets, frames, strict=True):
        struct.pack_into("=IIIHH", ring, at, 1, len(frame), len(frame), NET_OFFSET, NET_OFFSET)
        struct.pack_into("=ixB", ring, at + 36, IFINDEX, 0)
        ring[at + NET_OFFSET : at + NET_OFFSET + len(frame)] = frame
    assert FRAME.unpack_from(ring, offsets[0])[2:] == (NET_OFFSET, IFINDEX, 0)
    return ring, offsets


def flip_source(frame: bytes) -> bytes:
    return frame[:12] + bytes([frame[12] ^ 0x80]) + frame[13:]


def rearm(ring: memoryview, offsets: list[int]) -> None:
    for at in offsets:
        struct.pack_into("=I", ring, at, 1)


def blocks_for(scenario: str, packets: int) -> list[list[bytes]]:
    rng = random.Random(1)
    count = max(1, packets // FRAMES_PER_BLOCK)
    if scenario == "repeats":
        frames = [
            syn(bytes([198, 19, 0, 10 + i % 200]), ATCP_PORTS[i * 7 % len(ATCP_PORTS)])
            for i in range(FRAMES_PER_BLOCK)
        ]
        return [frames] * count
    return [
        [
            syn(rng.randbytes(4), ATCP_PORTS[i * 7 % len(ATCP_PORTS)])
            for i in range(FRAMES_PER_BLOCK)
        ]
        for _ in range(count)
    ]


def cpu_us_per_packet(work: Callable[[], None], packets: int) -> float:
    start = time.process_time()
    work()
    return (time.process_time() - start) / packets * 1e6


def measure(scenario: str, packets: int, runs: int) -> dict[str, float]:
    """Inside the lab: a fresh pipeline per run; the best run of each stage."""
    best: dict[str, float] = {}
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            conf = Path(tmp) / "portsentinel.conf"
            conf.write_text(SCENARIOS[scenario])
            setup = load_setup(str(conf), "atcp")
            pipe = Pipeline.start(setup, LogSink(io.StringIO()), None)
            settle_gc()  # as the daemon does once started
            try:
                figures = _stages(pipe, blocks_for(scenario, packets))
            finally:
                pipe.close()
        for stage, value in figures.items():
            best[stage] = min(value, best.get(stage, value))
    return best


def _stages(pipe: Pipeline, frame_blocks: list[list[bytes]]) -> dict[str, float]:
    rings = [ring_block(frames) for frames in frame_blocks]
    views = [memoryview(f) for frames in frame_blocks[:50] for f in frames]
    packets = len(rings) * FRAMES_PER_BLOCK
    counted = {IFINDEX}

    def uncounted(_ifindex: int) -> bool:
        return False

    def noop(_ring: memoryview, _start: int, _length: int, _ifindex: int) -> None:
        return None

    def walk_only() -> None:
        for ring in rings:
            walk_block(ring, 0, noop, counted, uncounted)

    def decode_only() -> None:
        for view in views:
            decode_ip(view)

    decoded = [decode_ip(view) for view in views]
    out = {
        "ring walk": cpu_us_per_packet(walk_only, packets),
        "decode": cpu_us_per_packet(decode_only, len(views)),
    }
    # The whole path first, so the detector state it builds is the state feed() then sees.
    pipe._set_clock()  # the daemon's own per-turn steps, driven by hand

    def whole() -> None:
        for ring in rings:
            pipe._set_clock()
            walk_block(ring, 0, pipe._on_packet, counted, uncounted)
            pipe.outputs.flush()

    out["whole path"] = cpu_us_per_packet(whole, packets)
    # Other sources than the V3 pass's (one bit of the address flipped), so that the V2 pass
    # meets as many new sources as the V3 pass did, not only their repeats.
    frame_rings = [frame_ring([flip_source(f) for f in frames]) for frames in frame_blocks]

    def walk_frames_only() -> None:
        for ring, offsets in frame_rings:
            walk_frames(ring, offsets, [0], noop, counted=counted, uncounted=uncounted)

    def whole_frames() -> None:
        for ring, offsets in frame_rings:
            pipe._set_clock()
            walk_frames(ring, offsets, [0], pipe._on_packet, counted=counted,
                        uncounted=uncounted)  # fmt: skip
            pipe.outputs.flush()

    for ring, offsets in frame_rings:
        rearm(ring, offsets)
    out["ring walk (V2 frames)"] = cpu_us_per_packet(walk_frames_only, packets)
    for ring, offsets in frame_rings:
        rearm(ring, offsets)
    out["whole path (V2 frames)"] = cpu_us_per_packet(whole_frames, packets)
    detector, now = pipe.detector, time.monotonic()
    stats = detector.stats
    counts = {"probes": stats.probes, "records held": stats.held}

    def feed_only() -> None:
        for pkt in decoded:
            if pkt is not None:
                detector.feed(pkt, now)

    out["Detector.feed"] = cpu_us_per_packet(feed_only, len(decoded))
    return {**out, **counts}  # the counts of the whole path's pass


def child(args: argparse.Namespace) -> int:
    for scenario in SCENARIOS:
        figures = measure(scenario, args.packets, args.runs)
        shown = ", ".join(
            f"{k} {v:.3f} µs"
            if "µs" not in k and k not in {"probes", "records held"}
            else f"{k} {v:,.0f}"
            for k, v in figures.items()
        )
        per_second = 1e6 / figures["whole path"]
        print(f"{scenario}: {shown}; whole path = {per_second:,.0f} packets/s on one core")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--packets", type=int, default=400_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    reason = netns.unavailable()
    if reason:
        print(f"hot_path: {reason}", file=sys.stderr)
        return 1
    with netns.Lab.create("pshp") as lab:
        argv = [sys.executable, __file__, "--child", "--packets", str(args.packets),
                "--runs", str(args.runs)]  # fmt: skip
        print(f"  $ ip netns exec {lab.target} {shlex.join(argv)}")
        done = subprocess.run(["ip", "netns", "exec", lab.target, *argv], check=False)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
