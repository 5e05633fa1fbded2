"""Many bans at once on a real SQLite file: each batch question answers as the one-ban
question would (covering prefixes too), and the batch steps leave the same records."""

from __future__ import annotations

from pathlib import Path

import pytest

from portsentinel.store.records import ActionState, BanState
from portsentinel.store.sqlite import DuplicateBanError, NewBan, Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(str(tmp_path / "state"))


def new(address: str, prefix: int | None = None, created: float = 0.0) -> NewBan:
    return NewBan(address, prefix, created, created + 60.0, "SYN scan", None, {"port": 1}, 1)


def test_the_batch_question_matches_the_single_one_with_prefixes_live(store: Store) -> None:
    store.begin_ban("198.18.0.2", None, created=0.0, expires=None, reason="r", rule=None,
                    evidence={}, offence=1)  # fmt: skip
    store.begin_ban("fd00:5e::", 64, created=0.0, expires=None, reason="r", rule=None,
                    evidence={}, offence=1)  # fmt: skip
    store.begin_ban("fd00:5e::7", None, created=0.0, expires=None, reason="r", rule=None,
                    evidence={}, offence=1)  # fmt: skip
    hosts = ["198.18.0.2", "198.18.0.3", "fd00:5e::7", "fd00:5e::8", "::ffff:198.18.0.2",
             "fd00:5f::1"]  # fmt: skip
    found = store.live_bans_for(hosts)
    for host in hosts:
        single = store.ban_for(host)
        assert (found.get(host), host) == (single, host)
    assert found["fd00:5e::7"].prefix == 128  # the most specific
    assert found["fd00:5e::8"].prefix == 64
    with pytest.raises(ValueError):  # noqa: PT011 - the address parser's own message
        store.live_bans_for(["198.18.0.0/24"])


def test_begin_bans_writes_pending_records_like_begin_ban(store: Store) -> None:
    records = store.begin_bans([new("198.18.0.2"), new("fd00:5e::1:0", 96), new("::ffff:1.2.3.4")])
    assert [(r.address, r.prefix, r.state) for r in records] == [
        ("198.18.0.2", 32, BanState.PENDING),
        ("fd00:5e::", 96, BanState.PENDING),
        ("1.2.3.4", 32, BanState.PENDING),
    ]
    for record in records:
        assert store.ban(record.id) == record
    with pytest.raises(DuplicateBanError):
        store.begin_bans([new("198.18.0.9"), new("198.18.0.2")])
    assert store.ban_for("198.18.0.9") is None  # all or nothing
    assert store.begin_bans([]) == []


def test_actions_activation_and_failure_for_many(store: Store) -> None:
    with store.batch():
        records = store.begin_bans([new(f"198.18.0.{n}") for n in range(2, 6)])
        ids = [r.id for r in records]
        store.record_actions(
            [(ids[0], "nftables", {"element": "198.18.0.2"}, ActionState.APPLIED, None),
             (ids[1], "nftables", None, ActionState.FAILED, "refused")],
            at=5.0, first=True,
        )  # fmt: skip
    store.record_actions([(ids[1], "nftables", None, ActionState.FAILED, "again")], at=6.0)
    (failed,) = store.actions(ids[1])
    assert (failed.state, failed.attempts, failed.last_error) == (ActionState.FAILED, 2, "again")
    assert store.actions(ids[0])[0].detail == {"element": "198.18.0.2"}
    store.lift(ids[3], 7.0, "unblock")
    assert store.activate_many([ids[0], ids[3]]) == {ids[0]}  # the lifted one stays lifted
    store.fail_many([ids[1], ids[0]], 8.0)  # only a pending one fails
    states = {r.id: r.state for r in (store.ban(i) for i in ids) if r is not None}
    assert states == {ids[0]: BanState.ACTIVE, ids[1]: BanState.FAILED,
                      ids[2]: BanState.PENDING, ids[3]: BanState.LIFTED}  # fmt: skip


def test_offences_for_many_hosts_count_like_the_single_question(store: Store) -> None:
    for created in (0.0, 100.0, 200.0):
        record = store.begin_ban("198.18.0.2", None, created=created, expires=None, reason="r",
                                 rule=None, evidence={}, offence=1)  # fmt: skip
        store.lift(record.id, created + 1, "expiry")
    counts = store.offences_many(["198.18.0.2", "198.18.0.3"], 50.0)
    assert counts == {"198.18.0.2": store.offences("198.18.0.2", 50.0), "198.18.0.3": 0}
    assert counts["198.18.0.2"] == 2


def test_a_batch_is_one_transaction_all_or_nothing(store: Store) -> None:
    def crash() -> None:
        with store.batch():
            store.begin_bans([new("198.18.0.2")])
            with store.batch():  # nested: joins the outer one
                store.begin_bans([new("198.18.0.3")])
            raise RuntimeError("crash before the commit")

    with pytest.raises(RuntimeError):
        crash()
    assert store.live_bans_for(["198.18.0.2", "198.18.0.3"]) == {}


def test_begin_bans_writes_a_ban_whose_actions_are_done_active_with_fresh_ids(
    store: Store,
) -> None:
    first = store.begin_bans([new("198.18.0.2")])
    done = NewBan("198.18.0.3", None, 0.0, None, "SYN scan", None, {"plan": ["nftables"]}, 1,
                  active=True)  # fmt: skip
    records = store.begin_bans([done, new("fd00:5e::3")])
    assert [(r.address, r.state) for r in records] == [
        ("198.18.0.3", BanState.ACTIVE),
        ("fd00:5e::3", BanState.PENDING),
    ]
    assert [r.id for r in records] == [first[0].id + 1, first[0].id + 2]
    for record in records:
        assert store.ban(record.id) == record
    assert store.activate_many([records[0].id]) == {records[0].id}  # live: activating is a no-op
    assert store.ban_for("198.18.0.3") == records[0]
