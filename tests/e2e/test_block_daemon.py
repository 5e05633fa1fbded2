"""End to end: the live daemon bans real scanners, and the bans live as the operator expects.

In a fresh lab per test the scanner namespace gets a second, innocent address (198.18.0.3,
fd00:5e::3) and the target a TCP service on port 8080 (not watched). After an nmap scan from
198.18.0.2 the ban is checked where it acts (the nft set element, the ipset member or
iptables rule, the blackhole route, the hosts.deny line) and where it counts: a connection from
the scanner times out while one from the innocent address still succeeds. Then its life:
expiry (and a longer second ban), the operator verbs with the daemon running or stopped,
restore after a restart that lost the kernel state, repair after ``nft flush ruleset``.

Root, iproute2, nmap, nft and hping3 (see ``banlab.py``); every packet stays inside the lab.
"""

from __future__ import annotations

import errno
import json
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import netns
import pytest
from banlab import (
    INNOCENT4,
    INNOCENT6,
    add_scanner_address,
    banned,
    cli,
    connect_from,
    every_ban,
    file_lines,
    finish,
    list_bans,
    nft_elements,
    nft_ruleset,
    nmap_scan,
    scan_until,
    start_scan,
    start_service,
    unavailable,
    wait_until,
)
from daemon import Daemon

pytestmark = [pytest.mark.e2e]
_REASON = unavailable()
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

Lab = netns.Lab
SCANNER4, SCANNER6 = Lab.SCANNER4, Lab.SCANNER6
DENY_LINE = "ALL: $TARGET$ : DENY"
REPAIR_DEADLINE = 15.0  # the daemon checks its nft state every 10 s


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    with Lab.create("psk") as built:
        add_scanner_address(built, INNOCENT4)
        add_scanner_address(built, INNOCENT6)
        built.check_closed()
        start_service(built)
        yield built


def run_daemon(lab: netns.Lab, directory: Path, **settings: str) -> Daemon:
    """The daemon in atcp,audp, its bans also written to the (temporary) hosts.deny."""
    return Daemon.start(lab, directory, settings={"KILL_HOSTS_DENY": DENY_LINE, **settings})


def stopped_cleanly(daemon: Daemon) -> None:
    code, stderr = daemon.stop()
    assert code == 0, stderr
    assert "Traceback" not in stderr, stderr


def seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def deny_line(address: str) -> str:
    return DENY_LINE.replace("$TARGET$", address)


def blocked_lines(daemon: Daemon, address: str) -> list[str]:
    """The lines for ``address`` in 1.2's blocked files (one per mode: BLOCKED_FILE.atcp ...)."""
    files = sorted(daemon.directory.glob("blocked_file.*"))
    return [line for path in files for line in file_lines(path) if f" {address}/" in line]


# --- kernel state per backend -------------------------------------------------------------------


def in_nft_set(lab: netns.Lab, address: str) -> bool:
    return address in (nft_elements(lab, 6 if ":" in address else 4) or {})


def iptables_rules(lab: netns.Lab) -> str:
    return lab.run(lab.target, ["iptables", "-w", "5", "-S", "INPUT"], timeout=10).stdout


def in_iptables(lab: netns.Lab, address: str) -> bool:
    """The ipset member (the backend's choice when ipset exists), else its own DROP rule."""
    if shutil.which("ipset") is not None:
        test = ["ipset", "-q", "test", "portsentinel4", address]
        return lab.run(lab.target, test, check=False, timeout=10).returncode == 0
    return f"-s {address}/32 " in iptables_rules(lab)


def in_blackhole(lab: netns.Lab, address: str) -> bool:
    routes = lab.run(lab.target, ["ip", "route", "show", "type", "blackhole"], timeout=10).stdout
    return any(line.split()[1] == address for line in routes.splitlines())


def in_kill_route_rule(lab: netns.Lab, address: str) -> bool:
    return f"-A INPUT -s {address}/32 -j DROP" in iptables_rules(lab)


IPTABLES = shutil.which("iptables") or "/usr/sbin/iptables"
BACKENDS: dict[str, tuple[dict[str, str], Callable[[netns.Lab, str], bool]]] = {
    "nftables": ({}, in_nft_set),
    "iptables": ({}, in_iptables),
    "route": ({}, in_blackhole),
    "legacy": ({"KILL_ROUTE": f"{IPTABLES} -I INPUT -s $TARGET$ -j DROP"}, in_kill_route_rule),
}


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_a_scan_gets_the_scanner_blocked_and_no_one_else(
    lab: netns.Lab, tmp_path: Path, backend: str
) -> None:
    if backend in ("iptables", "legacy") and shutil.which("iptables") is None:
        pytest.skip("needs iptables")
    settings, in_kernel = BACKENDS[backend]
    daemon = run_daemon(lab, tmp_path, BLOCK_BACKEND=backend, **settings)
    try:
        assert connect_from(lab, SCANNER4, INNOCENT4) == {SCANNER4: "open", INNOCENT4: "open"}
        nmap_scan(lab, SCANNER4)
        wait_until(lambda: in_kernel(lab, SCANNER4), f"{SCANNER4} in the {backend} state")
        assert deny_line(SCANNER4) in file_lines(daemon.directory / "hosts_deny_file")
        assert blocked_lines(daemon, SCANNER4)
        assert banned(lab, daemon) == {SCANNER4}
        assert connect_from(lab, SCANNER4, INNOCENT4) == {SCANNER4: "timeout", INNOCENT4: "open"}
        assert not in_kernel(lab, INNOCENT4)
    finally:
        stopped_cleanly(daemon)


