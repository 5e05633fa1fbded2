"""The store's schema: addresses and their sort keys, migrations (version 1 frozen as
released), transactions and the meta rows."""

from __future__ import annotations

import ipaddress
import os
import re
import sqlite3
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from portsentinel import __version__
from portsentinel.errors import StoreError
from portsentinel.store import schema
from portsentinel.store.sqlite import Store

HOUR = 3600.0
T0 = 1_700_000_000.0


@pytest.fixture
def state_dir(tmp_path: Path) -> str:
    return str(tmp_path / "state")


@pytest.mark.parametrize(
    ("text", "prefix", "network"),
    [
        ("198.18.0.7", None, "198.18.0.7/32"),
        (" 198.18.0.7 ", 24, "198.18.0.0/24"),
        ("2001:db8::5", 64, "2001:db8::/64"),
        ("2001:db8::5/64", None, "2001:db8::/64"),
        ("::ffff:198.18.0.7", None, "198.18.0.7/32"),  # IPv4-mapped: the IPv4 host
        ("::ffff:198.18.0.7", 96, "::ffff:0.0.0.0/96"),  # a prefix keeps it IPv6
    ],
)
def test_parse_network(text: str, prefix: int | None, network: str) -> None:
    assert schema.parse_network(text, prefix) == ipaddress.ip_network(network)


@pytest.mark.parametrize(
    ("text", "prefix"),
    [("198.18.0.0/24", 24), ("198.18.0.7", 33), ("::1", 129), ("198.18.0.7", True), ("x", None)],
)
def test_parse_network_refusals(text: str, prefix: int | None) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - ipaddress's own messages vary
        schema.parse_network(text, prefix)


def test_address_keys_sort_ipv4_inside_the_mapped_range() -> None:
    v4 = schema.address_key(ipaddress.ip_address("198.18.0.7"))
    assert v4 == ipaddress.ip_address("::ffff:198.18.0.7").packed
    assert len(schema.address_key(ipaddress.ip_address("2001:db8::1"))) == 16
    low, high = schema.key_range(ipaddress.ip_network("198.18.0.0/24"))
    assert low <= v4 <= high
    assert (low[-1], high[-1]) == (0, 255)


def test_host_text_key_normalises_and_refuses_networks() -> None:
    assert schema.host_text_key("FD00::0001") == ("fd00::1", ipaddress.ip_address("fd00::1").packed)
    with pytest.raises(ValueError):  # noqa: PT011
        schema.host_text_key("198.18.0.0/24")


@given(st.ip_addresses(), st.data())
@example(ipaddress.ip_address("::ffff:198.18.0.2"), None)  # an IPv4 tail in the C library's text
@example(ipaddress.ip_address("::1:2:3"), None)
def test_covering_network_is_the_supernet_ipaddress_writes(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, data: st.DataObject | None
) -> None:
    host, _ = schema.host_text_key(str(address))  # a mapped address: its IPv4 one
    normal = ipaddress.ip_address(host)
    width = normal.max_prefixlen
    edges = [0, 8, 24, 31] if width == 32 else [0, 8, 24, 31, 64, 96, 127]
    prefixes = [data.draw(st.integers(0, width - 1))] if data else edges
    for prefix in prefixes:
        expected = ipaddress.ip_network((normal, width)).supernet(new_prefix=prefix)
        assert schema.covering_network(host, prefix) == str(expected.network_address)


def test_host_text_key_takes_both_families_written_as_ipaddress_writes_them() -> None:
    for text in ("198.18.0.2", "fd00:b::2", "::ffff:198.18.0.2", "::1:2:3"):
        address = ipaddress.ip_address(text)
        mapped = getattr(address, "ipv4_mapped", None)
        expected = mapped if mapped is not None else address
        assert schema.host_text_key(text) == (str(expected), schema.address_key(expected))


