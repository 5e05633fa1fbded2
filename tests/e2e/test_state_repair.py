"""End to end: state that is lost or damaged is said, not guessed (issue 15).

- Damaged rows of the store (a ban's evidence that is not JSON, a state no program writes, an
  address that does not parse, an action's detail that is not JSON), written with sqlite3
  while the daemon is down, do not stop the next start: each row is named in the log, the
  other bans are restored, and the kernel's bans of the damaged ones are kept (adopted, as
  for a lost store), none lifted as a stray.
- A KILL_RUN_CMD that was running at ``kill -9`` is not run again at restart: it is recorded
  uncertain, and the log, ``why`` and ``status`` say so, with what the admin can do.
- After ``nft flush ruleset`` the table's conntrack chain is back within the repair interval,
  and late UDP replies to the target's own queries are again not taken for probes.

Root, iproute2, nmap, nft and hping3 (see ``banlab.py``); every packet stays inside the lab,
every file is in the test's temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import netns
import pytest
from banlab import burst, cli, file_lines, list_bans, nft_elements, unavailable, wait_until
from daemon import EVENT_DEADLINE, POLL, Daemon, Peer

pytestmark = [pytest.mark.e2e]
_REASON = unavailable()
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

SETTINGS = {
    "BAN_RATE": "10000",
    "BAN_BURST": "10000",
    "BAN_STRONG_PORTS": "1",
    "BLOCK_UDP": "0",
    "BAN_DURATION": "600",
}
SOURCES = ("198.18.0.100", "198.18.0.101", "198.18.0.102", "198.18.0.103")
REPAIR_DEADLINE = 30.0  # the worker checks every 10 s; generous for a busy machine


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    with netns.Lab.create("psr") as built:
        yield built


def ban_sources(lab: netns.Lab, daemon: Daemon, sources: tuple[str, ...]) -> None:
    """One forged SYN from each source, then wait until each is banned and recorded."""
    sender = burst(lab, sources, [80], rate=100.0)
    assert sender.communicate(timeout=40)[0].strip() == str(len(sources))
    wait_until(
        lambda: (
            {b["address"] for b in list_bans(lab, daemon) if b["state"] == "active"} == set(sources)
        ),
        "every source banned and recorded",
    )


# --- a damaged row: named, skipped, the rest goes on -------------------------------------------


def damage(store: Path) -> dict[str, int]:
    """Damage one row of each kind, as a hand edit or a flipped bit would: the ban ids. The
    fourth ban's nftables action is held in its own row (schema 7): its detail is damaged."""
    raw = sqlite3.connect(store)
    try:
        ids = dict(raw.execute("SELECT address, id FROM bans WHERE state = 'active'"))
        held = raw.execute("SELECT held FROM bans WHERE id = ?", (ids[SOURCES[3]],)).fetchone()
        assert held == ("nftables",)
        raw.execute("PRAGMA ignore_check_constraints = ON")
        raw.execute("UPDATE bans SET evidence = '{broken' WHERE id = ?", (ids[SOURCES[0]],))
        raw.execute("UPDATE bans SET state = 'activ' WHERE id = ?", (ids[SOURCES[1]],))
        raw.execute("UPDATE bans SET address = '198.18.0.x' WHERE id = ?", (ids[SOURCES[2]],))
        raw.execute("UPDATE bans SET held_detail = 'nope' WHERE id = ?", (ids[SOURCES[3]],))
        raw.commit()
    finally:
        raw.close()
    return ids


def test_damaged_rows_are_named_and_skipped_and_the_daemon_starts(
    lab: netns.Lab, tmp_path: Path
) -> None:
    daemon = Daemon.start(lab, tmp_path, settings=SETTINGS)
    try:
        ban_sources(lab, daemon, SOURCES)
    finally:
        code, stderr = daemon.stop()
    assert code == 0, stderr
    ids = damage(tmp_path / "portsentinel.db")

    daemon = Daemon.start(lab, tmp_path, settings=SETTINGS)  # before: the worker died
    try:
        log = daemon.stderr()
        damaged = [line for line in log.splitlines() if "skipped a damaged row" in line]
        assert len(damaged) == 4, log
        one, two, three, four = (ids[address] for address in SOURCES)
        for said in (
            f"bans row {one} (198.18.0.100): evidence is not JSON",
            f"bans row {two} (198.18.0.101): state 'activ' is not one of",
            f"bans row {three} (198.18.0.x): address '198.18.0.x' is not an IP address",
            f"bans row {four} (198.18.0.103): its held action: held_detail is not JSON",
        ):
            assert sum(said in line for line in damaged) == 1, (said, damaged)
        assert "the response worker stopped" not in log
        assert set(nft_elements(lab, 4) or {}) == set(SOURCES), "nothing lifted as a stray"
        bans = {b["address"]: b for b in list_bans(lab, daemon)}
        assert set(bans) == set(SOURCES)
        for address in SOURCES[:3]:  # the kernel's ban kept, on a new record
            assert bans[address]["reason"] == "adopted from the kernel"
        assert bans[SOURCES[3]]["reason"] != "adopted from the kernel"  # restored as it was
        assert f"{len(SOURCES) - 1} nftables bans were in the kernel but not" in log
    finally:
        code, stderr = daemon.stop()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert stderr.count("skipped a damaged row") == 4  # each said once


