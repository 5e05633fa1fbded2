"""A banned source that keeps sending: what its packets cost the daemon and the kernel.

Each run gets a fresh lab (``tests/e2e/netns.py``: two namespaces joined by veth,
198.18.0.0/15 only, no default route) and a fresh daemon (``portsentinel run --mode atcp``,
embedded defaults, no events stream, outside coverage). ``nmap -sS -T4 -p 1-50`` from
198.18.0.2 gets that address banned; then the C sender (``tests/e2e/synflood.c``) floods the
target from the same address, SYNs to ports 1-1000 (all watched), as fast as it goes for
``--seconds``. Printed per run: frames sent; the share that reached the daemon's capture (its
rings' kernel count, before and after); the daemon's CPU (user + system) per frame sent; the
machine's softirq time per frame sent (``/proc/stat``: both cores, everything else on the
machine included, so read it as an upper bound); the ban's ingress counter where there is one.

``--compare SRC`` runs every run twice, with this tree and with the daemon from another
``src/`` tree (``git worktree add /tmp/before REV``, then ``--compare /tmp/before/src``),
alternating, so both meet the same machine.

    sudo python3 bench/banned_flood.py [--runs 3] [--seconds 5] [--compare OTHER/src]

Root, iproute2, nmap, nft, a C compiler; every packet stays inside the lab.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests" / "e2e"), str(HERE.parent / "tests")]

import floodlab  # noqa: E402
import netns  # noqa: E402
from banlab import cli, nft_elements, wait_until  # noqa: E402
from daemon import Daemon  # noqa: E402

SCANNER = "198.18.0.2"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def softirq_seconds() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(fields[7]) / TICKS  # cpu  user nice system idle iowait irq softirq


def ring_packets(lab: netns.Lab, daemon: Daemon) -> int:
    done = cli(lab, daemon, "status", "--json")
    return int(json.loads(done.stdout)["counters"]["kernel_packets"])


def ingress_count(lab: netns.Lab) -> int | None:
    done = lab.run(lab.target, ["nft", "-j", "list", "set", "netdev", "portsentinel", "ban4"],
                   check=False, timeout=10)  # fmt: skip
    if done.returncode != 0:
        return None
    for item in json.loads(done.stdout)["nftables"]:
        for elem in item.get("set", {}).get("elem", []):
            if isinstance(elem, dict) and elem["elem"]["val"] == SCANNER:
                return int(elem["elem"]["counter"]["packets"])
    return None


def one_run(src: str | None, binary: Path, seconds: float) -> dict[str, float]:
    env_before = os.environ.get("PYTHONPATH")
    if src:
        os.environ["PYTHONPATH"] = os.pathsep.join([src, env_before or ""])
    try:
        with tempfile.TemporaryDirectory(prefix="bflood") as tmp, netns.Lab.create("pbb") as lab:
            daemon = Daemon.start(lab, Path(tmp) / "d", mode="atcp", events=False,
                                  measured=False)  # fmt: skip
            try:
                lab.run(lab.scanner, ["timeout", "60", "nmap", "-n", "-Pn", "-sS", "-T4",
                                      "--max-retries", "0", "-p", "1-50", lab.TARGET4],
                        timeout=70)  # fmt: skip
                wait_until(lambda: SCANNER in (nft_elements(lab, 4) or {}), "the ban")
                time.sleep(1.0)  # the worker's renewal and first repair pass
                ring0, cpu0, soft0 = ring_packets(lab, daemon), cpu_seconds(daemon.pid), 0.0
                soft0 = softirq_seconds()
                flood = floodlab.Flood(first=SCANNER, sources=1, count=100_000_000,
                                       seconds=seconds, ports=(1, 1000))  # fmt: skip
                sent = floodlab.result(floodlab.start(lab, binary, flood), seconds + 30)
                time.sleep(0.5)  # what is in flight reaches the rings
                soft1, cpu1 = softirq_seconds(), cpu_seconds(daemon.pid)
                ring1 = ring_packets(lab, daemon)
                counted = ingress_count(lab)
            finally:
                daemon.stop()
    finally:
        if src:
            if env_before is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = env_before
    frames = max(1, sent.sent)
    return {
        "sent": sent.sent,
        "pps": sent.pps,
        "share": (ring1 - ring0) / frames,
        "cpu_us": (cpu1 - cpu0) / frames * 1e6,
        "softirq_us": (soft1 - soft0) / frames * 1e6,
        "ingress": -1 if counted is None else counted,
    }


def show(name: str, results: list[dict[str, float]]) -> None:
    def col(key: str, fmt: str) -> str:
        values = [r[key] for r in results]
        each = " / ".join(format(v, fmt) for v in values)
        return f"{each} (median {statistics.median(values):{fmt}})"

    print(f"{name}:")
    print(f"  frames sent        {col('sent', '.0f')}, at {col('pps', '.0f')} frames/s")
    print(f"  reached the rings  {col('share', '.2%')}")
    print(f"  daemon CPU         {col('cpu_us', '.3f')} us per frame sent")
    print(f"  softirq (machine)  {col('softirq_us', '.3f')} us per frame sent")
    print(f"  ingress counter    {col('ingress', '.0f')} (-1: no ingress copy)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--compare", help="also run the daemon from this src/ tree")
    args = parser.parse_args()
    reason = floodlab.unavailable()
    if reason:
        print(f"cannot run: {reason}")
        return 2
    subjects: list[tuple[str, str | None]] = [("this tree", None)]
    if args.compare:
        subjects.append((args.compare, str(Path(args.compare).resolve())))
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in subjects}
    with tempfile.TemporaryDirectory(prefix="bflood-bin") as tmp:
        binary = floodlab.build(Path(tmp))
        print(f"load {floodlab.load_average()}, {args.seconds:g} s floods, {args.runs} runs")
        for _ in range(args.runs):
            for name, src in subjects:
                results[name].append(one_run(src, binary, args.seconds))
    for name, _ in subjects:
        show(name, results[name])
    print(f"load {floodlab.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
