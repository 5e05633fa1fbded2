"""End to end: the daemon started with PortSentry 2.0's command line, in the lab.

``--stealth`` watches TCP_PORTS and UDP_PORTS (2.0's ranges) by capture, IPv4 and IPv6, and
skips a port a service listens on unless ``-S``; ``--connect`` binds TCP_PORTS and, with no
UDP_PORTS in the config (2.0's rule), no UDP port. The log lines go to standard output, as
2.0's do. Each test starts one daemon and sends a few probes: seconds each.

Root, iproute2 and nmap only (see ``netns.py``); every packet stays inside the lab.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import netns
import pytest
from daemon import ACTIVE, Daemon, Event

pytestmark = [pytest.mark.e2e]
_REASON = netns.unavailable() or (None if shutil.which("nmap") else "needs nmap")
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

SERVICE_PORT = 11  # in TCP_PORTS: a service there makes it no probe (2.0's service check)
SETTINGS = {"TCP_PORTS": "1-20", "UDP_PORTS": "51-59", "BLOCK_TCP": "0", "BLOCK_UDP": "0"}

LISTEN = f"""
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", {SERVICE_PORT}))
s.listen(8)
print("ready", flush=True)
sys.stdin.read()  # until the test closes it
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[netns.Lab]:
    with netns.Lab.create(prefix="ps2") as built:
        built.run(built.target, ["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"])
        yield built


@pytest.fixture
def service(lab: netns.Lab) -> Iterator[None]:
    proc = lab.start(
        lab.target, [sys.executable, "-c", LISTEN], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    yield
    netns.Lab.stop(proc)


def nmap(lab: netns.Lab, *args: str) -> None:
    argv = ["timeout", "30", "nmap", "-n", "-Pn", "-T4", "--max-retries", "1", *args]
    done = lab.run(lab.scanner, argv, check=False, timeout=40)
    assert done.returncode == 0, done.stdout + done.stderr


def seen(events: list[Event]) -> set[tuple[str, str, int, str]]:
    return {(e["src"], e["proto"], e["port"], e["kind"]) for e in events}


def test_stealth_with_2_0s_flags_detects_tcp_udp_ipv4_ipv6(
    lab: netns.Lab, tmp_path: Path, service: None
) -> None:
    flags = ("--stealth", "-m", "raw", "-i", lab.TARGET_IF, "-L", "-l", "stdout")
    daemon = Daemon.start(lab, tmp_path, flags=flags, settings=SETTINGS, lines="stdout")
    try:
        nmap(lab, "-sS", "-p", f"1,{SERVICE_PORT},20", lab.TARGET4)
        nmap(lab, "-6", "-sF", "-p", "2", lab.TARGET6)
        nmap(lab, "-sU", "-p", "51", lab.TARGET4)
        wanted = {
            (lab.SCANNER4, "tcp", 1, "SYN"),
            (lab.SCANNER4, "tcp", 20, "SYN"),
            (lab.SCANNER6, "tcp", 2, "FIN"),
            (lab.SCANNER4, "udp", 51, "UDP"),
        }
        events = daemon.wait_for_events(lambda ev: wanted <= seen(ev), "the four probes")
    finally:
        code, stderr = daemon.stop()
    assert code == 0, stderr
    assert not [e for e in events if e["port"] == SERVICE_PORT]  # a service runs there
    assert {e["mode"] for e in events} == {"stcp", "sudp"}
    out = daemon.stdout()
    assert ACTIVE in out  # 2.0's lines go to standard output ...
    assert ACTIVE not in stderr  # ... not to standard error
    assert "PortSentry 2.0 command line: stealth mode (stcp,sudp); -m raw" in out
    assert "-L: the local check stays on" in out


def test_disable_service_check_watches_ports_in_use(
    lab: netns.Lab, tmp_path: Path, service: None
) -> None:
    flags = ("-S", "--logoutput=stdout")
    daemon = Daemon.start(lab, tmp_path, flags=flags, settings=SETTINGS, lines="stdout")
    try:
        nmap(lab, "-sS", "-p", str(SERVICE_PORT), lab.TARGET4)
        daemon.wait_for_events(
            lambda ev: (lab.SCANNER4, "tcp", SERVICE_PORT, "SYN") in seen(ev),
            "a probe to the port in use",
        )
    finally:
        code, stderr = daemon.stop()
    assert code == 0, stderr
    assert "-S: ports a service uses are watched too" in daemon.stdout()


def test_connect_binds_only_the_protocols_the_config_lists(lab: netns.Lab, tmp_path: Path) -> None:
    settings = {"TCP_PORTS": "1,11", "BLOCK_TCP": "0"}  # no UDP_PORTS: no UDP, as in 2.0
    daemon = Daemon.start(lab, tmp_path, flags=("--connect",), settings=settings, lines="stdout")
    try:
        nmap(lab, "-sT", "-p", "1", lab.TARGET4)
        events = daemon.wait_for_events(
            lambda ev: (lab.SCANNER4, "tcp", 1, "CONNECT") in seen(ev), "a connect to port 1"
        )
    finally:
        code, stderr = daemon.stop()
    assert code == 0, stderr
    assert {e["mode"] for e in events} == {"tcp"}
    out = daemon.stdout()
    assert "connect mode (tcp,udp)" in out
    assert "UDP port" not in out  # nothing of UDP was bound
