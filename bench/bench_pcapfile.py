"""Capture-file reading speed: dpkt's readers against ``portsentinel.capture.pcapfile``.

Writes a pcap and a pcapng of N Ethernet frames (default 200 000; sizes from 60 to 1514
bytes, mostly small, as a scan looks) with dpkt's own writers into a temporary directory,
then reads each file several times with both readers, doing nothing with the frames, and
prints the best time per packet. Prints figures; asserts nothing.
Usage: python bench/bench_pcapfile.py [--packets N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import BinaryIO

import dpkt

from portsentinel.capture.pcapfile import open_capture

START = 1_700_000_000.0


def frames(count: int) -> list[bytes]:
    """Frame sizes as a scan looks: mostly minimum-size probes, some full-size data."""
    rng = random.Random(7)
    sizes = [60, 60, 60, 66, 74, 90, 590, 1514]
    return [rng.randbytes(rng.choice(sizes)) for _ in range(count)]


def write_files(directory: str, count: int) -> tuple[str, str]:
    data = frames(count)
    pcap = os.path.join(directory, "bench.pcap")
    pcapng = os.path.join(directory, "bench.pcapng")
    with open(pcap, "wb") as file:
        writer = dpkt.pcap.Writer(file)
        writer.writepkts((START + i * 1e-4, frame) for i, frame in enumerate(data))
    with open(pcapng, "wb") as file:
        writer = dpkt.pcapng.Writer(file)
        writer.writepkts((START + i * 1e-4, frame) for i, frame in enumerate(data))
    return pcap, pcapng


DpktReader = Callable[[BinaryIO], Iterable[tuple[float, bytes]]]


def read_dpkt(path: str, reader: DpktReader) -> int:
    count = 0
    with open(path, "rb") as file:
        for _ts, _frame in reader(file):
            count += 1
    return count


def read_ours(path: str) -> int:
    count = 0
    with open_capture(path) as capture:
        for _ts, _linktype, _frame in capture:
            count += 1
    return count


def best_us_per_packet(run: Callable[[], int], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        began = time.perf_counter()
        packets = run()
        best = min(best, (time.perf_counter() - began) / packets * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        pcap, pcapng = write_files(directory, args.packets)
        print(f"{args.packets} packets; best of {args.rounds} rounds; µs per packet")
        for label, path, dpkt_reader in (
            ("pcap  ", pcap, dpkt.pcap.Reader),
            ("pcapng", pcapng, dpkt.pcapng.Reader),
        ):
            theirs = best_us_per_packet(partial(read_dpkt, path, dpkt_reader), args.rounds)
            ours = best_us_per_packet(partial(read_ours, path), args.rounds)
            print(
                f"{label}  dpkt {theirs:.3f}  portsentinel {ours:.3f}  "
                f"speed-up x{theirs / ours:.2f}"
            )


if __name__ == "__main__":
    main()
