"""What KERNEL_HOLD costs a real client: the first client of a service that starts just after
the client's SYN arrived, with the hold off and on.

Per case and run, a fresh lab (``tests/e2e/netns.py``) and a fresh daemon (``run --mode
atcp,audp``, the embedded defaults plus the case's settings) in its target namespace; a client
in the scanner namespace (198.18.0.3) connects to port 800 (watched by atcp) with a 30 s
timeout, and an echo service starts listening on that port ``--delay`` seconds (default 0.2)
after the client began. Printed: how the connect ended (connected or refused) and after how
long, per run, and the median per case.

- ``off``: KERNEL_HOLD=0. The SYN meets no socket: the kernel answers RST and the client fails
  at once (a real client then reports "connection refused" or retries on its own).
- ``on, released``: KERNEL_HOLD=1, BLOCK_MIN_PORTS=2: the kernel drops the SYN and holds the
  client; the daemon finds one port too weak to ban and releases it at once; the SYN's first
  retransmission (1 s later) meets the service.
- ``on, below trigger``: KERNEL_HOLD=1, SCAN_TRIGGER=2: one probe is below the trigger, so the
  daemon neither bans nor releases (the SYN's retransmissions meet a port in use by then: no
  probes); the client waits for the hold to end (KERNEL_HOLD_TIME, ``--hold``, default 10s)
  and its next retransmission after that (Linux retransmits a SYN after 1, 3, 7, 15 s...).
- ``off, below trigger``: the same settings without the hold, for comparison.

With the embedded defaults alone (BLOCK_MIN_PORTS 1, SCAN_TRIGGER 0) that client is banned at
its first SYN whether the hold is on or not: atcp's rule, PortSentry's too.

Root, iproute2, nft. Prints figures and the commands; asserts nothing.
Usage: python3 bench/kernel_hold.py [--runs N] [--delay S] [--hold S]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))

import netns
from banlab import add_scanner_address
from daemon import Daemon

CLIENT = "198.18.0.3"
PORT = 800

SERVICE = """
import socket, sys, time
time.sleep(float(sys.argv[1]))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2])))
s.listen(4)
s.settimeout(60)
try:
    s.accept()[0].close()
except OSError:
    pass
"""

CONNECT = """
import json, socket, sys, time
s = socket.socket()
s.bind((sys.argv[2], 0))
s.settimeout(30)
started = time.monotonic()
try:
    s.connect((sys.argv[1], int(sys.argv[3])))
    outcome = "connected"
except OSError as exc:
    outcome = type(exc).__name__
print(json.dumps({"outcome": outcome, "seconds": time.monotonic() - started}))
"""


def one(settings: dict[str, str], delay: float) -> dict[str, object]:
    with netns.Lab.create("pskh") as lab, tempfile.TemporaryDirectory() as tmp:
        add_scanner_address(lab, CLIENT)
        daemon = Daemon.start(lab, Path(tmp), settings=settings, events=False, measured=False)
        try:
            service = lab.start(lab.target, [sys.executable, "-c", SERVICE, str(delay), str(PORT)])
            done = lab.run(lab.scanner, [sys.executable, "-c", CONNECT, lab.TARGET4, CLIENT,
                                         str(PORT)], timeout=60)  # fmt: skip
            lab.stop(service)
        finally:
            daemon.stop()
        result: dict[str, object] = json.loads(done.stdout)
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.2, help="seconds before it listens")
    parser.add_argument("--hold", default="10s", help="KERNEL_HOLD_TIME")
    args = parser.parse_args()
    hold = {"KERNEL_HOLD": "1", "KERNEL_HOLD_TIME": args.hold}
    cases = {
        "off": {"BLOCK_MIN_PORTS": "2"},
        "on, released": {**hold, "BLOCK_MIN_PORTS": "2"},
        "off, below trigger": {"SCAN_TRIGGER": "2"},
        "on, below trigger": {**hold, "SCAN_TRIGGER": "2"},
    }
    print(f"client {CLIENT} -> port {PORT}; the service listens {args.delay}s after the "
          f"client began; {args.runs} runs per case")  # fmt: skip
    print("client: python3 -c CONNECT (socket.connect, 30 s timeout); daemon: portsentinel run "
          "--mode atcp,audp, embedded defaults plus the case's settings")  # fmt: skip
    summary = []
    for name, settings in cases.items():
        results = [one({**settings}, args.delay) for _ in range(args.runs)]
        for result in results:
            print(f"  {name:20} {result['outcome']:22} after {float(result['seconds']):.3f} s")  # type: ignore[arg-type]
        outcomes = "/".join(sorted({str(r["outcome"]) for r in results}))
        median = statistics.median(float(r["seconds"]) for r in results)  # type: ignore[arg-type]
        summary.append((name, settings, outcomes, median))
    print("\n| case | settings | outcome | after (median) |\n|---|---|---|---|")
    for name, settings, outcomes, median in summary:
        shown = " ".join(f"{k}={v}" for k, v in settings.items())
        print(f"| {name} | {shown} | {outcomes} | {median:.3f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
