"""End to end: what a forger can and cannot make the live daemon do.

Source addresses are free to forge, so the daemon must never act against the addresses whose
loss hurts, must not let a flood of forged sources fill the firewall, and must still ban the
real scanner in the middle of it. In the lab the target gets a route ``198.18.9.0/24 via
198.18.0.254`` and a resolv.conf naming 198.18.0.53 (both addresses live on the scanner's
veth, so every packet has somewhere to go). hping3 then floods the target from random sources
and forges SYNs from the gateway, the resolver and the target itself, while nmap scans from
198.18.0.2. With MAX_ACTIVE_BANS 50 the single-probe forged sources may take half of it at
most; the real scanner, with many ports, gets its ban from the reserve.

And a KILL_RUN_CMD written with shell syntax runs through the real path with exactly the
values the ban has: the packet-derived ones are data to the shell, never syntax.

Root, iproute2, nmap, nft and hping3 (see ``banlab.py``); every packet stays inside the lab.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import netns
import pytest
from banlab import (
    add_scanner_address,
    every_ban,
    finish,
    nft_elements,
    nmap_scan,
    start_scan,
    unavailable,
    wait_until,
)
from daemon import Daemon, Event

pytestmark = [pytest.mark.e2e]
_REASON = unavailable()
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

Lab = netns.Lab
SCANNER4, SCANNER6 = Lab.SCANNER4, Lab.SCANNER6
GATEWAY, RESOLVER = "198.18.0.254", "198.18.0.53"
ROUTED = "198.18.9.0/24"
PROTECTED = (GATEWAY, RESOLVER, Lab.TARGET4)
MAX_ACTIVE = 50
WEAK_CAP = MAX_ACTIVE // 2  # weak (single-probe) bans may fill half of MAX_ACTIVE_BANS
STRONG_PORTS = 5  # BAN_STRONG_PORTS' default
FLOOD = 20000
FORGED = 30
HPING_TIMEOUT = 30


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    with Lab.create("psf") as built:
        yield built


def hping(lab: netns.Lab, *args: str) -> subprocess.Popen[str]:
    """hping3 in the scanner namespace against the target, bounded by count and time."""
    argv = ["timeout", str(HPING_TIMEOUT), "hping3", "-q", "-S", *args, lab.TARGET4]
    return lab.start(lab.scanner, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def sent_all(proc: subprocess.Popen[str], count: int) -> None:
    """Wait for hping3 and check it sent every packet (it exits 1 when none was answered)."""
    out, _ = proc.communicate(timeout=HPING_TIMEOUT + 10)
    assert proc.returncode in (0, 1), f"{proc.args!r}: exit {proc.returncode}: {out}"
    assert f"{count} packets transmitted" in out, out


def from_source(events: list[Event], src: str) -> list[Event]:
    return [e for e in events if e["src"] == src]


def test_forged_sources_neither_hit_protected_hosts_nor_fill_the_firewall(
    lab: netns.Lab, tmp_path: Path
) -> None:
    for address in (GATEWAY, RESOLVER):
        add_scanner_address(lab, address)
    lab.run(lab.target, ["ip", "route", "add", ROUTED, "via", GATEWAY])
    lab.check_closed()
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {RESOLVER}\n")
    settings = {"MAX_ACTIVE_BANS": str(MAX_ACTIVE), "RESOLV_CONF": str(resolv)}
    daemon = Daemon.start(lab, tmp_path / "daemon", settings=settings, measured=False)
    try:
        flood = hping(lab, "--rand-source", "-p", "80", "-c", str(FLOOD), "--faster")
        # Forged from protected addresses, each on many ports: evidence strong enough to ban.
        forged = [
            hping(lab, "-a", a, "-p", "++100", "-c", str(FORGED), "-i", "u20000") for a in PROTECTED
        ]
        # The forged sources take the weak share first; then the real scan, mid-flood.
        wait_until(lambda: len(nft_elements(lab, 4) or {}) >= WEAK_CAP, "the weak share taken")
        scan = start_scan(lab, SCANNER4, "1-200")
        most, seen = 0, set[str]()
        end = time.monotonic() + HPING_TIMEOUT
        while flood.poll() is None and time.monotonic() < end:
            elements = nft_elements(lab, 4) or {}
            most, seen = max(most, len(elements)), seen | elements.keys()
        sent_all(flood, FLOOD)
        for proc in forged:
            sent_all(proc, FORGED)
        finish(scan)
        elements = wait_until(lambda: nft_elements(lab, 4), "the bans in the set")
        most, seen = max(most, len(elements)), seen | elements.keys()
        assert daemon.proc.poll() is None, "the daemon stayed up"

        bans = every_ban(daemon)
        addresses = [b.address for b in bans]
        assert not set(PROTECTED) & (seen | set(addresses)), "a protected address was banned"
        assert SCANNER4 in elements, "the real scanner is banned"
        assert SCANNER4 in addresses
        assert most <= MAX_ACTIVE
        assert len(bans) <= MAX_ACTIVE
        forged_bans = [a for a in addresses if a != SCANNER4]
        assert len(forged_bans) == WEAK_CAP, "single-probe sources fill the weak share only"
        (real,) = [b for b in bans if b.address == SCANNER4]
        assert len(real.evidence["ports"]) >= STRONG_PORTS, "banned from the strong reserve"
        assert set(elements) == set(addresses)

        events = daemon.events()
        for address in (GATEWAY, RESOLVER):
            mine = from_source(events, address)
            assert mine
            assert {(e["action"], e["reason"]) for e in mine} == {("ignored", "never-block set")}
        assert {e["reason"] for e in from_source(events, Lab.TARGET4)} == {"own address"}
        stderr = daemon.stderr()
        assert "adminalert: ban budget exceeded" in stderr
        assert f"Host {GATEWAY} not blocked: never-block set (gateway of route {ROUTED})" in stderr
        assert f"Host {RESOLVER} not blocked: never-block set (DNS resolver in {resolv})" in stderr
    finally:
        code, stderr = daemon.stop()
    assert code == 0, stderr
    assert "Traceback" not in stderr


def test_a_shell_command_gets_the_ban_values_as_data_only(lab: netns.Lab, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    ran.mkdir()
    log = ran / "ran.log"
    settings = {
        "KILL_RUN_CMD": f"echo $TARGET$ $PORT$ $MODE$ >> {log}; true",
        "UNBLOCK_RUN_CMD": f"echo lifted '$TARGET$' >> {log} && true",
        "KILL_RUN_CMD_IPV6": "1",
        "BAN_DURATION": "3s",
    }
    daemon = Daemon.start(lab, tmp_path / "daemon", settings=settings)
    try:
        nmap_scan(lab, SCANNER4)
        nmap_scan(lab, SCANNER6)

        def four_lines() -> list[str] | None:
            lines = log.read_text().splitlines() if log.exists() else []
            return lines if len(lines) >= 4 else None

        lines = wait_until(four_lines, "the commands of two bans and two expiries")
    finally:
        code, stderr = daemon.stop()
    assert code == 0, stderr
    blocks = {e["src"]: e["port"] for e in daemon.events() if e["action"] == "block"}
    assert sorted(lines) == sorted(
        [
            f"{SCANNER4} {blocks[SCANNER4]} atcp",
            f"{SCANNER6} {blocks[SCANNER6]} atcp",
            f"lifted {SCANNER4}",
            f"lifted {SCANNER6}",
        ]
    )
    assert all(re.fullmatch(r"[0-9a-f.:]+ \d+ atcp|lifted [0-9a-f.:]+", line) for line in lines)
    assert sorted(p.name for p in ran.iterdir()) == ["ran.log"], "nothing else ran"
    assert f'External command run for host: {SCANNER4} using command: "' in stderr
