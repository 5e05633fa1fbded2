"""The SQLite state store, on real files in temporary directories (no mocks)."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from portsentinel.errors import StoreError
from portsentinel.model import Action, Decision, Mode, Proto, Reason, ScanKind
from portsentinel.store import bulk, rollup, sqlite
from portsentinel.store.sqlite import (
    ActionState,
    BanRecord,
    BanState,
    DuplicateBanError,
    EventRow,
    LiftedBy,
    Store,
)

HOUR = 3600.0
T0 = 1_700_000_000.0


def event(t: float, src: str = "198.18.0.7", port: int = 1, kind: str = "SYN") -> EventRow:
    return EventRow(t, src, "198.18.0.1", "tcp", port, kind, "alert", "below trigger")


def ban(store: Store, address: str, created: float = T0, **changes: Any) -> BanRecord:
    fields: dict[str, Any] = {
        "prefix": None, "created": created, "expires": created + HOUR, "reason": "scan",
        "rule": "atcp", "evidence": {"ports": [1, 2, 3], "kinds": ["SYN"], "hits": 3},
        "offence": 1,
    }  # fmt: skip
    fields.update(changes)
    prefix = fields.pop("prefix")
    return store.begin_ban(address, prefix, **fields)


@pytest.fixture
def state_dir(tmp_path: Path) -> str:
    return str(tmp_path / "state")


@pytest.fixture
def store(state_dir: str) -> Any:
    with Store.open(state_dir) as opened:
        yield opened


# --- Events --------------------------------------------------------------------------------


def test_events_round_trip_with_normalised_addresses(store: Store) -> None:
    decision = Decision(
        T0, "::ffff:198.18.0.7", "FD00:5E::0001", Proto.TCP, 22, ScanKind.XMAS, Action.BLOCK,
        Reason.TRIGGERED, flags=0x29, mode=Mode.ATCP, rule="atcp", hits=5, ports_seen=4,
    )  # fmt: skip
    assert store.add_events([EventRow.from_decision(decision, T0 + 0.5)]) == 1
    [row] = store.events_between(T0, T0 + 1)
    assert row == EventRow(
        T0 + 0.5, "198.18.0.7", "fd00:5e::1", "tcp", 22, "XMAS", "block",
        "scan trigger reached", "atcp", "atcp", 5, 4, "FIN|PSH|URG", False,
    )  # fmt: skip


def test_a_bad_address_writes_nothing_of_the_batch(store: Store) -> None:
    with pytest.raises(ValueError, match="not-an-ip"):
        store.add_events([event(T0), event(T0 + 1, src="not-an-ip")])
    assert store.events_between(0, 2 * T0) == []


def test_events_between_is_half_open_and_ordered(store: Store) -> None:
    store.add_events([event(T0 + 2), event(T0), event(T0 + 1), event(T0 + 3)])
    assert [e.time for e in store.events_between(T0, T0 + 3)] == [T0, T0 + 1, T0 + 2]


def test_events_for_a_host_a_prefix_since_and_limit(store: Store) -> None:
    store.add_events(
        [event(T0 + i, src="2001:db8:0:1::5", port=i) for i in range(5)]
        + [event(T0 + 10, src="2001:db8:0:1:ffff::9", port=99)]
        + [event(T0 + 11, src="2001:db8:0:2::5", port=100)]  # the next /64
        + [event(T0 + 12, src="198.18.0.7", port=7), event(T0 + 13, src="198.18.1.7", port=8)]
    )
    assert [e.port for e in store.events_for("2001:db8:0:1::5")] == [0, 1, 2, 3, 4]
    assert [e.port for e in store.events_for("2001:db8:0:1::/64")] == [0, 1, 2, 3, 4, 99]
    assert [e.port for e in store.events_for("2001:db8:0:1::5", since=T0 + 3)] == [3, 4]
    assert [e.port for e in store.events_for("2001:db8:0:1::5", limit=2)] == [3, 4]
    assert [e.port for e in store.events_for("198.18.0.0/24")] == [7]
    assert [e.port for e in store.events_for("198.18.0.0/15")] == [7, 8]
    assert store.events_for("198.18.0.8") == []


def test_purge_removes_only_older_events_across_batches(store: Store) -> None:
    store.add_events([event(T0 + i) for i in range(25)])
    assert store.purge_events(T0 + 20, batch=7) == 20
    assert [e.time for e in store.events_between(0, 2 * T0)] == [T0 + i for i in range(20, 25)]
    assert store.purge_events(T0 + 20, batch=7) == 0


# --- Bans ----------------------------------------------------------------------------------


def test_block_then_unblock_lifecycle(store: Store) -> None:
    record = ban(store, "198.18.0.7")
    assert (record.state, record.target, record.prefix) == (BanState.PENDING, "198.18.0.7", 32)
    assert record.evidence["ports"] == [1, 2, 3]
    assert store.ban(record.id) == record
    detail = {"set": "ban4", "element": "198.18.0.7", "undo": ["delete", "element"]}
    store.record_action(record.id, "nftables", detail, "applied", at=T0 + 1)
    store.record_action(record.id, "hosts_deny", {"line": "ALL: 198.18.0.7"}, "applied", at=T0)
    assert store.activate(record.id)
    assert store.ban_for("198.18.0.7") == store.ban(record.id)
    assert store.ban(record.id).state is BanState.ACTIVE  # type: ignore[union-attr]

    assert store.lift(record.id, T0 + 60, LiftedBy.UNBLOCK)
    assert not store.lift(record.id, T0 + 61, LiftedBy.EXPIRY)  # the race is lost quietly
    assert store.ban_for("198.18.0.7") is None
    assert [b.id for b in store.bans_to_undo()] == [record.id]
    store.record_action(record.id, "nftables", None, ActionState.UNDONE, at=T0 + 62)
    store.record_action(record.id, "hosts_deny", None, ActionState.UNDONE, at=T0 + 62)
    assert store.bans_to_undo() == []
    lifted = store.ban(record.id)
    assert lifted is not None
    assert (lifted.state, lifted.lifted_at, lifted.lifted_by) == (
        BanState.LIFTED,
        T0 + 60,
        "unblock",
    )
    nft, hosts = store.actions(record.id)  # in the order they were applied
    assert (nft.backend, nft.state, nft.detail) == ("nftables", ActionState.UNDONE, detail)
    assert (hosts.backend, hosts.updated) == ("hosts_deny", T0 + 62)


def test_attempts_count_repeats_of_the_same_state(store: Store) -> None:
    record = ban(store, "198.18.0.7")
    for error in ("timeout", "timeout", "busy"):
        store.record_action(record.id, "iptables", {"rule": "r"}, "failed", error, at=T0)
    [action] = store.actions(record.id)
    assert (action.attempts, action.last_error) == (3, "busy")
    store.record_action(record.id, "iptables", {"rule": "r2"}, "applied", at=T0 + 1)
    [action] = store.actions(record.id)
    assert (action.attempts, action.last_error, action.detail) == (1, None, {"rule": "r2"})


def test_an_action_needs_an_existing_ban(store: Store) -> None:
    with pytest.raises(StoreError, match="FOREIGN KEY"):
        store.record_action(999, "nftables", {}, "applied", at=T0)


def test_one_live_ban_per_network(store: Store) -> None:
    first = ban(store, "2001:db8::1")
    with pytest.raises(DuplicateBanError):
        ban(store, "2001:DB8:0::1")
    store.lift(first.id, T0 + 1, "unblock")
    assert ban(store, "2001:db8::1", created=T0 + 2).offence == 1  # a new ban is fine now


def test_ban_for_finds_the_most_specific_covering_ban(store: Store) -> None:
    wide = ban(store, "2001:db8:0:1::5", prefix=64)
    assert (wide.address, wide.prefix, wide.target) == ("2001:db8:0:1::", 64, "2001:db8:0:1::/64")
    assert store.ban_for("2001:db8:0:1::77") == wide
    assert store.ban_for("2001:db8:0:1::/64") == wide
    assert store.ban_for("2001:db8:0:2::1") is None
    host = ban(store, "2001:db8:0:1::77")
    assert store.ban_for("2001:db8:0:1::77") == host
    assert store.ban_for("2001:db8:0:1::78") == wide
    v4 = ban(store, "198.18.0.0", prefix=24)  # other lengths, other family
    assert store.ban_for("198.18.0.200") == v4
    assert store.ban_for("198.18.1.1") is None
    assert store.ban_for("2001:db8:0:1::77") == host


def test_expiry_split_and_permanent_bans(store: Store) -> None:
    short = ban(store, "198.18.0.1", expires=T0 + 10)
    long = ban(store, "198.18.0.2", expires=T0 + HOUR)
    forever = ban(store, "198.18.0.3", expires=None)
    assert [b.id for b in store.active_bans(T0 + 20)] == [short.id + 1, forever.id]
    assert [b.id for b in store.due_for_expiry(T0 + 20)] == [short.id]
    assert [b.id for b in store.due_for_expiry(T0 + 10 * HOUR)] == [short.id, long.id]
    assert store.lift(short.id, T0 + 20, "expiry")
    assert store.ban(short.id).state is BanState.EXPIRED  # type: ignore[union-attr]
    assert store.due_for_expiry(T0 + 20) == []


def test_a_ban_no_backend_applied_fails(store: Store) -> None:
    record = ban(store, "198.18.0.7")
    assert store.fail(record.id, T0 + 1)
    assert not store.activate(record.id)
    assert store.active_bans(T0) == []
    assert store.ban(record.id).lifted_at == T0 + 1  # type: ignore[union-attr]


def test_offences_count_earlier_bans_in_the_look_back(store: Store) -> None:
    for day, by in ((0, "expiry"), (1, "unblock"), (2, "allow"), (3, "expiry")):
        created = T0 + day * 24 * HOUR
        record = ban(store, "198.18.0.7", created=created, offence=day + 1)
        store.lift(record.id, created + HOUR, by)
    ban(store, "198.18.0.0", prefix=24)  # another network
    assert store.offences("198.18.0.7", since=T0) == 3  # the allow-lifted one is forgiven
    assert store.offences("198.18.0.7", since=T0 + 24 * HOUR) == 2
    assert store.offences("198.18.0.7", since=T0 + 10 * 24 * HOUR) == 0
    assert store.offences("198.18.0.0/24", since=T0) == 1


def test_bans_between_returns_lifetimes_that_overlap(store: Store) -> None:
    before = ban(store, "198.18.0.1", created=T0)
    store.lift(before.id, T0 + 5, "expiry")  # over before the window
    across = ban(store, "198.18.0.2", created=T0 + 1)
    store.lift(across.id, T0 + 15, "unblock")  # ends inside the window
    still = ban(store, "198.18.0.3", created=T0 + 2)  # live through the window
    inside = ban(store, "198.18.0.4", created=T0 + 12)
    ban(store, "198.18.0.5", created=T0 + 30)  # after the window
    found = store.bans_between(T0 + 10, T0 + 20)
    assert [b.id for b in found] == [across.id, still.id, inside.id]


def test_allow_and_disallow(store: Store) -> None:
    assert store.allow("198.18.0.7", T0, "admin desk") == "198.18.0.7/32"
    assert store.allow("2001:db8::5/64", T0 + 1) == "2001:db8::/64"
    assert store.allow("198.18.0.7", T0 + 2, "the admin's desk") == "198.18.0.7/32"
    assert store.allowed() == ["198.18.0.7/32", "2001:db8::/64"]
    first = store.allowed_entries()[0]
    assert (first.added, first.comment) == (T0, "the admin's desk")
    assert store.disallow("198.18.0.7/32")
    assert not store.disallow("198.18.0.7")
    assert store.allowed() == ["2001:db8::/64"]


@pytest.mark.parametrize("bad", ["", "198.18.0.256", "host.example", "198.18.0.0/33", "::1/200"])
def test_bad_addresses_are_value_errors(store: Store, bad: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - ipaddress's messages vary with the input
        store.allow(bad, T0)
    with pytest.raises(ValueError):  # noqa: PT011
        ban(store, bad)
    with pytest.raises(ValueError):  # noqa: PT011
        store.ban_for(bad)
    assert store.allowed() == []


def test_uncertain_commands_of_live_bans_are_listed_until_their_ban_ends(store: Store) -> None:
    host = ban(store, "198.18.0.7")
    prefix = ban(store, "2001:db8::5", prefix=64)
    ended = ban(store, "198.18.0.8")
    for record in (host, prefix, ended):
        store.record_action(record.id, "run_cmd", None, ActionState.UNCERTAIN, "?", at=T0)
    store.record_action(host.id, "nftables", None, ActionState.APPLIED, at=T0)
    store.lift(ended.id, T0 + 1, LiftedBy.UNBLOCK)
    assert store.uncertain() == [("198.18.0.7", "run_cmd"), ("2001:db8::/64", "run_cmd")]


# --- Indexed queries -----------------------------------------------------------------------

# Each query with every step of its plan, in order: (table, index it must go through). Issue 5's
# reports are here in the shape they will take, to show the schema answers them by index.
PLANS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "active_bans": (sqlite.SQL_ACTIVE_BANS, [("bans", "bans_live_expires")]),  # live only
    "due_for_expiry": (sqlite.SQL_DUE_FOR_EXPIRY, [("bans", "bans_live_expires")]),
    "bans_to_undo": (
        sqlite.SQL_BANS_TO_UNDO,
        [("bans", "PRIMARY KEY"), ("ban_actions", "ban_actions_open"), ("bans", "bans_held_open")],
    ),
    "offences": (sqlite.SQL_OFFENCES, [("bans", "bans_address_created")]),
    "bans_between": (
        sqlite.SQL_BANS_BETWEEN,
        [("bans", "PRIMARY KEY"), ("bans", "bans_created"), ("bans", "bans_lifted"),
         ("bans", "bans_live_expires")],
    ),
    "ban_for": (sqlite.SQL_BAN_FOR.format(marks="?, ?"), [("bans", "bans_live")]),
    "ban_for, lengths": (sqlite.SQL_LIVE_PREFIXES, [("bans", "bans_live")]),
    "live_bans_for, lengths": (bulk.SQL_LIVE_LENGTHS, [("bans", "bans_live")]),
    "actions": (sqlite.SQL_ACTIONS, [("ban_actions", "sqlite_autoindex_ban_actions_1")]),
    "uncertain": (
        sqlite.SQL_UNCERTAIN, [("ban_actions", "ban_actions_uncertain"), ("bans", "PRIMARY KEY")],
    ),
    "events_between": (sqlite.SQL_EVENTS_BETWEEN, [("events", "events_time")]),
    "events_for": (sqlite.SQL_EVENTS_FROM, [("events", "events_src_key_time")]),
    "purge_events": (
        rollup.SQL_OLDEST, [("events", "events_time")],
    ),
    "report: kinds per hour": (
        "SELECT kind, CAST(time / 3600 AS INTEGER) AS hour, count(*) FROM events "
        "WHERE time >= ? AND time < ? GROUP BY kind, hour",
        [("events", "events_time")],
    ),
    "report: top sources": (
        "SELECT src, count(*), count(DISTINCT port) FROM events "
        "WHERE time >= ? AND time < ? GROUP BY src ORDER BY 2 DESC LIMIT 10",
        [("events", "events_time")],
    ),
    "report: port heat map": (
        "SELECT port, count(*) FROM events WHERE time >= ? AND time < ? GROUP BY port",
        [("events", "events_time")],
    ),
    "history --since": (
        "SELECT * FROM bans WHERE created >= ? ORDER BY created", [("bans", "bans_created")],
    ),
}  # fmt: skip
_PLAN_STEP = re.compile(r"(?:SCAN|SEARCH) (?:TABLE )?(\w+)(?: USING .*?(\w+ KEY|INDEX \w+))?")


def test_every_store_query_has_its_plan_checked() -> None:
    constants = {getattr(sqlite, name) for name in dir(sqlite) if name.startswith("SQL_")}
    checked = {sql for sql, _ in PLANS.values()} | {sqlite.SQL_BAN_FOR}
    assert constants <= checked


@pytest.mark.parametrize("name", PLANS)
def test_queries_go_through_the_expected_indexes(store: Store, name: str) -> None:
    sql, expected = PLANS[name]
    names = re.findall(r":(\w+)", sql)
    params: Any = dict.fromkeys(names, 1) if names else (1,) * sql.count("?")
    plan = [row[3] for row in store._conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    steps = [(m[1], m[2]) for step in plan if (m := _PLAN_STEP.match(step))]
    assert steps == [(t, i if i.endswith("KEY") else f"INDEX {i}") for t, i in expected], plan


# --- Two connections at once ---------------------------------------------------------------


def test_a_second_connection_sees_committed_changes(state_dir: str) -> None:
    with Store.open(state_dir) as daemon, Store.open(state_dir, offline=None) as cli:
        seen = daemon.data_version()
        record = ban(cli, "198.18.0.7")
        cli.allow("198.18.0.0/24", T0)
        assert daemon.data_version() != seen  # the daemon's cheap poll notices
        assert daemon.ban_for("198.18.0.7") == record
        assert daemon.allowed() == ["198.18.0.0/24"]
        daemon.add_events([event(T0)])
        assert len(cli.events_for("198.18.0.7")) == 1


def _hold_write_lock(path: str, seconds: float) -> threading.Thread:
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO allowed VALUES ('198.18.1.1', 32, 1.0, 'held')")

    def release() -> None:
        time.sleep(seconds)
        holder.execute("COMMIT")
        holder.close()

    thread = threading.Thread(target=release)
    thread.start()
    return thread


def test_a_writer_waits_for_the_other_sides_transaction(state_dir: str) -> None:
    with Store.open(state_dir) as store:
        holder = _hold_write_lock(store.path, 0.3)
        started = time.perf_counter()
        store.add_events([event(T0)])  # would be "database is locked" without busy_timeout
        waited = time.perf_counter() - started
        holder.join()
        assert waited >= 0.25
        assert len(store.events_between(0, 2 * T0)) == 1
        assert store.allowed() == ["198.18.1.1/32"]


def test_a_lock_held_past_the_timeout_is_a_store_error(state_dir: str) -> None:
    with Store.open(state_dir, busy_timeout=0.05) as store:
        holder = _hold_write_lock(store.path, 0.5)
        try:
            with pytest.raises(StoreError, match=r"portsentinel\.db: database is locked$"):
                store.allow("198.18.0.7", T0)
        finally:
            holder.join()
        store.allow("198.18.0.7", T0)  # and the store is usable afterwards


WRITER = """
import sys
from portsentinel.store.sqlite import EventRow, Store
state_dir, n = sys.argv[1], int(sys.argv[2])
with Store.open(state_dir) as store:
    for i in range(50):
        addr = f"198.18.{n}.{i}"
        rec = store.begin_ban(addr, None, created=1.0, expires=2.0, reason="r", rule=None,
                              evidence={}, offence=1)
        store.record_action(rec.id, "nftables", {"e": addr}, "applied", at=1.0)
        store.activate(rec.id)
        store.add_events([EventRow(1.0, addr, "198.18.0.1", "tcp", p, "SYN", "block", "r")
                          for p in range(10)])
