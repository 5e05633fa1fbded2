"""A ban cut as a decoy's (``store/changes.py``) on a real SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest

from portsentinel.store.changes import CUT_AS_DECOY
from portsentinel.store.records import EventRow, LiftedBy
from portsentinel.store.sqlite import Store

T0 = 1_800_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(str(tmp_path))


def begin(store: Store, address: str, expires: float | None) -> int:
    record = store.begin_ban(address, None, created=T0, expires=expires, reason="SYN scan",
                             rule="scan_trigger", evidence={"port": 1}, offence=1)  # fmt: skip
    store.activate(record.id)
    return record.id


def test_a_cut_moves_the_end_and_is_recorded(store: Store) -> None:
    ban_id = begin(store, "198.18.1.1", T0 + 3600)
    detail = {"group": ["198.18.1.1", "198.18.0.2"], "evidence": {"one_ttl": True}}
    cut = store.cut_ban(ban_id, T0 + 301, at=T0 + 1, detail=detail)
    assert cut is not None
    assert cut.expires == T0 + 301
    assert [b.id for b in store.due_for_expiry(T0 + 302)] == [ban_id]
    [change] = store.ban_changes(ban_id)
    assert (change.change, change.expires_before, change.expires_after) == (
        CUT_AS_DECOY, T0 + 3600, T0 + 301)  # fmt: skip
    assert change.detail["group"] == ["198.18.1.1", "198.18.0.2"]
    assert store.changes_since(T0) == [change]
    assert store.changes_since(T0 + 2) == []


def test_a_permanent_ban_is_cut_too(store: Store) -> None:
    ban_id = begin(store, "198.18.1.2", None)
    cut = store.cut_ban(ban_id, T0 + 300, at=T0, detail={})
    assert cut is not None
    assert cut.expires == T0 + 300
    assert store.ban_changes(ban_id)[0].expires_before is None


def test_no_cut_for_a_ban_that_ends_sooner_or_ended(store: Store) -> None:
    short = begin(store, "198.18.1.3", T0 + 100)
    assert store.cut_ban(short, T0 + 300, at=T0, detail={}) is None
    ended = begin(store, "198.18.1.4", T0 + 3600)
    assert store.lift(ended, T0 + 5, LiftedBy.UNBLOCK)
    assert store.cut_ban(ended, T0 + 300, at=T0 + 6, detail={}) is None
    assert store.changes_since(0) == []


def test_events_keep_their_decoy_group(store: Store) -> None:
    row = EventRow(T0, "198.18.1.1", "198.18.0.1", "tcp", 7, "SYN", "block", "r",
                   group="198.18.1.1 198.18.0.2")  # fmt: skip
    store.add_events([row, EventRow(T0 + 1, "198.18.1.1", "198.18.0.1", "tcp", 8, "SYN",
                                    "ignored", "r")])  # fmt: skip
    groups = [e.group for e in store.events_for("198.18.1.1")]
    assert groups == ["198.18.1.1 198.18.0.2", None]
    assert [e.group for e in store.events_between(T0, T0 + 2)] == groups
