"""What each kernel question on a first ban's path costs, warm and after the daemon sat idle.

A scan's first probe finds the daemon idle: its code and data, and the kernel's, are out of the
caches. This times, in a fresh lab's target namespace (``tests/e2e/netns.py``; the nftables
backend's tables made there, with the ingress copies and the SSH-peer sets), each step a
first ban takes, back to back (``gap 0``) and each after ``--gap`` seconds asleep or spent
spinning in Python (``-gap``: the CPU kept busy, so not its idle state):

- ``sock_diag port``: ``SocketTable.port_in_use`` (the in-use re-check: IPv4 and IPv6 dumps);
- ``conntrack lookup``: ``Conntrack.lookup_reply`` (a UDP probe's reply check);
- ``ssh-peer set``: ``SetReader.contains`` (the never-block check's question);
- ``element inet+netdev`` / ``element inet``: ``ElementWriter.add_one`` with and without the
  netdev copy in the transaction;
- and, for scale, a batch message built in Python, ``getppid()`` and a UDP ``sendto``.

Median and maximum in microseconds per step. Pinned to ``--cpu`` (default 1). Needs root,
iproute2 and nft. Usage: python3 bench/first_ban_parts.py [--samples 15] [--gap 0.2] [--cpu 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))

import netns

# Runs in the target namespace; prints one JSON object: {gap: {step: [microseconds...]}}.
CHILD = r"""
import json, os, socket, sys, time
from portsentinel.block.nfnetlink import ElementWriter, SetReader, batch, element_message
from portsentinel.block.nftables import NftablesBackend
from portsentinel.block.runner import Runner
from portsentinel.block.table import ConntrackChain
from portsentinel.host.conntrack import Conntrack
from portsentinel.host.inuse import SocketTable
from portsentinel.model import Proto

samples, gap = int(sys.argv[1]), float(sys.argv[2])
NftablesBackend(Runner(), ingress=True).start()
problem = ConntrackChain(ssh_ports=(22,)).install()
assert problem is None, problem
table, ct = SocketTable(), Conntrack()
both, inet = ElementWriter("portsentinel", mirror="portsentinel"), ElementWriter("portsentinel")
for writer in (both, inet):
    writer.prepare("ban4", 4, 600_000)
    writer.open()
reader = SetReader("portsentinel")
reader.prepare("ssh4", 4)
reader.touch("ssh4")
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
src, dst = bytes([198, 18, 0, 2]), bytes([198, 18, 0, 1])
count = [0]

def key():
    count[0] += 1
    return bytes([198, 19, count[0] // 256 % 256, count[0] % 256])

def build():
    return batch([element_message("portsentinel", "ban4", [(key(), 600_000)], 1)], 0)

steps = {
    "python: a batch message built": build,
    "syscall: getppid": os.getppid,
    "syscall: udp sendto": lambda: udp.sendto(b"x", ("198.18.0.1", 9)),
    "sock_diag port (IPv4, IPv6)": lambda: table.port_in_use(Proto.TCP, 4000 + count[0] % 100),
    "conntrack lookup": lambda: ct.lookup_reply(17, src, 40000, dst, 53),
    "ssh-peer set": lambda: reader.contains("ssh4", key()),
    "element inet+netdev": lambda: both.add_one("ban4", key(), 600_000),
    "element inet": lambda: inet.add_one("ban4", key(), 600_000, mirror=False),
}

def spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass

out = {}
for wait in (0.0, gap, -gap):
    out[str(wait)] = {}
    for name, step in steps.items():
        times = []
        for _ in range(samples + 2):
            if wait > 0:
                time.sleep(wait)
            elif wait < 0:
                spin(-wait)
            start = time.perf_counter_ns()
            step()
            times.append((time.perf_counter_ns() - start) / 1000)
        out[str(wait)][name] = times[2:]  # the first two warm the step up
print(json.dumps(out))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--samples", type=int, default=15, help="timings per step and gap")
    parser.add_argument("--gap", type=float, default=0.2, help="seconds idle before a step")
    parser.add_argument("--cpu", default="1", help="the CPU to pin to ('' for none)")
    args = parser.parse_args()
    reason = netns.unavailable()
    if reason:
        print(f"first_ban_parts: {reason}", file=sys.stderr)
        return 1
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"kernel {platform.release()} (uname -r); load average {load}")
    pin = ["taskset", "-c", args.cpu] if args.cpu else []
    with netns.Lab.create("psf") as lab:
        argv = [*pin, sys.executable, "-c", CHILD, str(args.samples), str(args.gap)]
        done = lab.run(lab.target, argv, timeout=600)
    results = json.loads(done.stdout)
    for wait, steps in results.items():
        label = {"0.0": "back to back"}.get(wait, f"after {abs(float(wait))} s " + (
            "asleep" if float(wait) > 0 else "spinning"))  # fmt: skip
        print(f"\n{label}: median / max in us")
        for name, times in steps.items():
            times.sort()
            print(f"  {name:<32} {times[len(times) // 2]:8.1f} / {times[-1]:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