def test_a_transaction_rolls_back_on_error_and_commits_otherwise() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (x)")

    def failing_write() -> None:
        with schema.transaction(conn):
            conn.execute("INSERT INTO t VALUES (1)")
            raise RuntimeError

    with pytest.raises(RuntimeError):
        failing_write()
    with schema.transaction(conn, write=False):
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    with schema.transaction(conn):
        conn.execute("INSERT INTO t VALUES (2)")
    assert not conn.in_transaction
    assert conn.execute("SELECT x FROM t").fetchall() == [(2,)]


def test_migrate_brings_an_empty_file_to_the_current_version_with_its_meta() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    assert schema.migrate(conn, "mem", 0)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    assert len(schema.MIGRATIONS) == schema.SCHEMA_VERSION
    assert [m.version for m in schema.MIGRATIONS] == list(range(1, schema.SCHEMA_VERSION + 1))
    meta = schema.ensure_meta(conn, offline=True, migrated=True)
    assert (meta["offline"], meta["program_version"]) == ("1", __version__)
    assert schema.ensure_meta(conn, offline=False, migrated=False) == meta  # kept as made
    with pytest.raises(StoreError, match="newer"):
        schema.migrate(conn, "mem", schema.SCHEMA_VERSION + 1)


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


def test_a_migration_done_meanwhile_by_the_other_side_is_skipped(state_dir: str) -> None:
    Store.open(state_dir).close()  # the other side created and upgraded the file...
    late = sqlite3.connect(os.path.join(state_dir, "portsentinel.db"), isolation_level=None)
    assert not schema.migrate(late, "late", 0)  # ...after we read version 0: nothing to do
    assert late.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    late.close()


def test_a_version_2_file_gets_uncertain_actions_with_its_rows_kept(state_dir: str) -> None:
    os.makedirs(state_dir)
    raw = sqlite3.connect(os.path.join(state_dir, "portsentinel.db"), isolation_level=None)
    for step in schema.MIGRATIONS[:2]:
        step.apply(raw)
    raw.executescript(f"""
        PRAGMA user_version = 2;
        INSERT INTO meta VALUES ('created_at', '100.0'), ('offline', '0');
        INSERT INTO bans (id, address, prefix, created, expires, state, reason, evidence)
            VALUES (3, '198.18.0.7', 32, {T0}, NULL, 'active', 'scan', '{{}}');
        INSERT INTO ban_actions (id, ban_id, backend, detail, state, updated)
            VALUES (5, 3, 'nftables', '{{"element":"198.18.0.7"}}', 'applied', {T0}),
                   (6, 3, 'run_cmd', '{{}}', 'failed', {T0}),
                   (7, 99, 'nftables', '{{}}', 'applied', {T0});  -- its ban deleted by hand
        PRAGMA ignore_check_constraints = ON;
        INSERT INTO ban_actions (id, ban_id, backend, detail, state, updated)
            VALUES (8, 3, 'hosts_deny', '{{}}', 'half-done', {T0});
    """)
    raw.close()

    with Store.open(state_dir) as store:
        assert store.schema_version() == schema.SCHEMA_VERSION == 8
        ids = [row[0] for row in store._conn.execute("SELECT id FROM ban_actions ORDER BY id")]
        assert ids == [5, 6, 8]  # ids kept; the orphan, which nothing could read, left behind
        assert [(a.backend, a.state.value) for a in store.actions(3)] == [
            ("nftables", "applied"), ("run_cmd", "failed"),
        ]  # fmt: skip
        [damaged] = store.damaged()  # carried as it was, named when read
        assert str(damaged).startswith("ban_actions row 8 (ban 3, hosts_deny): state 'half-done'")
        store.record_action(3, "run_cmd", None, "uncertain", "may have run", at=T0 + 1)
        assert store.uncertain() == [("198.18.0.7", "run_cmd")]
        indexes = {name for (name,) in store._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'ban_actions'"
        )}  # fmt: skip
        assert {"ban_actions_open", "ban_actions_uncertain"} <= indexes
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
            store._conn.execute("UPDATE ban_actions SET state = 'half-done' WHERE id = 5")
