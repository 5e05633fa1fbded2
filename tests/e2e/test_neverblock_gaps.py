"""End to end: no gap in the never-block set of a running daemon (issue 15, item 4).

Each test starts ``portsentinel run`` in the lab's target namespace, where one forged SYN bans
its source (SCAN_TRIGGER 0, one port is strong enough, a budget far above the test), and then:

- adds a route through a new gateway and at once sends a forged SYN "from" that gateway;
- opens a real TCP connection to the SSH port from a second scanner address and at once sends
  a forged SYN "from" it;
- bans an address, then makes it a gateway: the ban is lifted from the kernel and the store at
  once, and a restart does not bring it back; also when the address became a gateway while
  the daemon was stopped;
- names only systemd-resolved's stub (127.0.0.53) in RESOLV_CONF and a lab address in the
  (redirected) systemd-resolved file, and sends a forged SYN "from" that address.

A forged SYN from an ordinary address sent after the protected one shows that the daemon
judged both (the ring is read in order) and that it does ban: the tests wait for that ban,
never for a fixed time. Root, iproute2 and nft (see ``banlab.py``); every packet stays in the
lab.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import netns
import pytest
from banlab import (
    add_scanner_address,
    banned,
    burst,
    every_ban,
    nft_elements,
    unavailable,
    wait_until,
)
from daemon import Daemon, Event

pytestmark = [pytest.mark.e2e]
_REASON = unavailable(("nft",))
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

GATEWAY = "198.18.0.7"  # becomes the next hop of ROUTE
ROUTE = "198.18.4.0/24"
SSH_CLIENT = "198.18.0.3"  # the scanner's second address, which opens the SSH session
RESOLVER = "198.18.0.53"  # an upstream resolver of systemd-resolved
ORDINARY = "198.18.0.9"  # forged too, never protected: it must be banned
PROBED_PORT = 80  # no socket in the target: a probe
SETTINGS = {
    "BAN_RATE": "10000",
    "BAN_BURST": "10000",
    "BAN_STRONG_PORTS": "1",
    "BLOCK_UDP": "0",
    "BAN_DURATION": "600",
    "SSH_PORTS": "22",
    "NEVER_BLOCK_SSH_PEERS": "1",
}
DEADLINE = 30.0  # generous: a busy 2-CPU machine

# A stand-in sshd: holds every connection it accepts on port 22 and reports each.
LISTENER = """
import socket
server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.bind(("0.0.0.0", 22))
server.listen(8)
print("listening", flush=True)
held = []
while True:
    conn, peer = server.accept()
    held.append(conn)
    print("accepted", peer[0], flush=True)
