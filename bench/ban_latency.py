"""Ban latency and ban throughput of the live daemon, measured where the ban acts: the nft set.

Builds a two-namespace lab (see ``tests/e2e/netns.py``; needs root, iproute2 and nft), starts
the daemon (``atcp,audp``, nftables backend, SCAN_TRIGGER 0) in the target namespace and
``nft monitor new elements`` next to it, which reports each element the moment the kernel
commits it. A raw sender in the scanner namespace forges TCP SYNs (IP_HDRINCL) from fresh
source addresses in 198.19.0.0/16, which no rule of the lab protects.

1. Latency: one SYN from each of N fresh sources in turn (default 30), each sent once the
   previous one is banned; from the send (wall clock in the sender) to the monitor's line
   (wall clock on arrival; both namespaces share the clock). Prints the median, the 95th
   percentile and the extremes.
2. Throughput: one SYN from each of M distinct sources (default 1000) as fast as the sender
   goes; bans per second from the first ban to the last, and from the first send.
3. Bulk (``--bulk N``, default 20000; needs a C compiler): one SYN from each of N distinct
   forged sources from the C sender (``tests/e2e/synflood.c``, at its maximum rate, ports
   1-1000 in random order), which nothing in Python could send fast enough. From the first
   frame sent to the last element in the set (``nft -j list set``, polled every 20 ms) and
   to the last ban active in the store (the daemon's SQLite file, read-only, polled
   likewise): bans per second to the kernel and to the store.

The budget is raised far above the burst (BAN_RATE, BAN_BURST, MAX_ACTIVE_BANS) and one
probe is strong evidence (BAN_STRONG_PORTS 1), so nothing is refused: the figures are the
daemon's own speed. Prints figures and the commands used; asserts nothing.
Usage: python bench/ban_latency.py [--samples N] [--burst M]
"""

from __future__ import annotations

import argparse
import re
import shlex
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))

import floodlab
import netns
from banlab import RAW_SENDER, burst, nft_elements
from daemon import Daemon

SETTINGS = {
    "BAN_RATE": "100000",
    "BAN_BURST": "100000",
    "MAX_ACTIVE_BANS": "100000",
    "BAN_STRONG_PORTS": "1",
}
PORT = 80  # watched by atcp
MONITOR = ("nft", "monitor", "new", "elements")
ADDRESS = re.compile(r"\b(\d+\.\d+\.\d+\.\d+)\b")
WAIT = 10.0  # for one ban (latency) or per 1000 bans (burst)


class ElementWatch:
    """``nft monitor`` in the target: the arrival time of each address added to a set.

    A subclass watches something else by naming its ``monitor`` command, the ``prefixes`` of
    the lines that count and where in such a line the addresses are (``addresses``)."""

    monitor: tuple[str, ...] = MONITOR
    prefixes: tuple[str, ...] = ("add element",)

    def __init__(self, lab: netns.Lab) -> None:
        self.proc = lab.start(lab.target, list(self.monitor), stdout=subprocess.PIPE, text=True)
        self.seen: dict[str, float] = {}
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def addresses(self, line: str) -> list[str]:
        return ADDRESS.findall(line.split("{", 1)[-1])  # the elements, after the set's name

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.time()
            if line.startswith(self.prefixes):
                with self._changed:
                    for address in self.addresses(line):
                        self.seen.setdefault(address, now)
                    self._changed.notify_all()

    def wait_for(self, addresses: Sequence[str], deadline: float) -> bool:
        """True once every address was seen; False at the deadline."""
        end = time.monotonic() + deadline
        with self._changed:
            while not all(a in self.seen for a in addresses):
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True


def ready(watch: ElementWatch, lab: netns.Lab) -> None:
    """Wait until the monitor reports (a throw-away element of our own), so none is missed."""
    probe = "198.19.255.254"
    add = ["nft", "add", "element", "inet", "portsentinel", "ban4", f"{{ {probe} timeout 5s }}"]
    end = time.monotonic() + WAIT
    while probe not in watch.seen and time.monotonic() < end:
        lab.run(lab.target, add)
        watch.wait_for([probe], 0.2)
    lab.run(lab.target, ["nft", "delete", "element", "inet", "portsentinel", "ban4",
                         f"{{ {probe} }}"], check=False)  # fmt: skip


