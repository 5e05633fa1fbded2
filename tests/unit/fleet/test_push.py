from __future__ import annotations

from pathlib import Path

from portsentinel.fleet.lapi import Lapi
from portsentinel.fleet.push import Pusher, backoff
from portsentinel.store.records import LiftedBy
from portsentinel.store.sqlite import Store

from .fleet_fakes import T0, ban, open_store


def _pusher(store: Store, delay: float = 300) -> Pusher:
    lapi = Lapi("http://127.0.0.1:9")  # never asked by scan
    return Pusher(store, lapi, host="a", delay=delay, cap=86400, batch=100, outbox_max=100,
                  log=lambda _line: None)  # fmt: skip


def test_strong_bans_go_at_once_weak_ones_after_the_window(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        weak = ban(store, "198.18.0.2")
        strong = ban(store, "198.18.0.3", kinds=("CONNECT",))
        pusher = _pusher(store)
        pusher.scan(T0 + 1)
        assert [i.ref for i in store.outbox_due(T0 + 1, 10)] == [f"ban:{strong.id}"]
        pusher.scan(T0 + 301)
        pusher.scan(T0 + 302)  # queued once
        refs = sorted(i.ref for i in store.outbox_due(T0 + 302, 10))
        assert refs == sorted([f"ban:{strong.id}", f"ban:{weak.id}"])


def test_lifted_before_the_window_is_withheld(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        weak = ban(store, "198.18.0.2")
        pusher = _pusher(store)
        pusher.scan(T0 + 1)
        store.lift(weak.id, T0 + 2, LiftedBy.UNBLOCK)
        pusher.scan(T0 + 400)
        assert store.outbox_due(T0 + 400, 10) == []
        assert store.fleet_ban_states([weak.id])[weak.id][0] == "withheld"


def test_a_pushed_ban_lifted_by_unblock_is_withdrawn_an_expired_one_not(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        one = ban(store, "198.18.0.2", kinds=("CONNECT",))
        two = ban(store, "198.18.0.3", kinds=("CONNECT",))
        pusher = _pusher(store)
        pusher.scan(T0 + 1)
        store.fleet_note_bans([(one.id, one.address, None, "pushed"),
                               (two.id, two.address, None, "pushed")], T0 + 2)  # fmt: skip
        store.outbox_done(i.id for i in store.outbox_due(T0 + 2, 10))
        store.lift(one.id, T0 + 3, LiftedBy.UNBLOCK)
        store.lift(two.id, T0 + 3, LiftedBy.EXPIRY)
        pusher.scan(T0 + 4)
        assert [(i.kind, i.address) for i in store.outbox_due(T0 + 4, 10)] == [
            ("unban", "198.18.0.2")
        ]
        states = store.fleet_ban_states([one.id, two.id])
        assert (states[one.id][0], states[two.id][0]) == ("withdrawn", "ended")


def test_a_pushed_ban_cut_short_as_a_decoy_is_withdrawn(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        cut = ban(store, "198.18.0.2", kinds=("CONNECT",), expires=T0 + 3600)
        kept = ban(store, "198.18.0.3", kinds=("CONNECT",), expires=T0 + 3600)
        lines: list[str] = []
        pusher = _pusher(store)
        pusher.log = lines.append
        pusher.scan(T0 + 1)
        store.fleet_note_bans([(cut.id, cut.address, None, "pushed"),
                               (kept.id, kept.address, None, "pushed")], T0 + 2)  # fmt: skip
        store.outbox_done(i.id for i in store.outbox_due(T0 + 2, 10))
        assert store.cut_ban(cut.id, T0 + 300, at=T0 + 3, detail={"group": 1}) is not None
        pusher.scan(T0 + 4)
        assert [(i.kind, i.address) for i in store.outbox_due(T0 + 4, 10)] == [
            ("unban", "198.18.0.2")]  # fmt: skip
        states = store.fleet_ban_states([cut.id, kept.id])
        assert (states[cut.id][0], states[kept.id][0]) == ("withdrawn", "pushed")
        assert any("cut short" in line for line in lines)
        pusher.scan(T0 + 5)  # once
        assert len(store.outbox_due(T0 + 5, 10)) == 1


def test_backoff_doubles_to_five_minutes() -> None:
    assert 0.8 <= backoff(0) <= 1.0
    assert 6.4 <= backoff(3) <= 8.0
    assert backoff(30) <= 300