"""


def test_concurrent_writers_in_separate_processes_all_succeed(state_dir: str) -> None:
    Store.open(state_dir).close()
    children = [
        subprocess.Popen([sys.executable, "-c", WRITER, state_dir, str(n)], stderr=subprocess.PIPE)
        for n in range(4)
    ]
    errors = [child.communicate(timeout=60)[1].decode() for child in children]
    assert [child.returncode for child in children] == [0, 0, 0, 0], errors
    with Store.open(state_dir) as store:
        assert len(store.active_bans(0.0)) == 200
        assert len(store.events_between(0, 10)) == 2000


# --- kill -9 -------------------------------------------------------------------------------

CRASHER = """
import os, signal, sys
from portsentinel.store.sqlite import EventRow, Store
state_dir, kill_at = sys.argv[1], int(sys.argv[2])
store = Store.open(state_dir)
commits = 0
def trace(statement):
    global commits
    if statement == "COMMIT":  # traced as it starts: killing here is killing before it
        commits += 1
        if commits == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
store._conn.set_trace_callback(trace)
rec = store.begin_ban("198.18.0.7", None, created=1000.0, expires=4600.0, reason="scan",
                      rule="atcp", evidence={"ports": [1, 2]}, offence=1)
store.record_action(rec.id, "nftables", {"element": "198.18.0.7"}, "applied", at=1000.5)
store.add_events([EventRow(1000.0 + i, "198.18.0.7", "198.18.0.1", "tcp", i, "SYN", "block",
                           "scan trigger reached") for i in range(1000)])
