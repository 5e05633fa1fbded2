"""End to end: QUIET_REPEATS, a responded source's repeats counted in the kernel.

In the namespace lab, the daemon with BLOCK_TCP 0 (alert only: nothing stops the scanner's
packets) and no events stream, as the packaged service runs:
- a real nmap scan is alerted; once the record gate holds its repeats back, the scanner's TCP
  goes quiet: its next scan of 2,000 ports (about 1,000 of them watched) never reaches the
  capture rings (the daemon's kernel
  packet count stays put) while the quiet element counts them, and ``status`` shows the count;
- the mark that keeps those packets out of the capture never reaches the host's own rules: a
  rule of the lab's own table later in prerouting counts no marked packet, and the quiet
  source still connects to a service of the host;
- quiet is per protocol: the same scanner's first UDP probes are judged (BLOCK_UDP 1: banned).

Root, iproute2, nmap and nft (see ``banlab.py``); every packet stays inside the lab.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import netns
import pytest
from banlab import (
    cli,
    connect_from,
    netdev_elements,
    nft_elements,
    start_service,
    unavailable,
    wait_until,
)
from daemon import Daemon

from portsentinel.model import QUIET_MARK

pytestmark = [pytest.mark.e2e]
_REASON = unavailable(("nmap", "nft"))
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

Lab = netns.Lab
REPEAT_PORTS = 2000
SETTINGS = {"BLOCK_TCP": "0", "BLOCK_UDP": "1", "QUIET_REPEATS": "5m"}
WATCH = (
    "add table inet labwatch\n"
    "add chain inet labwatch pre { type filter hook prerouting priority -100; policy accept; }\n"
    f"add rule inet labwatch pre meta mark {QUIET_MARK:#x} counter\n"
)


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    with Lab.create("psq") as built:
        yield built


def quiet_counts(lab: netns.Lab, family: int) -> dict[tuple[str, str], int]:
    """The quiet set's elements, (address, protocol) -> packets counted ({} without it)."""
    elems = netdev_elements(lab, "quiet6" if family == 6 else "quiet4")
    return {tuple(e["val"]["concat"]): int(e["counter"]["packets"]) for e in elems}


def scan(lab: netns.Lab, source: str, ports: str, *extra: str) -> None:
    six = ":" in source
    dst = Lab.TARGET6 if six else Lab.TARGET4
    argv = ["timeout", "120", "nmap", "-n", "-Pn", *(["-6", "--send-ip"] if six else []),
            "-T4", "--max-retries", "0", "-S", source, "-e", Lab.SCANNER_IF,
            *extra, "-p", ports, dst]  # fmt: skip
    done = lab.run(lab.scanner, argv, check=False, timeout=130)
    assert done.returncode == 0, done.stdout + done.stderr


def counters(lab: netns.Lab, daemon: Daemon) -> dict[str, Any]:
    done = cli(lab, daemon, "status", "--json")
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)["counters"]
    return found


def marked_seen_by_the_host(lab: netns.Lab) -> int:
    done = lab.run(lab.target, ["nft", "-j", "list", "chain", "inet", "labwatch", "pre"])
    for item in json.loads(done.stdout)["nftables"]:
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                return int(expr["counter"]["packets"])
    raise AssertionError("the lab's watch rule has no counter")


@pytest.mark.parametrize("family", [4, 6])
def test_a_responded_scanner_goes_quiet_and_is_counted_in_the_kernel(
    lab: netns.Lab, tmp_path: Path, family: int
) -> None:
    six = family == 6
    scanner = Lab.SCANNER6 if six else Lab.SCANNER4
    lab.run(lab.target, ["nft", "-f", "-"], input=WATCH)
    service = start_service(lab)
    daemon = Daemon.start(lab, tmp_path, settings=SETTINGS, events=False)
    try:
        scan(lab, scanner, "1-100", "-sS")  # alerted; past 20 records the gate holds them back
        wait_until(lambda: (scanner, "tcp") in quiet_counts(lab, family) or None, "quiet")
        before = counters(lab, daemon)
        scan(lab, scanner, f"1-{REPEAT_PORTS}", "-sS", "--min-rate", "2000")
        counted = wait_until(
            lambda: n if (n := quiet_counts(lab, family).get((scanner, "tcp"), 0)) >= REPEAT_PORTS
            else None, "the repeat scan counted in the kernel",
        )  # fmt: skip
        after = counters(lab, daemon)
        reported = wait_until(
            lambda: n if (n := counters(lab, daemon).get("quiet_packets", 0)) >= REPEAT_PORTS
            else None, "the kernel's count in status", deadline=60,
        )  # fmt: skip
        connected = connect_from(lab, scanner)
        scan(lab, scanner, "1-5", "-sU")  # another protocol: judged, and BLOCK_UDP bans it
        wait_until(lambda: scanner in (nft_elements(lab, family) or {}) or None, "the UDP ban")
        status_text = cli(lab, daemon, "status").stdout
    finally:
        code, err = daemon.stop()
        service.kill()
        service.wait()
    assert code == 0, err
    seen = after["kernel_packets"] - before["kernel_packets"]
    assert seen < 200, f"the capture saw {seen} packets of a quiet source (kernel: {counted})"
    assert reported >= REPEAT_PORTS
    assert "repeats counted in the kernel" in status_text
    assert connected == {scanner: "open"}, connected
    assert marked_seen_by_the_host(lab) == 0


def test_without_quiet_repeats_every_probe_reaches_the_daemon(
    lab: netns.Lab, tmp_path: Path
) -> None:
    settings = {**SETTINGS, "QUIET_REPEATS": "0"}
    daemon = Daemon.start(lab, tmp_path, settings=settings, events=False)
    try:
        scan(lab, Lab.SCANNER4, "1-100", "-sS")
        before = counters(lab, daemon)
        scan(lab, Lab.SCANNER4, "1-1000", "-sS", "--min-rate", "2000")
        # atcp's kernel filter passes the ports it watches (below 1024, a few excluded)
        seen = wait_until(
            lambda: n if (n := counters(lab, daemon)["kernel_packets"] - before["kernel_packets"])
            >= 900 else None, "the repeat scan in the capture",
        )  # fmt: skip
        quiet = quiet_counts(lab, 4)
    finally:
        code, err = daemon.stop()
    assert code == 0, err
    assert seen >= 900
    assert quiet == {}
