"""End to end: classic-mode Listeners scanned by real nmap inside a two-namespace lab.

Root only (see ``netns.py``): the target namespace runs Listeners on TCP 1, 79, 111 and UDP 69
(wildcard addresses, both families) and prints one JSON line per hit; the scanner namespace
runs ``nmap -sT`` and ``nmap -sU`` against it over IPv4 and IPv6. Every packet stays inside the
lab (198.18.0.0/24, fd00:5e::/64, no default route).
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import netns
import pytest

pytestmark = [pytest.mark.e2e]
_REASON = netns.unavailable() or (None if shutil.which("nmap") else "needs nmap")
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

TCP_PORTS = (1, 79, 111)
UDP_PORTS = (69,)
CLOSED_PORT = 2000
BANNER = "portsentinel-e2e\r\n"
DEADLINE = 20.0
NMAP_TIMEOUT = 60

# Runs inside the target namespace: Listeners driven by a selector, one JSON line per event,
# until stdin closes (or a safety lifetime ends).
TARGET = r"""
import json, os, selectors, sys, time
from portsentinel.capture.listeners import Listeners
from portsentinel.model import addr_text

cfg = json.loads(sys.argv[1])
def emit(**record):
    print(json.dumps(record), flush=True)

lst = Listeners(cfg["tcp"], cfg["udp"])
results = lst.open()
emit(bind=[[r.proto.key, r.port, r.family, r.ok, r.error] for r in results])
sel = selectors.DefaultSelector()
for sock in lst.sockets():
    sel.register(sock, selectors.EVENT_READ)
sel.register(0, selectors.EVENT_READ)
end = time.monotonic() + cfg["lifetime"]
while time.monotonic() < end:
    for key, _ in sel.select(0.5):
        if key.fileobj == 0:
            if not os.read(0, 4096):
                end = 0
            continue
        for hit in lst.handle(key.fileobj, time.monotonic()):
            emit(hit=hit.proto.key, src=addr_text(hit.src), sport=hit.sport,
                 dst=addr_text(hit.dst), dport=hit.dport)
            lst.respond(hit, cfg["banner"])
        for port in lst.take_aborted():
            emit(aborted=port)
    lst.expire(time.monotonic())
emit(stats=vars(lst.stats), pending=lst.pending_count)
lst.close()
"""


class Target:
    """The target-side process and the JSON records it printed so far."""

    def __init__(self, lab: netns.Lab) -> None:
        config = {"tcp": TCP_PORTS, "udp": UDP_PORTS, "banner": BANNER, "lifetime": 300}
        self.proc = lab.start(
            lab.target,
            [sys.executable, "-c", TARGET, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        self._partial = b""
        self.records: list[dict[str, Any]] = []

    def wait_for(self, done: Callable[[list[dict[str, Any]]], bool], what: str) -> None:
        """Read records until ``done(records)`` holds; fail at the deadline or on exit."""
        deadline = time.monotonic() + DEADLINE
        with selectors.DefaultSelector() as sel:
            sel.register(self._fd, selectors.EVENT_READ)
            while not done(self.records):
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"target never reported {what}; records: {self.records}")
                if sel.select(left) and not self._read():
                    pytest.fail(f"target exited before {what}; records: {self.records}")

    def _read(self) -> bool:
        chunk = os.read(self._fd, 65536)
        if not chunk:
            return False
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        self.records.extend(json.loads(line) for line in lines if line.strip())
        return True

    def hits(self, src: str) -> list[dict[str, Any]]:
        return [r for r in self.records if "hit" in r and r["src"] == src]

    def finish(self) -> dict[str, Any]:
        """Close stdin so the target exits; return its final stats record."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.wait_for(lambda records: any("stats" in r for r in records), "its stats")
        self.proc.wait(DEADLINE)
        return next(r for r in self.records if "stats" in r)


@pytest.fixture(scope="module")
def lab() -> Iterator[netns.Lab]:
    with netns.Lab.create(prefix="psl") as built:
        yield built


@pytest.fixture
def target(lab: netns.Lab) -> Iterator[Target]:
    tgt = Target(lab)
    tgt.wait_for(lambda records: any("bind" in r for r in records), "its bind results")
    yield tgt
    netns.Lab.stop(tgt.proc)


def nmap(lab: netns.Lab, *args: str) -> dict[tuple[int, str], str]:
    """Run nmap in the scanner namespace; the port states of its grepable output."""
    argv = ["timeout", str(NMAP_TIMEOUT), "nmap", "-n", "-Pn", "--max-retries", "1", "-oG", "-"]
    done = lab.run(lab.scanner, [*argv, *args], timeout=NMAP_TIMEOUT + 10)
    states = re.findall(r"(\d+)/([a-z|]+)/(tcp|udp)/", done.stdout)
    return {(int(port), proto): state for port, state, proto in states}


def test_every_port_binds_on_both_families(target: Target) -> None:
    (record,) = [r for r in target.records if "bind" in r]
    assert len(record["bind"]) == 2 * (len(TCP_PORTS) + len(UDP_PORTS))
    assert all(ok for _proto, _port, _family, ok, _error in record["bind"]), record


@pytest.mark.parametrize(
    ("family", "scanner", "local"),
    [
        pytest.param([], netns.Lab.SCANNER4, netns.Lab.TARGET4, id="ipv4"),
        pytest.param(["-6"], netns.Lab.SCANNER6, netns.Lab.TARGET6, id="ipv6"),
    ],
)
def test_nmap_scans_are_seen_from_the_scanner(
    lab: netns.Lab, target: Target, family: list[str], scanner: str, local: str
) -> None:
    tcp_list = ",".join(str(p) for p in (*TCP_PORTS, CLOSED_PORT))
    tcp = nmap(lab, *family, "-sT", "-p", tcp_list, local)
    udp = nmap(lab, *family, "-sU", "-p", ",".join(map(str, UDP_PORTS)), local)

    assert {port: tcp[(port, "tcp")] for port in TCP_PORTS} == dict.fromkeys(TCP_PORTS, "open")
    assert tcp[(CLOSED_PORT, "tcp")] == "closed"
    # A UDP port that answers (our banner) is "open", not "open|filtered".
    assert {port: udp[(port, "udp")] for port in UDP_PORTS} == dict.fromkeys(UDP_PORTS, "open")

    expected = {("tcp", p) for p in TCP_PORTS} | {("udp", p) for p in UDP_PORTS}

    def all_seen(_records: list[dict[str, Any]]) -> bool:
        return expected <= {(h["hit"], h["dport"]) for h in target.hits(scanner)}

    target.wait_for(all_seen, f"hits from {scanner} on {sorted(expected)}")
    hits = target.hits(scanner)
    assert {(h["hit"], h["dport"]) for h in hits} == expected  # nothing on the closed port
    assert {h["dst"] for h in hits} == {local}  # UDP too: pktinfo, not the wildcard address
    assert all(h["sport"] > 0 for h in hits)

    # Every connection was answered and closed; nothing piled up or failed.
    stats = target.finish()
    assert stats["pending"] == 0
    counters = stats["stats"]
    assert counters["accepted"] >= len(TCP_PORTS)
    assert counters["datagrams"] >= len(UDP_PORTS)
    assert (counters["evicted"], counters["expired"], counters["accept_errors"]) == (0, 0, 0)
    # Linux hands out connections the peer already reset, so nmap's fast RST never makes an
    # aborted accept here (it does on the BSDs).
    assert counters["aborted"] == 0
    assert not [r for r in target.records if "aborted" in r]