store.activate(rec.id)
os.kill(os.getpid(), signal.SIGKILL)
"""

# Killed before commit number k: what a restart must find (ban state, actions, events).
AFTER_KILL = {
    1: (None, 0, 0),
    2: (BanState.PENDING, 0, 0),
    3: (BanState.PENDING, 1, 0),
    4: (BanState.PENDING, 1, 1000),
    5: (BanState.ACTIVE, 1, 1000),  # after the last commit
}


@pytest.mark.parametrize("kill_at", sorted(AFTER_KILL))
def test_kill_9_keeps_exactly_the_committed_state(state_dir: str, kill_at: int) -> None:
    Store.open(state_dir).close()
    child = subprocess.run(
        [sys.executable, "-c", CRASHER, state_dir, str(kill_at)], capture_output=True, check=False
    )
    assert child.returncode == -9, child.stderr.decode()
    with Store.open(state_dir) as store:
        assert store._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        found = store.ban_for("198.18.0.7")
        state, n_actions, n_events = AFTER_KILL[kill_at]
        assert (found.state if found else None) == state
        assert len(store.events_between(0, 5000)) == n_events
        if found is not None:
            assert len(store.actions(found.id)) == n_actions
            assert store.active_bans(1001.0) == [found]  # what a restart re-applies
            with pytest.raises(DuplicateBanError):  # and never a second rule for it
                ban(store, "198.18.0.7", created=1001.0)