def latency(lab: netns.Lab, watch: ElementWatch, samples: int) -> list[float]:
    argv = [sys.executable, "-c", RAW_SENDER, "serve", lab.TARGET4]
    sender = lab.start(lab.scanner, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert sender.stdin is not None
    assert sender.stdout is not None
    print(f"  sender: ip netns exec {lab.scanner} python -c RAW_SENDER serve {lab.TARGET4}")
    found = []
    for n in range(samples):
        source = f"198.19.1.{n + 1}"
        sender.stdin.write(f"{source} {PORT}\n")
        sender.stdin.flush()
        sent = float(sender.stdout.readline())
        if watch.wait_for([source], WAIT):
            found.append(watch.seen[source] - sent)
        else:
            print(f"  {source}: not banned within {WAIT}s")
    sender.stdin.close()
    netns.Lab.stop(sender)
    return found


def throughput(lab: netns.Lab, watch: ElementWatch, count: int) -> None:
    sources = [f"198.19.{10 + n // 250}.{1 + n % 250}" for n in range(count)]
    started = time.time()
    proc = burst(lab, sources, [PORT])
    print(f"  sender: ip netns exec {lab.scanner} python -c RAW_SENDER burst {lab.TARGET4} "
          f"{PORT} 0 30 198.19.10.1 ... {sources[-1]}  ({count} sources)")  # fmt: skip
    sent = proc.communicate(timeout=60)[0].strip()
    done = watch.wait_for(sources, WAIT * max(1, count // 1000))
    times = sorted(watch.seen[s] for s in sources if s in watch.seen)
    print(f"  sent {sent} SYNs; banned {len(times)} of {count}" + ("" if done else " (gave up)"))
    if len(times) > 1:
        span = times[-1] - times[0]
        print(f"  first ban to last: {span * 1000:.0f} ms -> {(len(times) - 1) / span:.0f} bans/s")
        total = times[-1] - started
        print(f"  first send to last ban: {total * 1000:.0f} ms -> {len(times) / total:.0f} bans/s")


def bulk(lab: netns.Lab, state: Path, count: int) -> None:
    """N distinct forged sources at the C sender's maximum: bans/s to the kernel and store."""
    with tempfile.TemporaryDirectory() as build:
        binary = floodlab.build(Path(build))
        flood = floodlab.Flood(sources=count, count=count, seconds=30.0)
        print(f"  sender: {floodlab.command_text(lab, binary, flood)}")
        started = time.time()
        proc = floodlab.start(lab, binary, flood)
        kernel_at = store_at = None
        in_kernel = in_store = 0
        deadline = started + 60 + count / 1000
        while time.time() < deadline and (kernel_at is None or store_at is None):
            now = time.time()
            if kernel_at is None:
                in_kernel = len(nft_elements(lab, 4) or {})
                if in_kernel >= count:
                    kernel_at = now
            if store_at is None:
                in_store = active_bans(state)
                if in_store >= count:
                    store_at = now
            time.sleep(0.02)
        sent = floodlab.result(proc, 60)
    print(f"  sent {sent.sent} frames in {sent.seconds * 1000:.0f} ms ({sent.pps:.0f} pps)")
    for what, at, got in (("kernel", kernel_at, in_kernel), ("store", store_at, in_store)):
        if at is None:
            print(f"  {what}: {got} of {count} bans within the deadline")
        else:
            span = at - started
            print(f"  first frame sent -> last ban in the {what}: {span * 1000:.0f} ms "
                  f"-> {count / span:.0f} bans/s")  # fmt: skip


def active_bans(state: Path) -> int:
    try:
        with sqlite3.connect(f"file:{state / 'portsentinel.db'}?mode=ro", uri=True) as conn:
            return int(
                conn.execute("SELECT count(*) FROM bans WHERE state = 'active'").fetchone()[0]
            )
    except sqlite3.Error:
        return 0


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--samples", type=int, default=30, help="fresh sources for latency")
    parser.add_argument("--burst", type=int, default=1000, help="distinct sources in the burst")
    parser.add_argument("--bulk", type=int, default=20000, help="distinct sources, C sender")
    args = parser.parse_args()
    reason = netns.unavailable()
    if reason:
        print(f"cannot run: {reason}")
        return 1
    with tempfile.TemporaryDirectory() as tmp, netns.Lab.create("psl") as lab:
        daemon = Daemon.start(lab, Path(tmp), settings=SETTINGS)
        try:
            argv = daemon.proc.args
            assert isinstance(argv, list)
            print("daemon:", shlex.join(str(a) for a in argv))
            print("config:", " ".join(f'{k}="{v}"' for k, v in SETTINGS.items()),
                  'SCAN_TRIGGER="0" (every path setting in a temporary directory)')  # fmt: skip
            print(f"monitor: ip netns exec {lab.target} {' '.join(MONITOR)}")
            watch = ElementWatch(lab)
            ready(watch, lab)
            print(f"latency: first SYN sent -> element in the set, {args.samples} fresh sources")
            found = latency(lab, watch, args.samples)
            if found:
                ms = [x * 1000 for x in found]
                print(f"  median {statistics.median(ms):.2f} ms, p95 {percentile(ms, 0.95):.2f} ms,"
                      f" min {min(ms):.2f} ms, max {max(ms):.2f} ms ({len(ms)} bans)")  # fmt: skip
            print(f"throughput: one SYN from each of {args.burst} distinct sources, unpaced")
            throughput(lab, watch, args.burst)
            netns.Lab.stop(watch.proc)
            if args.bulk:
                print(f"bulk: one SYN from each of {args.bulk} distinct forged sources, C sender")
                bulk(lab, Path(tmp), args.bulk)
        finally:
            code, stderr = daemon.stop()
        drops = re.search(r"kernel_drops=(\d+)", stderr)
        print(f"daemon exit {code}; kernel drops {drops.group(1) if drops else '?'}")
        for line in stderr.splitlines():
            if "statistics:" in line or "WARNING" in line or "ERROR" in line or "budget" in line:
                print(f"  daemon: {line.split(chr(9))[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
