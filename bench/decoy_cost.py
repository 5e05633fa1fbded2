"""What decoy groups (detect/decoys.py) cost the detector, per packet, in process.

Three shapes, each on a fresh detector (embedded defaults, this host 198.18.0.1, ports 22 and
80 in use), best of five runs:

- ``in-use SYN``: a SYN to a port in use (a new connection to a service: the decoy module
  notes its TTL as the source's earlier traffic);
- ``forged flood``: 20,000 SYNs to one closed port, each from a new address and its own
  source port (each a first probe: a decision and a ban request each);
- ``repeat flood``: the same 20,000 addresses again (second probes: the co-occurrence counts
  run, with the port's last 2 sources);
- ``one-port flood``: as the forged flood, every SYN from source port 40000: copies of one
  probe to the module, so the sources are linked into groups (of 64 at most) and each
  decision names its group: the worst case.

Run it with each tree's ``src`` on PYTHONPATH to compare (the machine is shared: run both a
few times, alternating).
"""

from __future__ import annotations

import timeit

from portsentinel.detect.detector import Detector
from portsentinel.detect.settings import DetectorConfig
from portsentinel.model import SYN, Packet

HOST = bytes([198, 18, 0, 1])
SOURCES = 20_000
RUNS = 5


def fresh() -> Detector:
    return Detector(DetectorConfig(), local={HOST}, in_use_tcp=frozenset({22, 80}))


def packets(one_port: bool = False) -> list[Packet]:
    return [
        (6, (0xC6130000 + i).to_bytes(4, "big"), HOST,
         40000 if one_port else 1024 + i * 7919 % 60000, 7, SYN, 64, False, 0)
        for i in range(SOURCES)
    ]  # fmt: skip


def in_use_syn() -> float:
    det = fresh()
    pkt = (6, bytes([198, 18, 0, 9]), HOST, 40000, 80, SYN, 64, False, 0)
    n = 200_000
    return min(timeit.repeat(lambda: det.feed(pkt, 1.0), number=n, repeat=RUNS)) / n


def flood(rounds: int, one_port: bool = False) -> float:
    """Per packet of the last round, on a fresh detector each run."""
    best = float("inf")
    pkts = packets(one_port)
    for _ in range(RUNS):
        det = fresh()
        for r in range(rounds - 1):
            for i, pkt in enumerate(pkts):
                det.feed(pkt, r + i * 1e-5)
        start = timeit.default_timer()
        for i, pkt in enumerate(pkts):
            det.feed(pkt, rounds + i * 1e-5)
        best = min(best, (timeit.default_timer() - start) / len(pkts))
    return best


def main() -> None:
    print(f"in-use SYN:   {in_use_syn() * 1e9:7.0f} ns per packet")
    print(f"forged flood: {flood(1) * 1e6:7.2f} us per packet")
    print(f"repeat flood: {flood(2) * 1e6:7.2f} us per packet")
    print(f"one-port flood: {flood(1, one_port=True) * 1e6:5.2f} us per packet")


if __name__ == "__main__":
    main()
