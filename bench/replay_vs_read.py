"""``portsentinel replay`` of a real full-range nmap capture against a bare loop that only
reads the file (issue 14: replay at <= 3x the read loop).

The capture: ``nmap -n -Pn -sS -T5 -p-`` from the scanner namespace of a two-namespace lab
(``tests/e2e/netns.py``; needs root, iproute2, nmap, tcpdump) against a target where nothing
listens, recorded by tcpdump on the target's veth (pcap, snaplen 128, 0 drops required):
65,535 SYNs and 65,535 RSTs. Made once and cached in ``/tmp/portsentinel-bench-cache`` (no
root needed after that); ``--remake`` records it again, ``--capture FILE`` uses another file.

What is timed, in this process, rounds interleaved, the median printed (wall-clock time, and
the process's CPU time, which other jobs on a shared machine disturb less):
  read      the bare read loop: ``for frame in open_capture(path): pass`` (the project's own
            reader yielding every frame, nothing else done with it); the ratio's denominator
  struct    for reference, a minimal loop over the file's bytes: one ``struct.unpack_from``
            of each pcap record header and a slice of the frame (pcap files only)
  replay    ``portsentinel replay --config C --mode atcp,audp CAPTURE`` through the CLI's own
            entry point (``main``; configuration, both passes, decisions and output, stdout
            written to /dev/null), by default and with ``--every-probe``
for two configurations: the embedded defaults (atcp watches ports below 1024: ~1,000
decisions) and every port watched (ADVANCED_PORTS_TCP/UDP 65536: ~65,000 decisions, all but
the first "already blocked"). The interpreter's start and imports are not included.

Prints figures; asserts nothing. Usage: python bench/replay_vs_read.py [--rounds N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))

import netns
import nmapcapture

from portsentinel.capture.pcapfile import open_capture
from portsentinel.cli.main import build_parser
from portsentinel.cli.main import main as cli_main

CACHE = Path("/tmp/portsentinel-bench-cache")
CAPTURE = CACHE / "nmap-sS-T5-p-.pcap"
CONFIGS = {
    "defaults": "",
    "every port": 'ADVANCED_PORTS_TCP="65536"\nADVANCED_PORTS_UDP="65536"\n',
}
_PCAP_RECORD = struct.Struct("<IIII")


def make_capture(path: Path) -> None:
    reason = nmapcapture.unavailable()
    if reason:
        raise SystemExit(f"cannot record the capture: {reason} (or pass --capture FILE)")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with netns.Lab.create("psb") as lab:
        nmap = nmapcapture.full_range_syn(lab.TARGET4)
        print(f"recording: ip netns exec {lab.scanner} {' '.join(nmap)}", file=sys.stderr)
        made = nmapcapture.record(lab, partial, nmap)
    partial.rename(path)
    print(f"recorded {made.captured:,} packets in {made.seconds:.1f} s to {path}", file=sys.stderr)


def read_loop(path: str) -> None:
    with open_capture(path) as capture:
        for _frame in capture:
            pass


def struct_loop(path: str) -> None:
    """Every record of a little-endian microsecond pcap, as plainly as Python reads it."""
    data = Path(path).read_bytes()
    record, end, off = _PCAP_RECORD.unpack_from, len(data), 24
    while off + 16 <= end:
        _sec, _usec, caplen, _orig = record(data, off)
        _frame = data[off + 16 : off + 16 + caplen]
        off += 16 + caplen


def replay(argv: list[str]) -> Callable[[], None]:
    def run() -> None:
        with (
            open("/dev/null", "w", encoding="utf-8") as out,
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(io.StringIO()) as err,
        ):
            status = cli_main(argv)
        if status != 0:
            raise SystemExit(f"replay failed ({status}): {err.getvalue()}")

    return run


def every_probe_supported() -> bool:
    """The tree measured may predate ``--every-probe`` (then every probe is its default)."""
    _args, unknown = build_parser().parse_known_args(["replay", "--every-probe", "x.pcap"])
    return not unknown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--capture", type=Path, default=None, help="use this file instead")
    parser.add_argument("--remake", action="store_true", help="record the cached capture again")
    args = parser.parse_args()
    path = args.capture or CAPTURE
    if args.capture is None and (args.remake or not path.exists()):
        make_capture(path)
    capture = str(path)
    with open_capture(capture) as reader:
        packets = sum(1 for _ in reader)
        pcap = reader.info.format == "pcap" and reader.info.byte_order == "little"
    every = every_probe_supported()
    with tempfile.TemporaryDirectory() as tmp:
        runs: dict[str, Callable[[], None]] = {"read": lambda: read_loop(capture)}
        if pcap:
            runs["struct"] = lambda: struct_loop(capture)
        for name, text in CONFIGS.items():
            conf = Path(tmp) / f"{name.replace(' ', '-')}.conf"
            conf.write_text(text, encoding="utf-8")
            base = ["replay", "--config", str(conf), "--mode", "atcp,audp"]
            runs[f"{name}: replay"] = replay([*base, capture])
            if every:
                runs[f"{name}: replay --every-probe"] = replay([*base, "--every-probe", capture])
        wall: dict[str, list[float]] = {name: [] for name in runs}
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                began, began_cpu = time.perf_counter(), time.process_time()
                run()
                cpu[name].append(time.process_time() - began_cpu)
                wall[name].append(time.perf_counter() - began)
    print(f"python {sys.version.split()[0]}; {capture}: {packets:,} packets; medians of "
          f"{args.rounds} rounds; x read: over the read loop's median")  # fmt: skip
    print(f"{'':<34} {'--------- wall ---------':>26}  {'---- CPU ----':>14}")
    print(
        f"{'what':<34} {'seconds':>8} {'us/packet':>10} {'x read':>6}  {'seconds':>7} {'x read':>6}"
    )
    read_wall, read_cpu = statistics.median(wall["read"]), statistics.median(cpu["read"])
    for name in runs:
        seconds, used = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"{name:<34} {seconds:8.3f} {seconds / packets * 1e6:10.2f} "
              f"{seconds / read_wall:6.2f}  {used:7.3f} {used / read_cpu:6.2f}")  # fmt: skip
    if not every:
        print("(no --every-probe in this tree: its default prints every probe)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