# --- a ban command interrupted by kill -9: uncertain, not run again ----------------------------


def sleepers(marks: Path) -> list[int]:
    """The pids the command wrote (``$$``, then exec'd into ``sleep``)."""
    return [int(line.split()[1]) for line in file_lines(marks)]


def end_sleepers(marks: Path) -> None:
    """End the commands the test made the daemon start (they outlive its kill -9), by pid."""
    for pid in sleepers(marks):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"sleep" in cmdline:
                os.kill(pid, signal.SIGKILL)


def test_a_command_running_at_kill_9_is_not_run_again_but_said(
    lab: netns.Lab, tmp_path: Path
) -> None:
    marks = tmp_path / "ran.txt"
    settings = {
        **SETTINGS,
        "KILL_RUN_CMD": f"echo $TARGET$ $$ >> {marks}; exec sleep 60",
        "COMMAND_TIMEOUT": "120s",
    }
    source = SOURCES[0]
    try:
        daemon = Daemon.start(lab, tmp_path, settings=settings)
        sender = burst(lab, [source], [80])
        assert sender.communicate(timeout=40)[0].strip() == "1"
        wait_until(lambda: len(file_lines(marks)) == 1, "KILL_RUN_CMD running")
        daemon.stop(signal.SIGKILL)

        daemon = Daemon.start(lab, tmp_path, settings=settings)  # before: ran it again
        try:
            log = daemon.wait_for_line(f"KILL_RUN_CMD for {source} may or may not have run")
            assert [line.split()[0] for line in file_lines(marks)] == [source], "run once"
            assert f"portsentinel unblock {source}, then portsentinel block {source}" in log
            assert source in (nft_elements(lab, 4) or {}), "its nftables ban is in force"

            why = cli(lab, daemon, "why", source)
            assert why.returncode == 0, why.stderr
            assert "run_cmd uncertain: the daemon stopped before its outcome was recorded" in (
                why.stdout
            )
            assert "to do     uncertain: check what the command did" in why.stdout
            status = cli(lab, daemon, "status")
            assert status.returncode == 0, status.stderr
            assert (
                f"WARNING: 1 ban command may or may not have run (uncertain: the daemon stopped "
                f"before their outcome was recorded): {source} (KILL_RUN_CMD)" in status.stdout
            )
            report = json.loads(cli(lab, daemon, "status", "--json").stdout)
            assert report["uncertain_actions"] == 1

            # The admin settles it: unblock (the uncertain command is not undone either).
            assert cli(lab, daemon, "unblock", source).returncode == 0
            report = json.loads(cli(lab, daemon, "status", "--json").stdout)
            assert report["uncertain_actions"] == 0
            assert len(file_lines(marks)) == 1
        finally:
            code, stderr = daemon.stop()
        assert code == 0, stderr
        assert "Traceback" not in stderr
    finally:
        end_sleepers(marks)


# --- the conntrack chain is part of the repaired state -----------------------------------------


def conntrack_chain(lab: netns.Lab) -> bool:
    done = lab.run(lab.target, ["nft", "list", "chain", "inet", "portsentinel", "conntrack"],
                   check=False, timeout=10)  # fmt: skip
    return done.returncode == 0 and "ct state established,related" in done.stdout


def test_a_flushed_conntrack_chain_is_repaired(lab: netns.Lab, tmp_path: Path) -> None:
    scanner4 = netns.Lab.SCANNER4
    target, scanner = Peer(lab, lab.target), Peer(lab, lab.scanner)
    try:
        scanner.call("udp_serve", host=scanner4, port=53, delay=0.3)
        settings = {"ADVANCED_PORTS_TCP": "65536", "ADVANCED_PORTS_UDP": "65536",
                    "BLOCK_TCP": "0", "BLOCK_UDP": "0"}  # fmt: skip
        daemon = Daemon.start(lab, tmp_path, settings=settings)
        try:
            assert conntrack_chain(lab)
            lab.run(lab.target, ["nft", "flush", "ruleset"])  # another tool, say
            assert not conntrack_chain(lab)
            wait_until(lambda: conntrack_chain(lab), "the conntrack chain back", REPAIR_DEADLINE)
            daemon.wait_for_line("conntrack chain repaired (chain conntrack is missing)")

            # Tracking works again: replies that come after the client closed are no probes.
            for _ in range(3):
                target.call("udp_query", host=scanner4, port=53, payload="late", wait=False)
            end = time.monotonic() + EVENT_DEADLINE
            while scanner.call("stats")["late_sent"] < 3:
                assert time.monotonic() < end, "the responder never sent its late replies"
                time.sleep(POLL)
            marker = 7000  # a barrier: once its probe is judged, every earlier packet was
            assert scanner.call("tcp_connect", host=netns.Lab.TARGET4, port=marker)["refused"]
            events = daemon.wait_for_events(
                lambda events: any(e["port"] == marker for e in events), "the barrier probe"
            )
            assert [e for e in events if e["proto"] == "udp"] == []
        finally:
            code, stderr = daemon.stop()
        assert code == 0, stderr
    finally:
        target.close()
        scanner.close()
