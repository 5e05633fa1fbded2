from __future__ import annotations

from pathlib import Path

from portsentinel.store.fleet import FleetDecision, OutboxItem
from portsentinel.store.sqlite import Store

T0 = 1_700_000_000.0


def _item(ref: str, kind: str = "ban", t: float = T0) -> OutboxItem:
    return OutboxItem(ref, kind, "198.18.0.2", 1, {}, t, t)


def test_the_outbox_queues_once_and_survives_reopening(tmp_path: Path) -> None:
    with Store.open(str(tmp_path)) as store:
        assert store.outbox_put([_item("ban:1"), _item("ban:1")], 10) == []
    with Store.open(str(tmp_path)) as store:
        (item,) = store.outbox_due(T0, 10)
        store.outbox_retry([item.id], T0 + 5, "HTTP 500")
        assert store.outbox_due(T0 + 1, 10) == []
        (again,) = store.outbox_due(T0 + 5, 10)
        assert (again.attempts, again.last_error) == (1, "HTTP 500")
        store.outbox_retry([again.id], T0 + 300, "refused")
        assert store.outbox_wake(T0 + 6) == 1
        assert [i.id for i in store.outbox_due(T0 + 6, 10)] == [again.id]
        assert store.outbox_wake(T0 + 6) == 0
        store.outbox_done([again.id])
        assert store.outbox_depth() == {}


def test_the_outbox_is_bounded_reports_first_deletions_always(tmp_path: Path) -> None:
    with Store.open(str(tmp_path)) as store:
        store.outbox_put([_item("report:a", "report"), _item("ban:1", t=T0 + 1)], 2)
        dropped = store.outbox_put([_item("ban:2", t=T0 + 2)], 2)
        assert [d.ref for d in dropped] == ["report:a"]
        refused = store.outbox_put([_item("report:b", "report")], 2)
        assert [d.ref for d in refused] == ["report:b"]
        dropped = store.outbox_put([_item("unban:1", "unban")], 2)
        assert [d.ref for d in dropped] == ["ban:1"]
        assert store.outbox_depth() == {"ban": 1, "unban": 1}


def test_decisions_merge_delete_resync_and_dismiss(tmp_path: Path) -> None:
    d1 = FleetDecision(1, "198.18.0.2", "portsentinel", "portsentinel/syn", T0 + 60)
    d2 = FleetDecision(2, "198.18.0.3", "cscli", "manual", T0 + 60)
    with Store.open(str(tmp_path)) as store:
        store.fleet_decisions_merge([d1, d2], [], now=T0)
        assert store.fleet_dismiss("198.18.0.2") == 1
        store.fleet_decisions_merge([d1], [], now=T0 + 1)  # dismissed stays dismissed
        assert [d.state for d in store.fleet_decisions(address="198.18.0.2")] == ["dismissed"]
        store.fleet_decisions_merge([], [2], now=T0 + 1)
        assert [d.id for d in store.fleet_decisions()] == [1]
        store.fleet_decisions_merge([d2], [], now=T0 + 2, complete=True)
        assert [d.id for d in store.fleet_decisions()] == [2]
        store.fleet_decisions_merge([], [], now=T0 + 61)  # expired
        assert store.fleet_decisions() == []
        store.fleet_link_set({"connected": True})
        assert store.fleet_link() == {"connected": True}
