"""A real scan inside forged floods shaped against the ban budget: how soon the scanner is
banned, and what the flood's chosen addresses get.

Each run gets a fresh lab (``tests/e2e/netns.py``: two namespaces joined by veth, 198.18.0.0/15
only, no default route) and a fresh daemon (``portsentinel run --mode atcp``, embedded defaults,
no events stream: as the packaged service runs). The C sender (``tests/e2e/synflood.c``) floods
the target from forged sources as fast as it goes; once the daemon writes about them,
``nmap -sS -T4 -p 1-1000`` scans from 198.18.0.2, again every 2.5 s while it is not banned
(``banlab.scan_until_banned``; scans "-1": not banned within 15 s).
Printed per shape and run: seconds from the first scan's start to the scanner's element in the
ban set (polled every 20 ms), scans needed, and the ban set's elements, with how many last
longer than 10 minutes (``detect.budget.SHORT_BAN``).

Shapes (``--shapes``): ``twenty_ports`` (4,096 sources x 20 ports, shuffled), ``slash16``
(65,536 sources x 5 ports, shuffled), ``nmap_like`` (2,048 sources x 64 ports in a row),
``one_port`` (130,816 sources x 1 port, shuffled: ``tests/e2e/test_flood_hostile.py``'s).

    sudo python3 bench/flood_shapes.py [--runs 3] [--src OTHER/src]

``--src`` runs the daemon from another source tree (before/after). Root, iproute2, nmap, nft,
a C compiler; every packet stays inside the lab.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests" / "e2e"), str(HERE.parent / "tests")]

import floodlab  # noqa: E402
import netns  # noqa: E402
from banlab import nft_elements, scan_until_banned  # noqa: E402
from daemon import Daemon  # noqa: E402

SCANNER = "198.18.0.2"
SHORT = 600
SHAPES = {  # sources, ports per source, shuffled
    "twenty_ports": (4096, 20, True),
    "slash16": (65536, 5, True),
    "nmap_like": (2048, 64, False),
    "one_port": (floodlab.SPOOF4_COUNT, 1, True),
}


def one_run(shape: str, binary: Path) -> tuple[float | None, int, int, int]:
    sources, per_source, shuffle = SHAPES[shape]
    with tempfile.TemporaryDirectory(prefix="floodshape") as tmp, netns.Lab.create("pbf") as lab:
        daemon = Daemon.start(lab, Path(tmp) / "d", mode="atcp", events=False, measured=False)
        flood = floodlab.Flood(sources=sources, per_source=per_source, shuffle=shuffle,
                               count=50_000_000, seconds=25.0)  # fmt: skip
        sender = floodlab.start(lab, binary, flood)
        try:
            daemon.wait_for_line("attackalert:", 30)
            try:
                scans, seconds = scan_until_banned(lab, SCANNER, "1-1000", each=2.5, deadline=15)
                banned: float | None = seconds
            except AssertionError:
                scans, banned = -1, None
            elements = nft_elements(lab, 4) or {}
            long_bans = sum(1 for left in elements.values() if left is None or left > SHORT)
            return banned, scans, len(elements), long_bans
        finally:
            netns.Lab.stop(sender)
            daemon.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--src", help="run the daemon from this src/ tree")
    args = parser.parse_args()
    if args.src:
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(Path(args.src).resolve()), os.environ.get("PYTHONPATH", "")]
        )
    reason = floodlab.unavailable()
    if reason:
        print(f"cannot run: {reason}")
        return 2
    with tempfile.TemporaryDirectory(prefix="floodshape-bin") as tmp:
        binary = floodlab.build(Path(tmp))
        print(f"load {floodlab.load_average()}, src {args.src or 'this tree'}")
        for shape in args.shapes.split(","):
            results = [one_run(shape, binary) for _ in range(args.runs)]
            times = [r[0] for r in results if r[0] is not None]
            shown = ", ".join("-" if r[0] is None else f"{r[0]:.2f}" for r in results)
            median = f"{statistics.median(times):.2f} s" if times else "never"
            print(
                f"{shape:13} banned after {shown} s (median {median}); scans "
                f"{[r[1] for r in results]}; elements {[r[2] for r in results]}, longer than "
                f"{SHORT} s {[r[3] for r in results]}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
