"""The 90 %-ACK mix with ACK_PROBES: what established traffic costs the daemon, and what forged
ACKs to closed ports (an ACK scan from many sources) cost it.

The throughput benchmark's mixed pool (``bench/c_reader/sender.c``, per 50 frames: 45 pure
ACKs to 22/80/443 from forged sources, 1 UDP probe, 4 SYN probes) at 100 kpps, 500,000 frames,
into ``portsentinel run --mode atcp`` (BLOCK_TCP/BLOCK_UDP 0, as the throughput benchmark runs
it, pinned to CPU 1; the sender on CPU 0). Two shapes, each in a fresh lab:

- ``services``: something listens on 22, 80 and 443 in the target, as on a host whose
  established traffic goes to them: the ACKs are a connection's segments to a port in use;
- ``closed``: nothing listens there (the throughput benchmark's lab): to the kernel the ACKs
  are an ACK scan of closed ports from 2,000 forged sources.

Printed per run: the daemon's CPU per frame the target received, the ring's and the NFLOG
group's packets, ACK decisions. ``--compare SRC`` runs the same with the daemon from another
``src/`` tree (before ACK_PROBES), alternating.

    sudo python3 bench/ack_mix.py [--runs 3] [--compare OTHER/src]

Root, iproute2, nft, a C compiler; every packet stays inside the lab.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests" / "e2e"), str(HERE.parent / "tests")]

import ctools  # noqa: E402
import throughput_parts as parts  # noqa: E402

LISTENER = """
import socket, sys, time
servers = [socket.create_server(("", port), backlog=64) for port in (22, 80, 443)]
print("ready", flush=True)
time.sleep(float(sys.argv[1]))
"""


def echo(_line: str) -> None:
    """The commands are not printed here (``throughput.py`` prints them)."""


def one_run(sender: Path, base: Path, shape: str, n: int, tag: int) -> dict[str, float]:
    with parts.lab("pam") as lab:
        if shape == "services":
            proc = lab.start(lab.target, [sys.executable, "-c", LISTENER, "120"],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        with parts.daemon(lab, base / f"d-{tag}-{shape}-{n}", parts.LOAD, echo) as d:
            subject = parts.DaemonSubject(lab, d)
            tools = parts.Tools(sender, sender, sender, sender, None)
            cost = parts.measure_cost("mixed", "portsentinel", subject,
                                      lambda lab: parts.mixed_load(lab, tools, echo))  # fmt: skip
            stats = subject.stats()
    return {
        "us_per_frame": cost.us_per_frame,
        "frames": cost.frames,
        "ring": stats.get("ring_handled", 0),
        "nflog": stats.get("unsolicited_packets", 0),
        "ack": stats.get("probes_ack", 0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compare", help="also run the daemon from this src/ tree")
    args = parser.parse_args()
    reason = parts.unavailable()
    if reason:
        print(f"cannot run: {reason}")
        return 2
    subjects: list[tuple[str, str | None]] = [("this tree", None)]
    if args.compare:
        subjects.append((args.compare, str(Path(args.compare).resolve())))
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    own = os.environ.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory(prefix="ackmix") as tmp:
        base = Path(tmp)
        _reader, sender = ctools.build(base, echo)
        print(f"load {os.getloadavg()[0]:.2f}, mixed pool 500,000 frames at 100 kpps")
        for n in range(args.runs):
            for tag, (name, src) in enumerate(subjects):
                os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (src, own) if p)
                for shape in ("services", "closed"):
                    result = one_run(sender, base, shape, n, tag)
                    results.setdefault((name, shape), []).append(result)
        os.environ["PYTHONPATH"] = own
    for (name, shape), runs in results.items():
        cost = [r["us_per_frame"] for r in runs]
        print(f"{name}, {shape}: daemon CPU {' / '.join(f'{c:.3f}' for c in cost)} µs per frame "
              f"(median {statistics.median(cost):.3f}); ring {[int(r['ring']) for r in runs]}, "
              f"NFLOG {[int(r['nflog']) for r in runs]}, ACK probes "
              f"{[int(r['ack']) for r in runs]}")  # fmt: skip
    print(f"load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
