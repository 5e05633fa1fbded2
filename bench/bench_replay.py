"""Replay throughput: packets per second through decode + detect (and through the whole replay).

Builds a synthetic capture (Ethernet frames, IPv4 and IPv6) in a temporary directory:
SYN probes from many sources to many ports, FIN/NULL/XMAS probes, UDP probes, and a majority of
established-traffic ACKs, then measures
  1. decode + detect on frames already in memory (the core's cost per packet), and
  2. the whole ``replay`` over the file (reader + decode + detect + JSON events to a buffer, a
     source's repeats summarised as by default).
Prints figures; asserts nothing. Usage: python bench/bench_replay.py [--packets N]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import struct
import sys
import tempfile
import time

import dpkt

from portsentinel.alert.events import event_line
from portsentinel.cli.replay_capture import InUse, run_replay
from portsentinel.decode import decode_ethernet
from portsentinel.detect.detector import Detector
from portsentinel.detect.settings import DetectorConfig
from portsentinel.errors import DecodeError
from portsentinel.model import Decision, Mode

TARGET4 = bytes([198, 18, 0, 1])
TARGET6 = bytes.fromhex("fd00005e000000000000000000000001")


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_frame(src: bytes, dst: bytes, sport: int, dport: int, flags: int) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 1024, 0, 0)
    return _ip_frame(src, dst, 6, tcp)


def udp_frame(src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8, 0)
    return _ip_frame(src, dst, 17, udp)


def _ip_frame(src: bytes, dst: bytes, proto: int, payload: bytes) -> bytes:
    if len(src) == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0, src, dst)
        ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
        ethertype = 0x0800
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(payload), proto, 64, src, dst)
        ethertype = 0x86DD
    eth = b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + struct.pack("!H", ethertype)
    return eth + ip + payload


def synthetic_frames(count: int, seed: int = 7) -> list[bytes]:
    """A mix: 60% ACK (established), 25% SYN probes, 5% FIN/NULL/XMAS, 10% UDP; 10% IPv6."""
    rng = random.Random(seed)
    frames = []
    for _ in range(count):
        v6 = rng.random() < 0.1
        if v6:
            src = bytes.fromhex("fd00005e0000000000000000") + rng.randbytes(4)
            dst = TARGET6
        else:
            src = bytes([198, 19, rng.randrange(256), rng.randrange(1, 255)])
            dst = TARGET4
        r = rng.random()
        sport = rng.randrange(1024, 65536)
        if r < 0.60:
            frames.append(tcp_frame(src, dst, sport, rng.choice((22, 80, 443)), 0x10))
        elif r < 0.85:
            frames.append(tcp_frame(src, dst, sport, rng.randrange(1, 65536), 0x02))
        elif r < 0.90:
            flags = rng.choice((0x01, 0x00, 0x29))
            frames.append(tcp_frame(src, dst, sport, rng.randrange(1, 1024), flags))
        else:
            frames.append(udp_frame(src, dst, sport, rng.randrange(1, 65536)))
    return frames


def detector() -> Detector:
    config = DetectorConfig(
        tcp_mode=Mode.ATCP, udp_mode=Mode.AUDP, scan_trigger=3, block_tcp=1, block_udp=1
    )
    return Detector(config, in_use_tcp=frozenset({22, 80, 443}), in_use_udp=frozenset({53}))


def bench_core(frames: list[bytes]) -> tuple[float, int]:
    det = detector()
    feed = det.feed
    decisions = 0
    start = time.perf_counter()
    for i, frame in enumerate(frames):
        try:
            pkt = decode_ethernet(frame)
        except DecodeError:
            continue
        if pkt is not None:
            decisions += len(feed(pkt, 1_000_000.0 + i * 1e-6))
    return time.perf_counter() - start, decisions


def bench_replay_file(frames: list[bytes]) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "synthetic.pcap")
        with open(path, "wb") as fh:
            writer = dpkt.pcap.Writer(fh)
            for i, frame in enumerate(frames):
                writer.writepkt(frame, ts=1_000_000.0 + i * 1e-6)
        sink = io.StringIO()

        def emit(decision: Decision) -> None:
            sink.write(event_line(decision, decision.time))
            sink.write("\n")
            if sink.tell() > 1 << 24:
                sink.seek(0)
                sink.truncate()

        start = time.perf_counter()
        in_use = InUse(frozenset({22, 80, 443}), frozenset({53}))
        stats = run_replay(path, detector(), emit, in_use=in_use, summarise=lambda _held: None)
        return time.perf_counter() - start, stats.packets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=1_000_000)
    args = parser.parse_args()
    print(f"building {args.packets:,} synthetic frames ...", file=sys.stderr)
    frames = synthetic_frames(args.packets)
    core_time, decisions = bench_core(frames)
    file_time, packets = bench_replay_file(frames)
    print(f"python {sys.version.split()[0]}, {args.packets:,} frames (60% ACK, 40% probes)")
    print(
        f"decode + detect (frames in memory): {args.packets / core_time:,.0f} packets/s "
        f"({core_time / args.packets * 1e6:.2f} us/packet; {decisions:,} decisions)"
    )
    print(
        f"whole replay (read pcap + decode + detect + JSON events): "
        f"{packets / file_time:,.0f} packets/s ({file_time / packets * 1e6:.2f} us/packet)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
