"""A row that is no record: every reader skips it, ``damaged`` names it once, and a live ban's
damaged row can be ended even when its damage breaks a CHECK constraint."""

from __future__ import annotations

import math
import os
import sqlite3
from pathlib import Path

import pytest

from portsentinel.store.records import DamagedRowError, LiftedBy
from portsentinel.store.sqlite import Store

T0 = 1_700_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(str(tmp_path / "state"))


def ban(store: Store, address: str) -> int:
    record = store.begin_ban(address, None, created=T0, expires=T0 + 3600, reason="scan",
                             rule=None, evidence={"plan": ["nftables"]}, offence=1)  # fmt: skip
    store.record_action(record.id, "nftables", {"element": address}, "applied", at=T0)
    store.activate(record.id)
    return record.id


def damage(store: Store, sql: str, *params: object) -> None:
    """What a hand edit does, through a connection of its own that ignores CHECKs."""
    raw = sqlite3.connect(os.path.join(os.path.dirname(store.path), "portsentinel.db"))
    raw.execute("PRAGMA ignore_check_constraints = ON")
    raw.execute(sql, params)
    raw.commit()
    raw.close()


def test_every_reader_skips_a_damaged_ban_and_it_is_named_once(store: Store) -> None:
    good, bad = ban(store, "198.18.0.2"), ban(store, "198.18.0.3")
    damage(store, "UPDATE bans SET evidence = '{broken' WHERE id = ?", bad)
    assert [b.id for b in store.active_bans(T0)] == [good]
    assert [b.id for b in store.due_for_expiry(T0 + 7200)] == [good]
    assert [b.id for b in store.bans_between(0, math.inf)] == [good]
    assert store.ban(bad) is None
    assert store.ban_for("198.18.0.3") is None
    [damaged] = store.damaged()
    assert (damaged.table, damaged.row_id, damaged.live) == ("bans", bad, True)
    assert str(damaged).startswith(f"bans row {bad} (198.18.0.3): evidence is not JSON")
    store.active_bans(T0)
    assert store.damaged() == []  # read again every second, said once


def test_a_damaged_action_is_skipped_and_the_others_kept(store: Store) -> None:
    ban_id = ban(store, "198.18.0.2")
    store.record_action(ban_id, "run_cmd", {"target": "198.18.0.2"}, "applied", at=T0)
    damage(store, "UPDATE ban_actions SET state = 'maybe' WHERE backend = 'run_cmd'")
    assert [a.backend for a in store.actions(ban_id)] == ["nftables"]
    [damaged] = store.damaged()
    assert damaged.table == "ban_actions"
    assert f"(ban {ban_id}, run_cmd): state 'maybe'" in str(damaged)


def test_a_live_damaged_ban_is_set_aside_even_when_its_damage_breaks_a_check(
    store: Store,
) -> None:
    bad = ban(store, "198.18.0.3")
    damage(store, "UPDATE bans SET offence = 0 WHERE id = ?", bad)  # CHECK (offence >= 1)
    assert store.active_bans(T0) == []
    assert store.set_aside(bad, T0 + 1)
    assert not store.set_aside(bad, T0 + 2)  # no longer live
    row = store._conn.execute(
        "SELECT state, lifted_at, lifted_by FROM bans WHERE id = ?", (bad,)
    ).fetchone()
    assert row == ("lifted", T0 + 1, LiftedBy.DAMAGED.value)
    # The network is free again: a new ban of it can be recorded.
    assert store.ban_for("198.18.0.3") is None
    ban(store, "198.18.0.3")
    with pytest.raises(sqlite3.IntegrityError):  # the checks are on again afterwards
        store._conn.execute("UPDATE bans SET offence = 0")


def test_a_damaged_row_found_by_another_reader_is_noted(store: Store) -> None:
    found = DamagedRowError("bans", 9, "evidence is not JSON", live=True)
    store.note(found)
    store.note(DamagedRowError("bans", 9, "the same row, read again"))
    assert store.damaged() == [found]
