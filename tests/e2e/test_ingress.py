"""End to end: a banned source's packets are dropped at ingress, before the capture sees them.

In the namespace lab, with the daemon's defaults (atcp/audp, the nftables backend):
- after a real nmap scan is banned (IPv4 and IPv6), the same scanner's next scan of 2,000
  ports never reaches the capture rings (the daemon's kernel packet count stays put) while
  the ban's ingress copy counts every probe; ``why`` and ``status`` show that count; a new
  scanner is still caught;
- an interface that appears after the start gets its ingress chain, and a source banned
  through it is dropped there; the chain goes with the interface.

Root, iproute2, nmap and nft (see ``banlab.py``); every packet stays inside the lab.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import netns
import pytest
from banlab import (
    add_scanner_address,
    cli,
    netdev_elements,
    nft_elements,
    unavailable,
    wait_until,
)
from daemon import Daemon

pytestmark = [pytest.mark.e2e]
_REASON = unavailable(("nmap", "nft"))
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

Lab = netns.Lab
REPEAT_PORTS = 2000
LATE_IF, LATE_FAR_IF = "veth-late", "veth-far"
LATE4_NEAR, LATE4_FAR = "198.19.7.1", "198.19.7.2"


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    with Lab.create("psi") as built:
        yield built


def ingress_counts(lab: netns.Lab, family: int = 4) -> dict[str, int]:
    """The ingress copy's elements with the packets each counted ({} without the set)."""
    elems = netdev_elements(lab, "ban6" if family == 6 else "ban4")
    return {str(e["val"]): int(e["counter"]["packets"]) for e in elems}


def scan(lab: netns.Lab, ns: str, source: str, dst: str, ports: str, *extra: str) -> None:
    # IPv6: at the IP layer, through the kernel's static neighbour entry; nmap's own neighbour
    # solicitation comes from the banned address too, and is dropped.
    six = ":" in source
    argv = ["timeout", "120", "nmap", "-n", "-Pn", *(["-6", "--send-ip"] if six else []),
            "-sS", "-T4",
            "--max-retries", "0", "-S", source, *extra, "-p", ports, dst]  # fmt: skip
    done = lab.run(ns, argv, check=False, timeout=130)
    assert done.returncode == 0, done.stdout + done.stderr


def status(lab: netns.Lab, daemon: Daemon) -> dict[str, Any]:
    done = cli(lab, daemon, "status", "--json")
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.mark.parametrize("family", [4, 6])
def test_a_banned_scanner_no_longer_reaches_the_capture(
    lab: netns.Lab, tmp_path: Path, family: int
) -> None:
    six = family == 6
    scanner, target = (Lab.SCANNER6, Lab.TARGET6) if six else (Lab.SCANNER4, Lab.TARGET4)
    newcomer = "fd00:5e::9" if six else "198.18.0.9"
    add_scanner_address(lab, newcomer)
    daemon = Daemon.start(lab, tmp_path)
    try:
        scan(lab, lab.scanner, scanner, target, "1-50")
        wait_until(lambda: scanner in (nft_elements(lab, family) or {}), "the ban")
        wait_until(lambda: scanner in ingress_counts(lab, family), "the ban's ingress copy")
        before = status(lab, daemon)["counters"]
        scan(lab, lab.scanner, scanner, target, f"1-{REPEAT_PORTS}", "--min-rate", "2000")
        dropped = wait_until(
            lambda: n if (n := ingress_counts(lab, family).get(scanner, 0)) >= REPEAT_PORTS
            else None, "the repeat scan counted at ingress",
        )  # fmt: skip
        # A new scanner is still caught: the capture works, only the banned source is gone.
        scan(lab, lab.scanner, newcomer, target, "1-50")
        wait_until(lambda: newcomer in (nft_elements(lab, family) or {}), "the newcomer's ban")
        after = status(lab, daemon)["counters"]
        counted = wait_until(
            lambda: n if (n := status(lab, daemon)["counters"].get(
                "ingress_dropped_packets", 0)) >= REPEAT_PORTS else None,
            "the dropped count in status", deadline=40,
        )  # fmt: skip
        why = json.loads(cli(lab, daemon, "why", scanner, "--json").stdout)
        text = cli(lab, daemon, "why", scanner).stdout
        status_text = cli(lab, daemon, "status").stdout
    finally:
        code, err = daemon.stop()
    assert code == 0, err
    # The newcomer's scan (50 probes and a few) is all the capture saw after the ban: none of
    # the banned scanner's 2,000.
    seen = after["kernel_packets"] - before["kernel_packets"]
    assert seen < 200, f"the capture saw {seen} packets after the ban (dropped {dropped})"
    assert counted >= REPEAT_PORTS
    assert why["ban"]["dropped"]["packets"] >= REPEAT_PORTS
    assert "at ingress since the ban" in text
    assert "banned packets dropped at ingress" in status_text


def test_an_interface_that_appears_later_is_hooked_and_unhooked(
    lab: netns.Lab, tmp_path: Path
) -> None:
    daemon = Daemon.start(lab, tmp_path)
    try:
        chain = ["nft", "list", "chain", "netdev", "portsentinel", f"dev_{LATE_IF}"]
        assert lab.run(lab.target, chain, check=False).returncode != 0
        late = lab.add_namespace(
            "late", near=lab.target, near_if=LATE_IF, far_if=LATE_FAR_IF,
            near_addresses=[f"{LATE4_NEAR}/24"], far_addresses=[f"{LATE4_FAR}/24"],
        )  # fmt: skip
        wait_until(lambda: lab.run(lab.target, chain, check=False).returncode == 0,
                   "the new interface's ingress chain")  # fmt: skip
        scan(lab, late, LATE4_FAR, LATE4_NEAR, "1-50")
        wait_until(lambda: LATE4_FAR in ingress_counts(lab), "the late scanner's ban")
        before = status(lab, daemon)["counters"]["kernel_packets"]
        scan(lab, late, LATE4_FAR, LATE4_NEAR, "1-500", "--min-rate", "2000")
        wait_until(lambda: ingress_counts(lab).get(LATE4_FAR, 0) >= 500 or None,
                   "the late scanner's repeat counted at ingress")  # fmt: skip
        seen = status(lab, daemon)["counters"]["kernel_packets"] - before
        subprocess.run(["ip", "-n", lab.target, "link", "del", LATE_IF], check=True)
        wait_until(lambda: lab.run(lab.target, chain, check=False).returncode != 0,
                   "the chain's removal with its interface")  # fmt: skip
    finally:
        code, err = daemon.stop()
    assert code == 0, err
    assert seen < 50, f"the capture saw {seen} packets of a source banned at ingress"
