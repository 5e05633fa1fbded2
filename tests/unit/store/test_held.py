"""The action a ban's row holds (schema 7), on a real SQLite file: read back as the action it
stands for, moved to ``ban_actions`` on its next outcome with its place and detail kept, found
by start-up when its ban ended, and a version 6 store upgraded in place with its bans."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from portsentinel.store import schema
from portsentinel.store.held import held_detail
from portsentinel.store.records import ActionState, BanState, LiftedBy
from portsentinel.store.sqlite import NewBan, Store

T0 = 1_700_000_000.0
SHARED = '{"backend":"nftables","set":"ban4","table":"inet portsentinel","timeout":3600}'
FULL = {
    "backend": "nftables", "table": "inet portsentinel", "set": "ban4", "timeout": 3600,
    "address": "198.18.0.2", "prefix": 32, "key": "198.18.0.2", "port": 23, "proto": "tcp",
    "mode": "atcp",
}  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with Store.open(str(tmp_path / "state")) as opened:
        yield opened


def held(address: str = "198.18.0.2", *, active: bool = True, shared: str = SHARED) -> NewBan:
    evidence = {"plan": ["nftables"], "port": 23, "proto": "tcp", "mode": "atcp", "hits": 1}
    return NewBan(address, None, T0, T0 + 3600, "SYN scan", "atcp", evidence, 1, active,
                  "nftables", shared)  # fmt: skip


def test_a_held_action_reads_back_as_the_action_with_its_full_detail(store: Store) -> None:
    [record] = store.begin_bans([held()])
    assert record.state is BanState.ACTIVE
    assert store._conn.execute("SELECT count(*) FROM ban_actions").fetchone() == (0,)  # one row
    [action] = store.actions(record.id)
    got = (action.ban_id, action.backend, action.state, action.attempts, action.last_error)
    assert got == (record.id, "nftables", ActionState.APPLIED, 1, None)
    assert action.updated == T0
    assert action.detail == FULL
    assert store.applied_by("nftables") == {record.id}
    assert store.applied_by("iptables") == set()


def test_a_prefix_and_an_ipv6_ban_get_their_own_fields(store: Store) -> None:
    shared6 = SHARED.replace("ban4", "ban6")
    [v6] = store.begin_bans([held("fd00:5e::7", shared=shared6)])
    detail = store.actions(v6.id)[0].detail
    assert (detail["address"], detail["prefix"], detail["key"], detail["set"]) == (
        "fd00:5e::7", 128, "fd00:5e::7", "ban6",
    )  # fmt: skip
    assert held_detail((shared6, "fd00:5e::", 64, "{}"))["key"] == "fd00:5e::/64"


def test_its_next_outcome_moves_it_first_in_place_with_its_detail(store: Store) -> None:
    with store.batch():
        [record] = store.begin_bans([held(active=False)])
        store.record_actions([(record.id, "hosts_deny", {"line": "ALL: 198.18.0.2"},
                               ActionState.APPLIED, None)], at=T0, first=True)  # fmt: skip
    assert [a.backend for a in store.actions(record.id)] == ["nftables", "hosts_deny"]
    assert store.activate(record.id)
    assert store.lift(record.id, T0 + 5, LiftedBy.UNBLOCK)
    assert [b.id for b in store.bans_to_undo()] == [record.id]  # both still applied
    store.record_action(record.id, "hosts_deny", None, ActionState.UNDONE, at=T0 + 6)
    store.record_action(record.id, "nftables", None, ActionState.UNDO_FAILED, "busy", at=T0 + 6)
    actions = store.actions(record.id)
    assert [(a.backend, a.state, a.last_error) for a in actions] == [
        ("nftables", ActionState.UNDO_FAILED, "busy"), ("hosts_deny", ActionState.UNDONE, None),
    ]  # fmt: skip  # still first: undone last, as it was applied first
    assert actions[0].detail == FULL  # kept when it moved
    assert [b.id for b in store.bans_to_undo()] == [record.id]  # the moved row is still open
    store.record_action(record.id, "nftables", None, ActionState.UNDO_FAILED, "busy", at=T0 + 7)
    assert store.actions(record.id)[0].attempts == 2
    store.record_action(record.id, "nftables", None, ActionState.UNDONE, at=T0 + 8)
    assert store.bans_to_undo() == []
    assert store.actions(record.id)[0].detail == FULL


def test_an_ended_ban_whose_row_holds_its_action_is_found_at_start(store: Store) -> None:
    kept, ended = store.begin_bans([held("198.18.0.2"), held("198.18.0.3")])
    assert store.bans_to_undo() == []  # live: not for undoing
    assert store.lift(ended.id, T0 + 1, LiftedBy.EXPIRY)
    assert [b.id for b in store.bans_to_undo()] == [ended.id]
    assert store.applied_by("nftables") == {kept.id}  # live bans only


def test_applied_again_at_a_restart_is_a_second_attempt(store: Store) -> None:
    [record] = store.begin_bans([held()])
    detail = {**FULL, "timeout": 3000}
    store.record_action(record.id, "nftables", detail, ActionState.APPLIED, at=T0 + 600)
    [action] = store.actions(record.id)
    assert (action.state, action.attempts, action.updated, action.detail) == (
        ActionState.APPLIED, 2, T0 + 600, detail,
    )  # fmt: skip
    row = store._conn.execute("SELECT held, held_detail FROM bans WHERE id = ?", (record.id,))
    assert row.fetchone() == ("nftables", None)


def test_a_damaged_held_detail_is_named_and_the_other_actions_kept(store: Store) -> None:
    with store.batch():
        [record] = store.begin_bans([held(shared="{not json")])
        store.record_actions([(record.id, "run_cmd", {}, ActionState.APPLIED, None)], at=T0,
                             first=True)  # fmt: skip
    assert [a.backend for a in store.actions(record.id)] == ["run_cmd"]
    [damaged] = store.damaged()
    assert str(damaged).startswith(f"bans row {record.id} (198.18.0.2): its held action")
    store.record_action(record.id, "nftables", None, ActionState.UNDONE, at=T0 + 1)  # kept
    assert [(a.backend, a.state, dict(a.detail)) for a in store.actions(record.id)] == [
        ("nftables", ActionState.UNDONE, {}), ("run_cmd", ActionState.APPLIED, {}),
    ]  # fmt: skip


def test_a_version_6_store_with_bans_is_upgraded_in_place(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    os.makedirs(state)
    raw = sqlite3.connect(os.path.join(state, "portsentinel.db"), isolation_level=None)
    for step in schema.MIGRATIONS[:6]:
        step.apply(raw)
    old = json.dumps({**FULL, "element": "198.18.0.9", "address": "198.18.0.9",
                      "key": "198.18.0.9"})  # fmt: skip
    raw.executescript(f"""
        PRAGMA user_version = 6;
        INSERT INTO meta VALUES ('created_at', '100.0'), ('offline', '0');
        INSERT INTO bans (id, address, prefix, created, expires, state, reason, evidence)
            VALUES (1, '198.18.0.9', 32, {T0}, {T0 + 3600}, 'active', 'scan', '{{}}'),
                   (2, '198.18.0.8', 32, {T0}, {T0 + 60}, 'expired', 'scan', '{{}}');
        INSERT INTO ban_actions (ban_id, backend, detail, state, updated)
            VALUES (1, 'nftables', '{old}', 'applied', {T0}),
                   (2, 'nftables', '{{}}', 'applied', {T0});
    """)
    raw.close()
    with Store.open(state) as store:
        assert store.schema_version() == schema.SCHEMA_VERSION == 8
        [live] = store.active_bans(T0 + 1)
        assert store.actions(live.id)[0].detail == json.loads(old)
        assert [b.id for b in store.bans_to_undo()] == [2]  # the v6 rows still answer
        assert store.applied_by("nftables") == {1}
        [new] = store.begin_bans([held()])  # and new bans hold their action
        assert store.actions(new.id)[0].detail == FULL
        assert store.applied_by("nftables") == {1, new.id}


def test_held_actions_of_a_large_batch_go_by_text_and_keep_one_already_held(store: Any) -> None:
    other = SHARED.replace("ban4", "ban6")
    fresh = held()._replace(held=None, held_detail=None)  # nothing held yet
    made = store.begin_bans([fresh._replace(address=f"198.18.{n // 256}.{n % 256}")
                             for n in range(600)])  # fmt: skip
    store.hold_actions([("nftables", SHARED if n % 2 else other, r.id)
                        for n, r in enumerate(made)])  # fmt: skip
    store.hold_actions([("nftables", other, made[1].id)])  # held already: kept as it was
    rows = dict(store._conn.execute("SELECT id, held_detail FROM bans"))
    assert all(rows[r.id] == (SHARED if n % 2 else other) for n, r in enumerate(made))
    assert store.actions(made[1].id)[0].detail["set"] == "ban4"
