"""The SQLite state store, on real files in temporary directories (no mocks)."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from portsentinel import __version__
from portsentinel.errors import StoreError
from portsentinel.model import Action, Decision, Mode, Proto, Reason, ScanKind
from portsentinel.store import schema, sqlite
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


# --- Opening -------------------------------------------------------------------------------


FILES = ("portsentinel.db", "portsentinel.db-wal", "portsentinel.db-shm")


def test_new_store_makes_private_files_at_the_current_version(state_dir: str) -> None:
    old = os.umask(0o077)  # the modes are set, not left to the umask
    try:
        with Store.open(state_dir) as store:
            assert store.schema_version() == schema.SCHEMA_VERSION
            assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
            assert store._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
            meta = store.meta()
            store.allow("198.18.0.1", T0)
            modes = {name: stat.S_IMODE(os.stat(Path(state_dir, name)).st_mode) for name in FILES}
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o750
    assert modes == dict.fromkeys(FILES, 0o640)  # SQLite gives -wal and -shm the file's mode
    assert meta["offline"] == "0"
    assert meta["program_version"] == __version__
    assert float(meta["created_at"]) > 1_600_000_000
    raw = sqlite3.connect(os.path.join(state_dir, "portsentinel.db"))
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


def test_reopening_keeps_data_and_meta(state_dir: str) -> None:
    with Store.open(state_dir) as store:
        store.add_events([event(T0)])
        created_at = store.meta()["created_at"]
    with Store.open(state_dir) as store:
        assert len(store.events_between(0, 2 * T0)) == 1
        assert store.meta()["created_at"] == created_at


def test_garbage_file_is_a_store_error_naming_the_file(state_dir: str) -> None:
    os.makedirs(state_dir)
    path = os.path.join(state_dir, "portsentinel.db")
    Path(path).write_bytes(b"this is not an SQLite database at all" * 200)
    with pytest.raises(StoreError, match=re.escape(path) + ": not a usable PortSentinel store"):
        Store.open(state_dir)


def test_damaged_pages_are_a_store_error_when_read(state_dir: str) -> None:
    with Store.open(state_dir) as store:
        store.add_events([event(float(i), port=i) for i in range(5000)])
    path = os.path.join(state_dir, "portsentinel.db")  # closed: the WAL is checkpointed in it
    with open(path, "r+b") as damaged:
        for offset in range(3 * 4096, os.path.getsize(path), 5 * 4096):
            damaged.seek(offset)
            damaged.write(b"\xde\xad\xbe\xef" * 256)
    with Store.open(state_dir) as store, pytest.raises(StoreError, match="malformed"):
        store.events_between(0, T0)


def test_foreign_sqlite_file_is_refused(state_dir: str) -> None:
    os.makedirs(state_dir)
    path = os.path.join(state_dir, "portsentinel.db")
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE notes (x)")
    other.commit()
    other.close()
    with pytest.raises(StoreError, match="not a PortSentinel store"):
        Store.open(state_dir)


def test_file_from_a_newer_program_is_refused(state_dir: str) -> None:
    Store.open(state_dir).close()
    raw = sqlite3.connect(os.path.join(state_dir, "portsentinel.db"))
    raw.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StoreError, match=rf"schema version {schema.SCHEMA_VERSION + 1} is newer"):
        Store.open(state_dir)


def test_offline_and_live_stores_are_not_mixed(tmp_path: Path) -> None:
    live, replay = str(tmp_path / "live"), str(tmp_path / "replay")
    Store.open(live).close()
    with Store.open(replay, offline=True) as store:
        assert store.offline
        assert ban(store, "198.18.0.9").offline
    with pytest.raises(StoreError, match="live store"):
        Store.open(live, offline=True)
    with pytest.raises(StoreError, match=r"offline \(replay\) store"):
        Store.open(replay)
    with Store.open(replay, offline=None) as reader:  # list, why, report read either kind
        assert reader.offline
        assert reader.ban_for("198.18.0.9") is not None


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


# --- Migrations ----------------------------------------------------------------------------

# Version 1 exactly as released. Never edit it: files in the field were made with it.
V1_DDL = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        src TEXT NOT NULL,
        dst TEXT NOT NULL,
        proto TEXT NOT NULL CHECK (proto IN ('tcp', 'udp')),
        port INTEGER NOT NULL CHECK (port BETWEEN 0 AND 65535),
        kind TEXT NOT NULL,
        action TEXT NOT NULL,
        reason TEXT NOT NULL,
        mode TEXT,
        rule TEXT,
        hits INTEGER NOT NULL DEFAULT 0,
        ports_seen INTEGER NOT NULL DEFAULT 0
    );
CREATE INDEX events_time ON events (time);
CREATE INDEX events_src_time ON events (src, time);
CREATE TABLE bans (
        id INTEGER PRIMARY KEY,
        address TEXT NOT NULL,
        prefix INTEGER NOT NULL CHECK (prefix BETWEEN 0 AND 128),
        created REAL NOT NULL,
        expires REAL CHECK (expires IS NULL OR expires >= created),
        state TEXT NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'active', 'lifted', 'expired', 'failed')),
        reason TEXT NOT NULL,
        rule TEXT,
        evidence TEXT NOT NULL DEFAULT '{}',
        offence INTEGER NOT NULL DEFAULT 1 CHECK (offence >= 1),
        lifted_at REAL,
        lifted_by TEXT,
        offline INTEGER NOT NULL DEFAULT 0 CHECK (offline IN (0, 1))
    );
CREATE UNIQUE INDEX bans_live ON bans (address, prefix) WHERE state IN ('pending', 'active');
CREATE INDEX bans_live_expires ON bans (expires) WHERE state IN ('pending', 'active');
CREATE INDEX bans_address_created ON bans (address, created);
CREATE TABLE ban_actions (
        id INTEGER PRIMARY KEY,
        ban_id INTEGER NOT NULL REFERENCES bans (id) ON DELETE CASCADE,
        backend TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '{}',
        state TEXT NOT NULL CHECK (state IN ('applied', 'failed', 'undone', 'undo_failed')),
        attempts INTEGER NOT NULL DEFAULT 1,
        last_error TEXT,
        updated REAL NOT NULL,
        UNIQUE (ban_id, backend)
    );
CREATE INDEX ban_actions_open ON ban_actions (ban_id) WHERE state IN ('applied', 'undo_failed');
CREATE TABLE allowed (
        address TEXT NOT NULL,
        prefix INTEGER NOT NULL CHECK (prefix BETWEEN 0 AND 128),
        added REAL NOT NULL,
        comment TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (address, prefix)
    ) WITHOUT ROWID;
"""