OUTGOING = """
import json, socket, sys
out = {}
for dst in sys.argv[1:]:
    s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"x", (dst, 9))
        out[dst] = "sent"
    except OSError as exc:
        out[dst] = f"error {exc.errno}"
    s.close()
print(json.dumps(out))
"""


def test_after_a_ban_nothing_leaves_the_host_for_the_banned_address(
    lab: netns.Lab, tmp_path: Path
) -> None:
    """nftables: the ban set is matched on the way out too (the output chain's ``daddr``), as
    PortSentry's KILL_ROUTE reject route did: a datagram from the target to the scanner is
    refused at the send (EPERM), one to an innocent neighbour goes."""
    daemon = run_daemon(lab, tmp_path)
    argv = ["python3", "-c", OUTGOING, SCANNER4, INNOCENT4, SCANNER6]
    try:
        before = json.loads(lab.run(lab.target, argv).stdout)
        nmap_scan(lab, SCANNER4)
        nmap_scan(lab, SCANNER6)
        wait_until(lambda: in_nft_set(lab, SCANNER4) and in_nft_set(lab, SCANNER6), "the bans")
        after = json.loads(lab.run(lab.target, argv).stdout)
    finally:
        stopped_cleanly(daemon)
    assert set(before.values()) == {"sent"}
    eperm = f"error {errno.EPERM}"
    assert after == {SCANNER4: eperm, INNOCENT4: "sent", SCANNER6: eperm}


def test_an_ipv6_scan_gets_the_scanner_blocked_and_no_one_else(
    lab: netns.Lab, tmp_path: Path
) -> None:
    daemon = run_daemon(lab, tmp_path)
    try:
        assert connect_from(lab, SCANNER6, INNOCENT6) == {SCANNER6: "open", INNOCENT6: "open"}
        nmap_scan(lab, SCANNER6)
        wait_until(lambda: in_nft_set(lab, SCANNER6), f"{SCANNER6} in the ban6 set")
        assert banned(lab, daemon) == {SCANNER6}
        assert deny_line(f"[{SCANNER6}]") in file_lines(daemon.directory / "hosts_deny_file")
        assert connect_from(lab, SCANNER6, INNOCENT6) == {SCANNER6: "timeout", INNOCENT6: "open"}
        assert nft_elements(lab, 4) == {}
    finally:
        stopped_cleanly(daemon)


# --- expiry ------------------------------------------------------------------------------------


def wait_for_ban(lab: netns.Lab, daemon: Daemon, address: str) -> dict[str, object]:
    """The live ban of ``address`` as ``list --json`` shows it, once it is in the nft set."""
    wait_until(lambda: in_nft_set(lab, address), f"{address} in the nft set")
    bans = wait_until(lambda: list_bans(lab, daemon), f"a ban of {address} in the store")
    assert [b["address"] for b in bans] == [address]
    return bans[0]


def test_a_ban_expires_and_a_repeat_offender_gets_twice_as_long(
    lab: netns.Lab, tmp_path: Path
) -> None:
    daemon = run_daemon(lab, tmp_path, BAN_DURATION="3s", BAN_REPEAT_FACTOR="2")
    try:
        scan = start_scan(lab, SCANNER4)  # the ban is looked at while nmap waits it out
        first = wait_for_ban(lab, daemon, SCANNER4)
        start = seconds(str(first["since"]))
        assert first["offence"] == 1
        assert seconds(str(first["until"])) - start == pytest.approx(3.0)
        assert nft_elements(lab, 4) == {SCANNER4: 3}
        finish(scan)

        def over() -> bool:
            ended = [(b.state.value, b.lifted_by) for b in every_ban(daemon)]
            return not in_nft_set(lab, SCANNER4) and ended == [("expired", "expiry")]

        wait_until(over, "the ban's end, in the kernel and the store", deadline=15)
        assert time.time() >= start + 3.0, "ended before its time"
        assert list_bans(lab, daemon) == []
        assert deny_line(SCANNER4) not in file_lines(daemon.directory / "hosts_deny_file")
        assert connect_from(lab, SCANNER4) == {SCANNER4: "open"}

        scan = start_scan(lab, SCANNER4, "21-40")
        second = wait_for_ban(lab, daemon, SCANNER4)
        assert second["offence"] == 2
        length = seconds(str(second["until"])) - seconds(str(second["since"]))
        assert length == pytest.approx(6.0)
        assert nft_elements(lab, 4) == {SCANNER4: 6}
        finish(scan)
    finally:
        stopped_cleanly(daemon)


