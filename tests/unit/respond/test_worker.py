"""The response worker: its backlog is bounded (alerts and probe records wait up to a cap, then
new ones are dropped and counted; bans are never dropped), and its thread applies bans, writes
records and tells the detection loop what changed (WorkerMessage)."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import select
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import ClassVar

import pytest

from portsentinel.config import load_config
from portsentinel.config.schema import Settings
from portsentinel.config.types import Backend as BackendName
from portsentinel.errors import PortSentinelError, StoreError
from portsentinel.host.neverblock import Entry, Source
from portsentinel.host.resolver import Resolver
from portsentinel.model import UNSOLICITED_GROUP, Proto
from portsentinel.respond import bans as bans_module
from portsentinel.respond import first_ban as first_ban_module
from portsentinel.respond import retry as retry_module
from portsentinel.respond import worker as responder_module
from portsentinel.respond.bans import BanRequest
from portsentinel.respond.names import Names
from portsentinel.respond.worker import Responder, WorkerMessage
from portsentinel.store.records import EventRow, LiftedBy
from portsentinel.store.sqlite import Store


def request(i: int) -> BanRequest:
    return BanRequest(address=f"198.19.{i // 256}.{i % 256}", port=80, proto=Proto.TCP,
                      mode=None, level=1, reason="SYN scan: triggered", rule=None,
                      evidence={})  # fmt: skip


def row(i: int) -> EventRow:
    return EventRow(1.0, f"198.19.0.{i % 256}", "198.18.0.1", "tcp", 80, "SYN", "ignored",
                    "already blocked")  # fmt: skip


def quiet_settings(tmp_path: Path) -> Settings:
    return dataclasses.replace(
        load_config(None).settings,
        block_backend=BackendName.LEGACY,
        kill_route="",
        kill_hosts_deny="ALL: $TARGET$ : DENY",
        hosts_deny_file=str(tmp_path / "hosts.deny"),
        history_file=str(tmp_path / "history"),
        blocked_file=str(tmp_path / "blocked"),
        resolve_host=False,
    )


def test_a_worker_that_falls_behind_drops_alerts_and_records_but_never_bans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(responder_module, "MAX_PENDING_ALERTS", 5)
    monkeypatch.setattr(responder_module, "MAX_PENDING_ROWS", 8)
    # Not started: nothing is taken off the queue, as when the worker is far behind.
    worker = Responder(quiet_settings(tmp_path), str(tmp_path))
    for i in range(12):
        worker.alert(request(i))
    assert (worker.alerts_dropped, worker._jobs.qsize()) == (7, 5)
    worker.events([row(i) for i in range(6)])
    worker.events([row(i) for i in range(6)])  # 6 wait, below the cap: taken (12 wait)
    worker.events([row(i) for i in range(2)])  # at the cap: dropped
    assert worker.rows_dropped == 2
    assert worker._jobs.qsize() == 7
    for i in range(20):
        worker.ban(request(100 + i))
    assert worker._jobs.qsize() == 27  # every ban queued


# --- the worker thread, on a real store, with bans that touch no firewall ----------------------
# BLOCK_BACKEND=legacy with an empty KILL_ROUTE and KILL_HOSTS_DENY set: a ban is a hosts.deny
# line in the test's directory, so the whole lifecycle runs without root or a kernel.


def wait_for_messages(
    worker: Responder, want: Callable[[list[WorkerMessage]], bool], timeout: float = 5.0
) -> list[WorkerMessage]:
    """Every message until ``want`` is satisfied by what came so far (bounded wait)."""
    seen: list[WorkerMessage] = []
    deadline = time.monotonic() + timeout
    while not want(seen):
        if time.monotonic() > deadline:
            raise AssertionError(f"not told in time; told: {seen}")
        select.select([worker.fileno()], [], [], 0.05)
        seen += worker.messages()
    return seen


def kinds(messages: list[WorkerMessage]) -> list[str]:
    return [m.kind for m in messages]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


def test_a_ban_is_applied_recorded_and_told(tmp_path: Path, state: Path) -> None:
    told: list[tuple[str, object]] = []
    worker = Responder(
        quiet_settings(tmp_path), str(state), on_ban=lambda a, b: told.append((a, b))
    )
    worker.start()
    try:
        worker.ban(request(1))
        wait_for_messages(worker, lambda seen: worker.bans_active == 1 and told != [])
    finally:
        last = worker.close()
    assert "ALL: 198.19.0.1 : DENY" in (tmp_path / "hosts.deny").read_text()
    assert "198.19.0.1" in (tmp_path / "history").read_text()
    [(address, ban)] = told
    assert address == "198.19.0.1"
    assert isinstance(ban, dict)
    assert ban["target"] == "198.19.0.1"
    assert worker.bans_added == 1
    assert worker.health() == {"hosts_deny": True}
    assert "release" not in kinds(last)


def test_alerts_and_records_reach_the_history_and_the_store(tmp_path: Path, state: Path) -> None:
    worker = Responder(quiet_settings(tmp_path), str(state))
    worker.start()
    worker.alert(request(2))
    worker.events([row(i) for i in range(3)])
    worker.close()
    assert "198.19.0.2" in (tmp_path / "history").read_text()
    assert not (tmp_path / "hosts.deny").exists()  # an alert bans nothing
    store = Store.open(str(state))
    try:
        assert len(store.events_between(0.0, 2.0)) == 3
        assert store.active_bans(time.time()) == []
    finally:
        store.close()


def test_bans_and_allow_entries_changed_by_the_cli_are_told(tmp_path: Path, state: Path) -> None:
    worker = Responder(quiet_settings(tmp_path), str(state))
    worker.start()
    cli = Store.open(str(state))  # what `portsentinel unblock` and `allow` write through
    try:
        worker.ban(request(3))
        wait_for_messages(worker, lambda seen: worker.bans_active == 1)
        record = cli.ban_for("198.19.0.3")
        assert record is not None
        cli.allow("198.19.0.3", time.time())  # as `allow` does: the entry, then the lift
        cli.lift(record.id, time.time(), LiftedBy.UNBLOCK)
        seen = wait_for_messages(worker, lambda seen: {"release", "allow"} <= set(kinds(seen)))
    finally:
        cli.close()
        worker.close()
    # The allow entry is told before the ban is forgotten: the address is never unprotected.
    assert kinds(seen).index("allow") < kinds(seen).index("release")
    assert [m.networks for m in seen if m.kind == "allow"][-1] == ("198.19.0.3/32",)
    assert [m.text for m in seen if m.kind == "release"] == ["198.19.0.3"]
    assert worker.bans_active == 0


def test_a_restart_restores_the_bans_in_force(tmp_path: Path, state: Path) -> None:
    first = Responder(quiet_settings(tmp_path), str(state))
    first.start()
    first.ban(request(4))
    wait_for_messages(first, lambda seen: first.bans_active == 1)
    first.close()
    second = Responder(quiet_settings(tmp_path), str(state))
    second.start()
    try:
        seen = second.messages()
    finally:
        second.close()
    assert [m.text for m in seen if m.kind == "restore"] == ["198.19.0.4"]
    assert "adminalert: 1 bans restored from the state store" in [
        m.text for m in seen if m.kind == "log"
    ]
    assert second.bans_active == 1


def test_a_ban_on_an_address_that_becomes_protected_is_lifted_and_not_restored(
    tmp_path: Path, state: Path
) -> None:
    entries: list[Entry] = []
    worker = Responder(quiet_settings(tmp_path), str(state), protection=lambda: tuple(entries))
    worker.start()
    try:
        worker.ban(request(5))
        worker.ban(request(6))
        wait_for_messages(worker, lambda seen: worker.bans_active == 2)
        worker.protect()  # nothing protected yet: nothing lifted
        entries.append((ipaddress.ip_network("198.19.0.5/32"), "SSH peer", Source.SSH))
        worker.protect()
        seen = wait_for_messages(worker, lambda seen: "release" in kinds(seen))
    finally:
        worker.close()
    assert [m.text for m in seen if m.kind == "release"] == ["198.19.0.5"]
    assert "attackalert: Host 198.19.0.5 unblocked: now in the never-block set (SSH peer)" in [
        m.text for m in seen if m.kind == "log"
    ]
    assert worker.bans_active == 1
    entries.append((ipaddress.ip_network("198.19.0.6/32"), "allowed by operator", Source.ALLOW))
    again = Responder(quiet_settings(tmp_path), str(state), protection=lambda: tuple(entries))
    again.start()
    try:
        told = again.messages()
    finally:
        again.close()
    assert [m.text for m in told if m.kind == "restore"] == []
    assert again.bans_active == 0
    with Store.open(str(state)) as store:
        assert store.active_bans(time.time()) == []


def test_a_state_directory_it_cannot_open_stops_the_start(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    worker = Responder(quiet_settings(tmp_path), str(not_a_dir))
    with pytest.raises(PortSentinelError, match="cannot start responses"):
        worker.start()
    worker.close()


# --- the store refusing writes: the worker waits it out, or stops the daemon ------------------


def refusing(monkeypatch: pytest.MonkeyPatch, message: str, times: int) -> list[int]:
    """``BanManager.ban_many`` raises StoreError(message) ``times`` times, then works; the
    list counts the calls."""
    calls: list[int] = []
    real = bans_module.BanManager.ban_many

    def flaky(self: object, *args: object, **kw: object) -> object:
        calls.append(1)
        if len(calls) <= times:
            raise StoreError(f"/state/portsentinel.db: {message}")
        return real(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(bans_module.BanManager, "ban_many", flaky)
    monkeypatch.setattr(retry_module, "RETRY_FIRST", 0.01)
    return calls


def test_a_locked_store_is_waited_out_and_the_ban_still_made(
    tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = refusing(monkeypatch, "database is locked", times=3)
    worker = Responder(quiet_settings(tmp_path), str(state))
    worker.start()
    try:
        worker.ban(request(1))
        seen = wait_for_messages(worker, lambda seen: worker.bans_active == 1)
        outage_seen = worker.store_outage
    finally:
        seen += worker.close()
    assert len(calls) == 4
    lines = [m.text for m in seen if m.kind == "log"]
    assert any("refuses writes (/state/portsentinel.db: database is locked)" in x for x in lines)
    assert any("takes writes again" in line for line in lines)
    assert outage_seen is None  # over once the ban went through
    assert "ALL: 198.19.0.1 : DENY" in (tmp_path / "hosts.deny").read_text()
    assert "fatal" not in kinds(seen)


def test_an_outage_is_shown_while_it_lasts(
    tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusing(monkeypatch, "database or disk is full", times=10**9)
    worker = Responder(quiet_settings(tmp_path), str(state))
    worker.start()
    try:
        worker.ban(request(1))
        wait_for_messages(worker, lambda seen: worker.store_outage is not None)
        outage = worker.store_outage
        assert outage is not None
        assert "disk is full" in outage[1]
    finally:
        last = worker.close(timeout=10.0)
    assert any("not stored before the stop" in m.text for m in last)


def test_a_damaged_store_stops_the_daemon_instead_of_failing_open(
    tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusing(monkeypatch, "not a usable PortSentinel store (database disk image is malformed)", 1)
    worker = Responder(quiet_settings(tmp_path), str(state))
    worker.start()
    try:
        worker.ban(request(1))
        seen = wait_for_messages(worker, lambda seen: "fatal" in kinds(seen))
    finally:
        worker.close()
    (fatal,) = [m for m in seen if m.kind == "fatal"]
    assert "malformed" in fatal.text
    assert "the response worker stopped" in fatal.text


# --- RESOLVE_HOST: a name server that never answers holds up no ban ---------------------------


def test_bans_never_wait_for_a_name_and_the_lines_follow(
    tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = threading.Event()

    def silent(address: str) -> str:
        answer.wait(60)  # a server that never answers (until the test ends)
        raise OSError("timed out")

    monkeypatch.setattr(responder_module, "Resolver", partial(Resolver, lookup=silent))
    monkeypatch.setattr(responder_module, "Names", partial(Names, wait=0.3))
    settings = dataclasses.replace(quiet_settings(tmp_path), resolve_host=True)
    worker = Responder(settings, str(state))
    worker.start()
    history = tmp_path / "history"

    def lines() -> int:
        return history.read_text().count("Blocked\n") if history.exists() else 0

    try:
        for i in range(40):
            worker.ban(request(i))
        # Every ban in force while every lookup still hangs: the worker waited for none.
        wait_for_messages(worker, lambda seen: worker.bans_active == 40)
        wait_for_messages(worker, lambda seen: lines() == 40)
        assert "Host: 198.19.0.7/198.19.0.7 Port: 80" in history.read_text()
        assert worker.names_missed[1] > 0  # written with the address: the name came late
    finally:
        worker.close()
        answer.set()


# --- damaged rows and the conntrack chain --------------------------------------------------------


def log_lines(messages: list[WorkerMessage]) -> list[str]:
    return [m.text for m in messages if m.kind == "log"]


def test_damaged_rows_are_named_at_start_and_while_it_runs(tmp_path: Path, state: Path) -> None:
    first = Responder(quiet_settings(tmp_path), str(state))
    first.start()
    first.ban(request(5))
    wait_for_messages(first, lambda seen: first.bans_active == 1)
    first.close()
    cli = Store.open(str(state))
    try:
        cli._conn.execute("UPDATE bans SET evidence = 'x' WHERE address = '198.19.0.5'")
        worker = Responder(quiet_settings(tmp_path), str(state))
        worker.start()  # a damaged row does not stop the start
        seen = worker.messages()
        assert any("skipped a damaged row: bans row 1 (198.19.0.5)" in x for x in log_lines(seen))
        worker.ban(request(6))
        wait_for_messages(worker, lambda seen: worker.bans_active == 1)
        # Damaged while the worker runs: a new ban of the network reads it (a bulk query).
        cli._conn.execute("UPDATE bans SET evidence = 'y' WHERE address = '198.19.0.6'")
        worker.ban(request(6))
        seen = wait_for_messages(worker, lambda seen: "bans row 2" in "".join(log_lines(seen)))
        seen += worker.close()
    finally:
        cli.close()
    assert "fatal" not in kinds(seen)
    assert cli_view(state) == {"198.19.0.6"}  # banned again, on a new row


def cli_view(state: Path) -> set[str]:
    with Store.open(str(state)) as store:
        return {r.address for r in store.active_bans(time.time())}


class FakeChain:
    made: ClassVar[list[FakeChain]] = []

    def __init__(self, ssh_ports: tuple[int, ...] = (), ack_group: int | None = None) -> None:
        self.closed = False
        self.ssh_ports = ssh_ports
        self.ack_group = ack_group
        self.problems: list[str | None] = ["chain conntrack is missing"]
        FakeChain.made.append(self)

    def install(self) -> str | None:
        return "the nft command is not installed" if len(FakeChain.made) > 1 else None

    def problem(self) -> str | None:
        return self.problems.pop() if self.problems else None

    def close(self) -> None:
        self.closed = True


def test_the_conntrack_chain_is_installed_at_start_and_repaired_with_the_bans(
    tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(first_ban_module, "ConntrackChain", FakeChain)
    monkeypatch.setattr(responder_module, "REPAIR_EVERY", 0.05)
    FakeChain.made = []
    worker = Responder(quiet_settings(tmp_path), str(state), conntrack=True)
    worker.start()
    try:
        seen = wait_for_messages(
            worker, lambda seen: any("conntrack chain repaired" in x for x in log_lines(seen))
        )
    finally:
        worker.close()
    [chain] = FakeChain.made
    assert chain.closed
    assert chain.ssh_ports  # SSH peers are protected by default: the chain notes them
    assert chain.ack_group == UNSOLICITED_GROUP  # ACK_PROBES is on by default
    assert worker.notes_ssh_peers
    assert not any("cannot turn connection tracking on" in x for x in log_lines(seen))
    # A second worker whose install fails says so once and repairs nothing.
    failing = Responder(quiet_settings(tmp_path), str(state), conntrack=True)
    failing.start()
    try:
        seen = failing.messages()
    finally:
        seen += failing.close()
    assert any("cannot turn connection tracking on (the nft command" in x for x in log_lines(seen))
    assert FakeChain.made[1].closed
    assert FakeChain.made[1].problems  # never asked
    assert not failing.notes_ssh_peers


def _wake_bytes(worker: Responder) -> int:
    """The wake-up bytes waiting on the loop's side (read and so taken)."""
    taken = 0
    with contextlib.suppress(BlockingIOError):
        while chunk := worker._wake_r.recv(4096):
            taken += len(chunk)
    return taken