"""

CLIENT = """
import socket, sys
conn = socket.create_connection((sys.argv[1], 22), 5, (sys.argv[2], 0))
print("connected", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    with netns.Lab.create("pgp") as built:
        yield built


def kernel_bans(lab: netns.Lab) -> dict[str, int | None]:
    return nft_elements(lab, 4) or {}


def forge(lab: netns.Lab, *sources: str) -> None:
    """One forged SYN from each source, in this order; waits until all were sent."""
    out, _ = burst(lab, sources, [PROBED_PORT]).communicate(timeout=DEADLINE)
    assert out.strip() == str(len(sources))


def judged(daemon: Daemon, source: str) -> list[Event]:
    """Waits for the decisions about ``source`` (events) and returns them."""

    def found(events: list[Event]) -> bool:
        return any(event["src"] == source for event in events)

    events = daemon.wait_for_events(found, f"a decision about {source}", DEADLINE)
    return [event for event in events if event["src"] == source]


def assert_spared(lab: netns.Lab, daemon: Daemon, protected: str) -> None:
    """``protected`` was judged and refused as protected, while ORDINARY, forged after it,
    was banned."""
    wait_until(lambda: ORDINARY in kernel_bans(lab), "the ordinary source banned", DEADLINE)
    decisions = judged(daemon, protected)
    assert {event["action"] for event in decisions} == {"ignored"}, decisions
    assert protected not in kernel_bans(lab)
    assert protected not in banned(lab, daemon)


def test_a_gateway_added_a_moment_ago_is_not_banned(lab: netns.Lab, tmp_path: Path) -> None:
    daemon = Daemon.start(lab, tmp_path, settings=SETTINGS)
    try:
        lab.run(lab.target, ["ip", "route", "add", ROUTE, "via", GATEWAY])
        forge(lab, GATEWAY, ORDINARY)
        assert_spared(lab, daemon, GATEWAY)
    finally:
        code, stderr = daemon.stop()
    assert code == 0, stderr
    assert "Traceback" not in stderr


def test_the_peer_of_an_ssh_session_opened_a_moment_ago_is_not_banned(
    lab: netns.Lab, tmp_path: Path
) -> None:
    add_scanner_address(lab, SSH_CLIENT)
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    listener = lab.start(lab.target, [sys.executable, "-c", LISTENER], **pipes)
    assert listener.stdout is not None
    assert listener.stdout.readline().strip() == "listening"
    daemon = Daemon.start(lab, tmp_path, settings=SETTINGS)
    try:
        argv = [sys.executable, "-c", CLIENT, lab.TARGET4, SSH_CLIENT]
        client = lab.start(lab.scanner, argv, **pipes)
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "connected"
        assert listener.stdout.readline().split() == ["accepted", SSH_CLIENT]
        forge(lab, SSH_CLIENT, ORDINARY)
        assert_spared(lab, daemon, SSH_CLIENT)
        assert "SSH peer" in daemon.stderr()
        # The kernel noted the peer in the daemon's set from the session's packets (the
        # check's ~20 us lookup, not a ~5 ms dump of every socket).
        noted = lab.run(lab.target, ["nft", "list", "set", "inet", "portsentinel", "ssh4"])
        assert SSH_CLIENT in noted.stdout, noted.stdout
    finally:
        code, stderr = daemon.stop()
    assert code == 0, stderr
    assert "Traceback" not in stderr


def _banned_then(lab: netns.Lab, daemon: Daemon) -> None:
    forge(lab, GATEWAY)
    wait_until(lambda: GATEWAY in kernel_bans(lab), "the address banned", DEADLINE)
    assert GATEWAY in banned(lab, daemon)


def _lifted(lab: netns.Lab, daemon: Daemon) -> None:
    """The ban of GATEWAY is gone from the kernel and the store, and it says why."""
    wait_until(lambda: GATEWAY not in kernel_bans(lab), "the ban lifted in the kernel", DEADLINE)
    wait_until(lambda: GATEWAY not in banned(lab, daemon), "the ban lifted in the store", DEADLINE)
    line = daemon.wait_for_line(f"Host {GATEWAY} unblocked: now in the never-block set")
    assert f"gateway of route {ROUTE}" in line
    ends = {ban.state.value for ban in every_ban(daemon) if ban.address == GATEWAY}
    assert ends == {"lifted"}


def test_a_ban_on_an_address_that_becomes_a_gateway_is_lifted_and_not_restored(
    lab: netns.Lab, tmp_path: Path
) -> None:
    daemon = Daemon.start(lab, tmp_path, settings=SETTINGS)
    try:
        _banned_then(lab, daemon)
        lab.run(lab.target, ["ip", "route", "add", ROUTE, "via", GATEWAY])
        _lifted(lab, daemon)
    finally:
        code, stderr = daemon.stop()
    assert code == 0, stderr

    daemon = Daemon.start(lab, tmp_path, settings=SETTINGS)
    try:
        forge(lab, ORDINARY)  # the restarted daemon bans, and has restored what it keeps
        wait_until(lambda: ORDINARY in kernel_bans(lab), "the ordinary source banned", DEADLINE)
        assert GATEWAY not in kernel_bans(lab)
        assert GATEWAY not in banned(lab, daemon)
    finally:
        code, stderr = daemon.stop()
    assert code == 0, stderr
    assert "Traceback" not in stderr


def test_a_ban_on_an_address_that_became_a_gateway_meanwhile_is_lifted_at_start(
    lab: netns.Lab, tmp_path: Path
) -> None:
    daemon = Daemon.start(lab, tmp_path, settings=SETTINGS)
    try:
        _banned_then(lab, daemon)
    finally:
        code, stderr = daemon.stop()
    assert code == 0, stderr
    lab.run(lab.target, ["ip", "route", "add", ROUTE, "via", GATEWAY])

    daemon = Daemon.start(lab, tmp_path, settings=SETTINGS)
    try:
        _lifted(lab, daemon)  # already when it says it is active: restore lifted it
    finally:
        code, stderr = daemon.stop()
    assert code == 0, stderr
    assert "Traceback" not in stderr


def test_the_upstream_resolvers_of_systemd_resolved_are_not_banned(
    lab: netns.Lab, tmp_path: Path
) -> None:
    resolv_conf = tmp_path / "stub-resolv.conf"
    resolv_conf.write_text("# systemd-resolved's stub\nnameserver 127.0.0.53\noptions edns0\n")
    upstream = tmp_path / "upstream-resolv.conf"
    upstream.write_text(f"# systemd-resolved's upstream servers\nnameserver {RESOLVER}\n")
    settings = {**SETTINGS, "RESOLV_CONF": str(resolv_conf), "RESOLVED_CONF": str(upstream)}
    daemon = Daemon.start(lab, tmp_path, settings=settings)
    try:
        forge(lab, RESOLVER, ORDINARY)
        assert_spared(lab, daemon, RESOLVER)
        assert f"DNS resolver in {upstream}" in daemon.stderr()
    finally:
        code, stderr = daemon.stop()
    assert code == 0, stderr
    assert "Traceback" not in stderr
