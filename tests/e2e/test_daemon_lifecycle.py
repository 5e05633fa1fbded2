"""End to end: the live daemon's life, from start-up lines to shutdown, in a namespace lab.

Start-up in PortSentry 1.2's words, SIGTERM and SIGINT ending with exit 0 and the shutdown and
statistics lines, one daemon per state directory, ``--dry-run`` leaving the firewall alone,
and a bound mode that can bind nothing giving up with 1.2's message.

Root, iproute2 and nft only (see ``netns.py``); every packet stays inside the lab.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import netns
import pytest
from daemon import ACTIVE, Daemon, Peer, statistics

pytestmark = [pytest.mark.e2e]
_REASON = netns.unavailable() or (None if shutil.which("nft") else "needs nft")
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

SERVICE_PORT = 222  # a service of the target, below 1024: atcp must skip it
TAKEN_PORTS = (3333, 3334)  # held by another program when the bound mode starts
STARTING = re.compile(r"adminalert: PortSentinel \S+ \(PortSentry 1\.2 compatible\) is starting\.")
SHUTDOWN = (
    "securityalert: PortSentry is shutting down",
    "adminalert: PortSentry is shutting down",
)


@pytest.fixture(scope="module")
def lab() -> Iterator[netns.Lab]:
    with netns.Lab.create(prefix="psy") as built:
        yield built


@pytest.fixture(scope="module")
def service(lab: netns.Lab) -> Iterator[Peer]:
    """A peer in the target holding SERVICE_PORT and TAKEN_PORTS on both families."""
    peer = Peer(lab, lab.target)
    for host in ("0.0.0.0", "::"):
        for port in (SERVICE_PORT, *TAKEN_PORTS):
            peer.call("tcp_serve", host=host, port=port)
    yield peer
    peer.close()


def lines_after(stderr: str, marker: str) -> list[str]:
    lines = stderr.splitlines()
    return lines[lines.index(marker) + 1 :]


def tables(lab: netns.Lab) -> str:
    return lab.run(lab.target, ["nft", "list", "tables"], timeout=10).stdout


def test_start_up_lines_in_portsentry_words(lab: netns.Lab, service: Peer, tmp_path: Path) -> None:
    daemon = Daemon.start(lab, tmp_path, mode="atcp,audp")
    code, stderr = daemon.stop()
    lines = stderr.splitlines()
    assert STARTING.fullmatch(lines[0]), stderr
    assert lines.count("adminalert: Advanced mode will monitor first 1024 ports") == 2
    for port in (113, 139, 67, 137, 138, 520):
        assert f"adminalert: Advanced mode will manually exclude port: {port} " in lines
    skipped = f"Advanced Stealth scan detection mode activated. Ignored TCP port: {SERVICE_PORT}"
    assert f"adminalert: {skipped}" in lines
    active = lines.index(f"adminalert: PortSentry is {ACTIVE}.")
    assert all("Advanced" not in line for line in lines[active:])
    assert code == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_it_with_the_shutdown_lines(
    lab: netns.Lab, tmp_path: Path, signum: signal.Signals
) -> None:
    daemon = Daemon.start(lab, tmp_path, mode="atcp,audp")
    code, stderr = daemon.stop(signum)
    assert code == 0, stderr
    after = lines_after(stderr, f"adminalert: PortSentry is {ACTIVE}.")
    assert after[:2] == list(SHUTDOWN), stderr
    assert after[2].startswith("adminalert: statistics: ")
    stats = statistics(stderr)
    assert {"packets", "probes", "kernel_drops", "decode_errors"} <= stats.keys()
    assert "Traceback" not in stderr


def test_a_second_daemon_on_the_same_state_refuses(lab: netns.Lab, tmp_path: Path) -> None:
    first = Daemon.start(lab, tmp_path / "first", mode="atcp,audp")
    try:
        second = Daemon.start(
            lab, tmp_path / "second", mode="atcp,audp", state_dir=first.directory, wait=False
        )
        code, stderr = second.wait_exit()
        assert code == 1, stderr
        assert f"another portsentinel (pid {first.pid}) is running" in stderr
        assert ACTIVE not in stderr
        assert first.proc.poll() is None  # the first one goes on
    finally:
        assert first.stop()[0] == 0


def test_dry_run_leaves_the_firewall_alone(lab: netns.Lab, tmp_path: Path) -> None:
    lab.run(lab.target, ["nft", "delete", "table", "inet", "portsentinel"], check=False)
    dry = Daemon.start(lab, tmp_path / "dry", mode="atcp,audp", dry_run=True)
    try:
        assert "inet portsentinel" not in tables(lab)
        assert "dry run" in dry.stderr()
    finally:
        assert dry.stop()[0] == 0
    real = Daemon.start(lab, tmp_path / "real", mode="atcp,audp")
    try:
        assert "table inet portsentinel" in tables(lab)
    finally:
        assert real.stop()[0] == 0


def test_a_dry_run_records_what_a_real_run_would_have_done(lab: netns.Lab, tmp_path: Path) -> None:
    """A real scan against a dry run: no table, no hosts.deny or history line, but the
    would-be ban and the probes are in its (offline) store, for list, why and history."""
    lab.run(lab.target, ["nft", "delete", "table", "inet", "portsentinel"], check=False)
    state = tmp_path / "dry"
    settings = {"KILL_HOSTS_DENY": "ALL: $TARGET$ : DENY"}
    dry = Daemon.start(lab, state, mode="atcp,audp", dry_run=True, settings=settings)
    cli = ["python3", "-m", "portsentinel"]
    try:
        nmap = ["timeout", "60", "nmap", "-n", "-Pn", "-sS", "-T4", "--max-retries", "1"]
        lab.run(lab.scanner, [*nmap, "-p", "1-40", netns.Lab.TARGET4], check=False)
        listed = wait_listed(lab, state)
        why = lab.run(lab.target, [*cli, "why", netns.Lab.SCANNER4, "--state-dir", str(state)],
                      check=False)  # fmt: skip
        history = lab.run(lab.target, [*cli, "history", "--json", "--state-dir", str(state)],
                          check=False)  # fmt: skip
        tables_then = tables(lab)
    finally:
        assert dry.stop()[0] == 0
    [ban] = [row for row in listed if row["address"] == netns.Lab.SCANNER4]
    assert ban["applied"] is False
    assert why.returncode == 0, why.stderr
    assert "dry_run" in why.stdout
    assert any(
        json.loads(line)["src"] == netns.Lab.SCANNER4 for line in history.stdout.splitlines()
    )
    assert "inet portsentinel" not in tables_then
    for name in ("hosts_deny_file", "history_file", "blocked_file"):
        assert (state / name).read_text() == "", name
    assert "would be blocked (dry run: nothing applied)" in dry.stderr()


def wait_listed(lab: netns.Lab, state: Path) -> list[dict[str, object]]:
    argv = ["python3", "-m", "portsentinel", "list", "--json", "--state-dir", str(state)]
    end = time.monotonic() + 20
    while True:
        done = lab.run(lab.target, argv, check=False)
        rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        if rows or time.monotonic() > end:
            return rows
        time.sleep(0.1)


def test_ban_verbs_sent_to_a_dry_run_daemon_touch_nothing(lab: netns.Lab, tmp_path: Path) -> None:
    """block, unblock and allow on the state of a dry-run daemon are refused (exit 1): no
    table is made, no hosts.deny or history line written; status says it is a dry run."""
    lab.run(lab.target, ["nft", "delete", "table", "inet", "portsentinel"], check=False)
    state = tmp_path / "dry"
    settings = {"KILL_HOSTS_DENY": "ALL: $TARGET$ : DENY"}
    dry = Daemon.start(lab, state, mode="atcp,audp", dry_run=True, settings=settings)
    config = str(state / "portsentinel.conf")
    verbs = [["block", "198.18.0.9"], ["unblock", "198.18.0.9"], ["allow", "198.18.0.9"]]
    try:
        done = {
            verb[0]: lab.run(lab.target, ["python3", "-m", "portsentinel", *verb, "--config",
                                          config, "--state-dir", str(state)], check=False)
            for verb in verbs
        }  # fmt: skip
        status = lab.run(lab.target, ["python3", "-m", "portsentinel", "status", "--state-dir",
                                      str(state)], check=False)  # fmt: skip
    finally:
        assert dry.stop()[0] == 0
    for verb, result in done.items():
        assert result.returncode == 1, (verb, result.stdout, result.stderr)
        assert f"{verb} refused: the daemon on {state}" in result.stderr
        assert "runs as a dry run" in result.stderr
    assert "inet portsentinel" not in tables(lab)
    for name in ("hosts_deny_file", "history_file", "blocked_file"):
        assert (state / name).read_text() == "", name
    assert status.stdout.splitlines()[0].startswith("portsentinel ")
    assert "is running as a DRY RUN" in status.stdout.splitlines()[0]


def test_a_bound_mode_that_binds_nothing_gives_up(
    lab: netns.Lab, service: Peer, tmp_path: Path
) -> None:
    ports = ",".join(map(str, TAKEN_PORTS))
    daemon = Daemon.start(lab, tmp_path, mode="tcp", settings={"TCP_PORTS": ports}, wait=False)
    code, stderr = daemon.wait_exit()
    assert code == 1, stderr
    for port in TAKEN_PORTS:
        assert f"adminalert: ERROR: could not bind TCP socket: {port}. Attempting to continue" in (
            stderr
        )
    assert "adminalert: ERROR: could not bind ANY TCP sockets. Shutting down." in stderr
    assert ACTIVE not in stderr


def test_a_native_backend_says_it_replaces_kill_route(lab: netns.Lab, tmp_path: Path) -> None:
    settings = {"KILL_ROUTE": "/sbin/route add -host $TARGET$ reject"}
    daemon = Daemon.start(lab, tmp_path, mode="atcp", settings=settings)
    code, stderr = daemon.stop()
    assert code == 0
    assert (
        "adminalert: KILL_ROUTE is not run: BLOCK_BACKEND=nftables blocks instead "
        "(set BLOCK_BACKEND=legacy to run it as written)"
    ) in stderr.splitlines()


def test_status_and_reload_through_the_control_socket(lab: netns.Lab, tmp_path: Path) -> None:
    daemon = Daemon.start(lab, tmp_path, mode="atcp,audp")
    argv = ["python3", "-m", "portsentinel", "status", "--json", "--state-dir", str(tmp_path)]
    done = lab.run(lab.target, argv, check=False)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["running"] is True
    assert status["pid"] == daemon.pid
    assert status["modes"] == ["atcp", "audp"]
    assert status["ports_watched"] == {"atcp": 1022, "audp": 1020}  # 0-1023 minus the excludes
    assert "kernel_drops" in status["counters"]
    assert (tmp_path / "control.sock").stat().st_mode & 0o777 == 0o600
    reload = ["python3", "-m", "portsentinel", "reload", "--state-dir", str(tmp_path)]
    done = lab.run(lab.target, reload, check=False)
    assert done.returncode == 0, done.stderr
    daemon.wait_for_line("configuration reloaded")
    code, _stderr = daemon.stop()
    assert code == 0
    after = lab.run(
        lab.target,
        ["python3", "-m", "portsentinel", "status", "--state-dir", str(tmp_path)],
        check=False,
    )
    assert after.returncode == 1
    assert "not running" in after.stdout