def _wait_bans(worker: Responder, count: int) -> None:
    deadline = time.monotonic() + 10
    while worker.bans_added < count:
        assert time.monotonic() < deadline, "the bans were not applied in time"
        time.sleep(0.01)


def test_a_burst_of_bans_wakes_the_loop_once_until_it_reads(tmp_path: Path, state: Path) -> None:
    """Each ban's log line is a message; a burst of them costs one wake-up byte, and a message
    told after the loop read the others wakes it again."""
    worker = Responder(quiet_settings(tmp_path), str(state))
    worker.start()
    try:
        worker.messages()
        for i in range(1, 51):
            worker.ban(request(i))
        _wait_bans(worker, 50)
        assert _wake_bytes(worker) == 1
        told = worker.messages()
        assert len([m for m in told if "has been blocked" in m.text]) == 50
        worker.ban(request(51))
        _wait_bans(worker, 51)
        assert select.select([worker.fileno()], [], [], 10)[0]  # woken again
        assert any("198.19.0.51 " in m.text for m in worker.messages())
    finally:
        worker.close()


def test_the_worker_folds_new_records_into_the_reports_rollups(
    tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(responder_module, "ROLL_EVERY", 0.05)
    worker = Responder(quiet_settings(tmp_path), str(state))
    worker.start()
    try:
        worker.events([row(i) for i in range(5)])
        with Store.open(str(state), offline=None) as store:  # reads only: the worker folds
            folded = store._conn.execute("SELECT rolled_to FROM roll_state")
            deadline = time.monotonic() + 30
            while folded.fetchone() != (5,) and time.monotonic() < deadline:
                time.sleep(0.02)
                folded = store._conn.execute("SELECT rolled_to FROM roll_state")
            assert store._conn.execute("SELECT sum(probes) FROM roll_cells").fetchone() == (5,)
    finally:
        worker.close()