def _schema_of(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    rows = conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
    return [(name, re.sub(r"\s+", " ", sql or "")) for name, sql in rows]


def test_version_1_step_is_frozen() -> None:
    by_hand, by_step = sqlite3.connect(":memory:"), sqlite3.connect(":memory:")
    by_hand.executescript(V1_DDL)
    schema.MIGRATIONS[0].apply(by_step)
    assert _schema_of(by_step) == _schema_of(by_hand)


def test_a_version_1_file_is_upgraded_with_its_data(state_dir: str) -> None:
    os.makedirs(state_dir)
    raw = sqlite3.connect(os.path.join(state_dir, "portsentinel.db"))
    raw.executescript(V1_DDL)
    raw.executescript(f"""
        INSERT INTO meta VALUES ('created_at', '100.0'), ('offline', '0'),
            ('program_version', '0.0.1');
        INSERT INTO events (time, src, dst, proto, port, kind, action, reason)
            VALUES ({T0}, '2001:db8::5', 'fd00:5e::1', 'tcp', 23, 'SYN', 'block',
                    'scan trigger reached'),
                   ({T0 + 1}, '198.18.0.7', '198.18.0.1', 'udp', 53, 'UDP', 'alert',
                    'below trigger');
        INSERT INTO bans (address, prefix, created, expires, state, reason, evidence)
            VALUES ('2001:db8::5', 128, {T0}, NULL, 'active', 'scan', '{{"ports":[23]}}');
        INSERT INTO ban_actions (ban_id, backend, detail, state, updated)
            VALUES (1, 'nftables', '{{"element":"2001:db8::5"}}', 'applied', {T0});
        PRAGMA user_version = 1;
    """)
    raw.close()

    with Store.open(state_dir) as store:
        assert store.schema_version() == schema.SCHEMA_VERSION
        assert store.meta() == {
            "created_at": "100.0", "offline": "0", "program_version": __version__,
        }  # fmt: skip
        assert [e.port for e in store.events_for("2001:db8::/32")] == [23]  # keys backfilled
        assert [e.port for e in store.events_for("198.18.0.7")] == [53]
        [v1_event, _] = store.events_between(0, 2 * T0)
        assert (v1_event.flags, v1_event.ip_options) == (None, False)
        [restored] = store.active_bans(T0 + 10 * HOUR)
        assert (restored.target, restored.expires, restored.evidence) == (
            "2001:db8::5", None, {"ports": [23]},
        )  # fmt: skip
        assert store.actions(restored.id)[0].detail == {"element": "2001:db8::5"}


# --- Indexed queries -----------------------------------------------------------------------

# Each query with every step of its plan, in order: (table, index it must go through). Issue 5's
# reports are here in the shape they will take, to show the schema answers them by index.
PLANS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "active_bans": (sqlite.SQL_ACTIVE_BANS, [("bans", "bans_live_expires")]),  # live only
    "due_for_expiry": (sqlite.SQL_DUE_FOR_EXPIRY, [("bans", "bans_live_expires")]),
    "bans_to_undo": (
        sqlite.SQL_BANS_TO_UNDO, [("bans", "PRIMARY KEY"), ("ban_actions", "ban_actions_open")],
    ),
    "offences": (sqlite.SQL_OFFENCES, [("bans", "bans_address_created")]),
    "bans_between": (
        sqlite.SQL_BANS_BETWEEN,
        [("bans", "PRIMARY KEY"), ("bans", "bans_created"), ("bans", "bans_lifted"),
         ("bans", "bans_live_expires")],
    ),
    "ban_for": (sqlite.SQL_BAN_FOR.format(marks="?, ?"), [("bans", "bans_live")]),
    "ban_for, lengths": (sqlite.SQL_LIVE_PREFIXES, [("bans", "bans_live_expires")]),
    "actions": (sqlite.SQL_ACTIONS, [("ban_actions", "sqlite_autoindex_ban_actions_1")]),
    "events_between": (sqlite.SQL_EVENTS_BETWEEN, [("events", "events_time")]),
    "events_for": (sqlite.SQL_EVENTS_FROM, [("events", "events_src_key_time")]),
    "purge_events": (
        sqlite.SQL_PURGE_EVENTS, [("events", "PRIMARY KEY"), ("events", "events_time")],
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


OPENER = """
import sys
from portsentinel.store.sqlite import Store
Store.open(sys.argv[1]).close()
"""


def test_processes_creating_the_store_at_once_all_succeed(state_dir: str) -> None:
    children = [
        subprocess.Popen([sys.executable, "-c", OPENER, state_dir], stderr=subprocess.PIPE)
        for _ in range(8)
    ]
    errors = [child.communicate(timeout=60)[1].decode() for child in children]
    assert [child.returncode for child in children] == [0] * 8, errors
    with Store.open(state_dir) as store:
        assert store.schema_version() == schema.SCHEMA_VERSION


def test_opening_waits_for_a_writer_of_a_file_not_yet_in_wal(state_dir: str) -> None:
    # Another process holds a write lock on the new file before anyone switched it to WAL:
    # SQLite answers the switch with "locked" at once (no busy handler), so the opener must
    # wait itself (seen in CI: eight processes creating the store at once, one failed).
    os.makedirs(state_dir)
    path = os.path.join(state_dir, "portsentinel.db")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    released = threading.Event()

    def release() -> None:
        time.sleep(0.3)
        released.set()  # before the commit: the opener cannot get past it earlier
        other.execute("COMMIT")

    threading.Thread(target=release, daemon=True).start()
    with Store.open(state_dir, busy_timeout=30.0) as store:
        assert released.is_set()
        assert store.schema_version() == schema.SCHEMA_VERSION
    other.close()


def test_a_migration_done_meanwhile_by_the_other_side_is_skipped(state_dir: str) -> None:
    Store.open(state_dir).close()  # the other side created and upgraded the file...
    late = sqlite3.connect(os.path.join(state_dir, "portsentinel.db"), isolation_level=None)
    assert not schema.migrate(late, "late", 0)  # ...after we read version 0: nothing to do
    assert late.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    late.close()


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