# --- the operator verbs ------------------------------------------------------------------------


def lifted_everywhere(lab: netns.Lab, daemon: Daemon, address: str) -> None:
    """No trace of a ban of ``address`` left: store, nft set, hosts.deny, blocked file."""
    assert address not in banned(lab, daemon)
    assert not in_nft_set(lab, address)
    assert deny_line(address) not in file_lines(daemon.directory / "hosts_deny_file")
    assert not blocked_lines(daemon, address)


def test_unblock_lifts_a_ban_with_the_daemon_running_or_stopped(
    lab: netns.Lab, tmp_path: Path
) -> None:
    daemon = run_daemon(lab, tmp_path)
    try:
        nmap_scan(lab, SCANNER4)
        wait_for_ban(lab, daemon, SCANNER4)
        assert blocked_lines(daemon, SCANNER4)
        done = cli(lab, daemon, "unblock", SCANNER4)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"unblocked {SCANNER4}")
        lifted_everywhere(lab, daemon, SCANNER4)
        assert connect_from(lab, SCANNER4) == {SCANNER4: "open"}
        # The daemon follows the store: its detector acts on the next scan again.
        scan_until(lab, SCANNER4, lambda: in_nft_set(lab, SCANNER4), "a second ban")
        wait_for_ban(lab, daemon, SCANNER4)
    finally:
        stopped_cleanly(daemon)
    assert in_nft_set(lab, SCANNER4), "a ban outlives the daemon (kernel timeout)"
    done = cli(lab, daemon, "unblock", SCANNER4)
    assert done.returncode == 0, done.stderr
    lifted_everywhere(lab, daemon, SCANNER4)
    again = cli(lab, daemon, "unblock", SCANNER4)
    assert again.returncode == 1
    assert f"{SCANNER4} is not blocked" in again.stderr


def test_allow_lifts_a_ban_and_protects_the_address(lab: netns.Lab, tmp_path: Path) -> None:
    daemon = run_daemon(lab, tmp_path)
    try:
        nmap_scan(lab, SCANNER4)
        wait_for_ban(lab, daemon, SCANNER4)
        done = cli(lab, daemon, "allow", SCANNER4)
        assert done.returncode == 0, done.stderr
        assert f"allowed {SCANNER4}/32" in done.stdout
        lifted_everywhere(lab, daemon, SCANNER4)
        seen = len(daemon.events())

        def refused() -> bool:
            later = daemon.events()[seen:]
            return any(e["src"] == SCANNER4 and e["reason"] == "never-block set" for e in later)

        scan_until(lab, SCANNER4, refused, "a scan refused as never-block")
        nmap_scan(lab, SCANNER4, "41-60")
        assert SCANNER4 not in banned(lab, daemon)
        assert not in_nft_set(lab, SCANNER4)
        later = [e for e in daemon.events()[seen:] if e["src"] == SCANNER4]
        assert {e["action"] for e in later} == {"ignored"}
        assert {e["reason"] for e in later} <= {"already blocked", "never-block set"}
        assert f"Host {SCANNER4} not blocked: never-block set (allowed by operator)" in (
            daemon.stderr()
        )
        assert [b.lifted_by for b in every_ban(daemon)] == ["allow"]
    finally:
        stopped_cleanly(daemon)


# --- restart and repair ------------------------------------------------------------------------


def test_a_restart_restores_lost_bans_and_a_flush_is_repaired(
    lab: netns.Lab, tmp_path: Path
) -> None:
    daemon = run_daemon(lab, tmp_path, BAN_DURATION="120s")
    try:
        nmap_scan(lab, SCANNER4)
        ban = wait_for_ban(lab, daemon, SCANNER4)
    finally:
        stopped_cleanly(daemon)
    until = seconds(str(ban["until"]))
    lab.run(lab.target, ["nft", "delete", "table", "inet", "portsentinel"])  # a reboot, say
    assert nft_elements(lab, 4) is None

    daemon = run_daemon(lab, tmp_path, BAN_DURATION="120s")
    try:
        assert "adminalert: 1 bans restored from the state store" in daemon.stderr()
        timeout = (nft_elements(lab, 4) or {}).get(SCANNER4)
        assert timeout is not None
        assert abs(timeout - (until - time.time())) <= 2, "restored with its remaining time"
        assert list_bans(lab, daemon)[0]["until"] == ban["until"]
        assert connect_from(lab, SCANNER4, INNOCENT4) == {SCANNER4: "timeout", INNOCENT4: "open"}

        lab.run(lab.target, ["nft", "flush", "ruleset"])
        assert nft_elements(lab, 4) is None
        wait_until(lambda: in_nft_set(lab, SCANNER4), "the repaired set", REPAIR_DEADLINE)
        assert "ip saddr @ban4" in nft_ruleset(lab)
        assert connect_from(lab, SCANNER4, INNOCENT4) == {SCANNER4: "timeout", INNOCENT4: "open"}
        assert "adminalert: nftables state repaired" in daemon.stderr()
    finally:
        stopped_cleanly(daemon)
