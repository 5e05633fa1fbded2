"""What 100k active bans cost every packet that is NOT banned: nft set vs iptables rules.

For each configuration a fresh two-namespace lab (``tests/e2e/netns.py``; root, iproute2, nft,
iptables-restore and a C compiler) gets its bans in the target namespace:

- ``none``: no bans, no firewall at all;
- ``nft-empty``: the project's nft table, chains and sets (``NftablesBackend.start``), no bans;
- ``nft-set``: 100k elements in the project's nft set, loaded by ``NftablesBackend.block_many``
  (in-process libnftables, run by this script in the target namespace);
- ``iptables``: 100k rules ``-A INPUT -s ADDR/32 -m comment --comment portsentinel -j DROP``
  (the shape the iptables backend gives a ban without ipset), loaded with ``iptables-restore``
  from a generated file;
- ``iptables-legacy`` (with ``--legacy``): the same file through ``iptables-legacy-restore``.

The banned addresses are 198.19.0.0/16 (65,536, all there are) and the next ones from
198.18.100.0 on. The C sender (``tests/e2e/synflood.c``) then floods the target with TCP SYNs to
ports 1-100 (nothing listens) from 1,000 forged sources in 198.18.1.0/22, none of them banned,
as fast as it goes, for ``--seconds``. Measured per run: the sender's rate, the segments the
target's TCP took in (``Tcp InSegs`` of the target namespace: delivered past the firewall), and
the kernel time of the sender's CPU from ``/proc/stat`` (softirq, and system + softirq) divided
by the frames sent. On veth the receive path runs in the sender's softirq, so with the sender
pinned to one CPU (the last) the whole packet path is counted there, and it slows the sender:
the rate is the packet path's ceiling.
Before the flood, 1,000 frames from banned sources check that the bans do drop.

Prints the commands it ran and a table (median and best of ``--runs``); asserts nothing.
Usage: python bench/ban_path.py [--bans N] [--seconds S] [--runs R] [--legacy]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))

import floodlab
import netns

BANNED_FIRST = (ipaddress.IPv4Address("198.19.0.0"), 1 << 16)  # then the next range
BANNED_NEXT = ipaddress.IPv4Address("198.18.100.0")
CLEAN_FIRST = "198.18.1.0"  # 1,000 unbanned sources: 198.18.1.0 - 198.18.4.231
CLEAN_SOURCES = 1000
PORTS = (1, 100)
CHECK_FRAMES = 1000
MAX_FRAMES = 20_000_000
LOAD_TIMEOUT = 600.0
UNBANNED = ("none", "nft-empty")
# On veth the target's receive path runs in the sender's softirq: pinning the sender puts the
# whole packet path on one CPU, whose counters other work on the machine disturbs less.
SENDER_CPU = (os.cpu_count() or 1) - 1


def ban_addresses(count: int) -> list[str]:
    """``count`` distinct addresses: 198.19.0.0/16 first, then on from 198.18.100.0."""
    first, room = BANNED_FIRST
    if count > room + (int(ipaddress.IPv4Address("198.18.255.255")) - int(BANNED_NEXT) + 1):
        raise ValueError(f"{count} bans do not fit the ranges")
    head = [str(first + n) for n in range(min(count, room))]
    return head + [str(BANNED_NEXT + n) for n in range(count - len(head))]


# --- loading the bans ----------------------------------------------------------------------


def load_nft_here(count: int, namespace: str) -> None:
    """The child's side (``--load-nft N --netns NAME``): create the project's nft structure
    and add ``count`` bans with ``block_many``; prints a JSON report. It refuses to run
    anywhere but in the named lab namespace (the one ``ip netns exec NAME`` put it in)."""
    try:
        inside = os.stat("/proc/self/ns/net").st_ino == os.stat(f"/run/netns/{namespace}").st_ino
    except OSError:
        inside = False
    if not inside:
        sys.exit(f"refusing to load bans: not inside network namespace {namespace!r}")
    from portsentinel.block.base import BanSpec  # noqa: PLC0415 - only the child needs them
    from portsentinel.block.nftables import NftablesBackend  # noqa: PLC0415
    from portsentinel.block.runner import Runner  # noqa: PLC0415

    bans = [BanSpec.create(address, port=80, timeout=3600.0) for address in ban_addresses(count)]
    backend = NftablesBackend(Runner())
    backend.start()
    started = time.monotonic()
    outcomes = backend.block_many(bans)
    seconds = time.monotonic() - started
    failed = [str(o) for o in outcomes if isinstance(o, Exception)]
    backend.stop()
    print(json.dumps({"seconds": seconds, "added": len(bans) - len(failed), "failed": failed[:3]}))


def load_nft(lab: netns.Lab, count: int, _tmp: Path) -> float:
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--load-nft",
        str(count),
        "--netns",
        lab.target,
    ]
    print(f"  load: ip netns exec {lab.target} {shlex.join(argv)}")
    done = lab.run(lab.target, argv, timeout=LOAD_TIMEOUT)
    report = json.loads(done.stdout)
    if report["added"] != count:
        raise RuntimeError(f"nft bans: {report}")
    seconds: float = report["seconds"]
    return seconds


def iptables_file(addresses: Sequence[str]) -> str:
    rules = "".join(
        f"-A INPUT -s {a}/32 -m comment --comment portsentinel -j DROP\n" for a in addresses
    )
    chains = "".join(f":{chain} ACCEPT [0:0]\n" for chain in ("INPUT", "FORWARD", "OUTPUT"))
    return f"*filter\n{chains}{rules}COMMIT\n"


def iptables_loader(program: str) -> Callable[[netns.Lab, int, Path], float]:
    def load(lab: netns.Lab, count: int, tmp: Path) -> float:
        path = tmp / "bans.rules"
        path.write_text(iptables_file(ban_addresses(count)))
        argv = [program, "-w", "5", str(path)]
        print(f"  load: ip netns exec {lab.target} {shlex.join(argv)}  ({count} rules)")
        started = time.monotonic()
        lab.run(lab.target, argv, timeout=LOAD_TIMEOUT)
        seconds = time.monotonic() - started
        listing = [program.replace("-restore", ""), "-w", "5", "-S", "INPUT"]
        rules = lab.run(lab.target, listing, timeout=LOAD_TIMEOUT).stdout.count("-j DROP")
        if rules != count:
            raise RuntimeError(f"{program}: {rules} DROP rules in INPUT, not {count}")
        return seconds

    return load


def load_nothing(_lab: netns.Lab, _count: int, _tmp: Path) -> float:
    return 0.0


# --- measuring -------------------------------------------------------------------------------


def cpu_ticks(cpu: int) -> tuple[int, int]:
    """(softirq, system + softirq) of one CPU, in USER_HZ ticks, from ``/proc/stat``."""
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name == f"cpu{cpu}":
            system, softirq = int(values[2]), int(values[6])
            return softirq, system + softirq
    raise RuntimeError(f"no cpu{cpu} line in /proc/stat")


def in_segments(lab: netns.Lab) -> int:
    """``Tcp InSegs`` of the target namespace: segments its TCP took in."""
    lines = lab.run(lab.target, ["cat", "/proc/net/snmp"], timeout=10).stdout.splitlines()
    names, values = [line.split() for line in lines if line.startswith("Tcp:")][:2]
    return int(values[names.index("InSegs")])


@dataclass(frozen=True)
class Run:
    pps: float
    delivered_pps: float
    softirq_us: float  # per frame sent
    kernel_us: float  # system + softirq, per frame sent
    softnet_drops: int


def clean_flood(seconds: float) -> floodlab.Flood:
    """The measured traffic: unbanned forged sources, the sender pinned to the last CPU."""
    return floodlab.Flood(
        first=CLEAN_FIRST,
        sources=CLEAN_SOURCES,
        count=MAX_FRAMES,
        seconds=seconds,
        ports=PORTS,
        cpu=SENDER_CPU,
    )


def flood_once(lab: netns.Lab, binary: Path, seconds: float) -> Run:
    tick = 1e6 / os.sysconf("SC_CLK_TCK")
    before = in_segments(lab), cpu_ticks(SENDER_CPU), floodlab.softnet_drops()
    sent = floodlab.result(floodlab.start(lab, binary, clean_flood(seconds)), seconds + 60)
    soft, kernel = cpu_ticks(SENDER_CPU)
    delivered = in_segments(lab) - before[0]
    frames = max(1, sent.sent)
    return Run(
        pps=sent.pps,
        delivered_pps=delivered / sent.seconds,
        softirq_us=(soft - before[1][0]) * tick / frames,
        kernel_us=(kernel - before[1][1]) * tick / frames,
        softnet_drops=floodlab.softnet_drops() - before[2],
    )


def bans_bite(lab: netns.Lab, binary: Path, bans: int) -> str:
    """Send frames from banned sources: how many got past the firewall (expected: none)."""
    banned = "198.19.0.0" if bans else CLEAN_FIRST
    flood = floodlab.Flood(
        first=banned, sources=CHECK_FRAMES, count=CHECK_FRAMES, seconds=5, ports=PORTS
    )
    before = in_segments(lab)
    floodlab.result(floodlab.start(lab, binary, flood), 30)
    passed = in_segments(lab) - before
    which = "banned" if bans else "unbanned"
    return f"{passed} of {CHECK_FRAMES} frames from {which} sources reached TCP"


# --- the run ---------------------------------------------------------------------------------

LOADERS: dict[str, Callable[[netns.Lab, int, Path], float]] = {
    "none": load_nothing,
    "nft-empty": load_nft,  # the project's table, chains and sets, no element
    "nft-set": load_nft,
    "iptables": iptables_loader("iptables-restore"),
    "iptables-legacy": iptables_loader("iptables-legacy-restore"),
}


def unavailable(configs: Sequence[str]) -> str | None:
    reason = floodlab.unavailable()
    needed = [
        "nft",
        *(("iptables-restore",) if "iptables" in configs else ()),
        *(("iptables-legacy-restore",) if "iptables-legacy" in configs else ()),
    ]
    missing = [tool for tool in needed if shutil.which(tool) is None]
    return reason or (f"needs {', '.join(missing)}" if missing else None)


def run_config(config: str, args: argparse.Namespace, binary: Path, tmp: Path) -> list[Run]:
    count = 0 if config in UNBANNED else args.bans
    with netns.Lab.create("psb") as lab:
        print(f"{config}: fresh lab, target namespace {lab.target}")
        loaded = LOADERS[config](lab, count, tmp)
        if count:
            print(f"  {count} bans loaded in {loaded:.2f} s")
        print(f"  check: {bans_bite(lab, binary, count)}")
        print(f"  flood: {floodlab.command_text(lab, binary, clean_flood(args.seconds))}")
        runs = []
        for n in range(args.runs):
            run = flood_once(lab, binary, args.seconds)
            print(
                f"  run {n + 1}: sent {run.pps / 1e3:.1f} kpps, delivered "
                f"{run.delivered_pps / 1e3:.1f} kpps, softirq {run.softirq_us:.2f} µs/frame, "
                f"system+softirq {run.kernel_us:.2f} µs/frame, softnet drops "
                f"{run.softnet_drops}"
            )
            runs.append(run)
        return runs


def summary(results: dict[str, list[Run]], bans: int) -> None:
    """Median and best run of each config: other work on a shared machine only ever adds time
    to the sender's CPU, so the best run is the closest to the packet path's own cost."""
    print(
        f"\n{bans} bans where there are bans; unbanned SYN flood; kernel time on the sender's CPU"
    )
    print(
        f"{'config':<16} {'kpps median':>12} {'best':>7} {'softirq µs/pkt median':>22} "
        f"{'best':>7} {'sys+softirq µs/pkt median':>26} {'best':>7}"
    )
    for config, runs in results.items():
        rates = [r.delivered_pps / 1e3 for r in runs]
        softirq = [r.softirq_us for r in runs]
        kernel = [r.kernel_us for r in runs]
        print(
            f"{config:<16} {statistics.median(rates):>12.1f} {max(rates):>7.1f} "
            f"{statistics.median(softirq):>22.2f} {min(softirq):>7.2f} "
            f"{statistics.median(kernel):>26.2f} {min(kernel):>7.2f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bans", type=int, default=100_000, help="bans to load (default 100k)")
    parser.add_argument("--seconds", type=float, default=10.0, help="flood length per run")
    parser.add_argument("--runs", type=int, default=3, help="floods per config")
    parser.add_argument("--legacy", action="store_true", help="also iptables-legacy-restore")
    parser.add_argument("--load-nft", type=int, metavar="N", help=argparse.SUPPRESS)
    parser.add_argument("--netns", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_nft is not None:
        load_nft_here(args.load_nft, args.netns or "")
        return 0
    configs = [
        "none",
        "nft-empty",
        "nft-set",
        "iptables",
        *(["iptables-legacy"] if args.legacy else []),
    ]
    reason = unavailable(configs)
    if reason:
        print(f"cannot run: {reason}")
        return 1
    print(f"machine: {os.cpu_count()} CPUs, kernel {os.uname().release}")
    print(f"load average before: {floodlab.load_average()} (other work on the machine skews rates)")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        binary = floodlab.build(tmp)
        print(f"sender: cc -O2 -Wall -Wextra -o {binary} {floodlab.SOURCE_C}")
        results = {config: run_config(config, args, binary, tmp) for config in configs}
    summary(results, args.bans)
    print(f"load average after: {floodlab.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
