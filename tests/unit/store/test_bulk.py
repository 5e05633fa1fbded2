"""Many bans at once on a real SQLite file: each batch question answers as the one-ban
question would (covering prefixes too), and the batch steps leave the same records."""

from __future__ import annotations

from pathlib import Path

import pytest

from portsentinel.store.bulk import BURST_CACHE_KIB, BURST_MIN, ROWS_PER_INSERT
from portsentinel.store.connect import CACHE_KIB
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


def test_many_bans_go_in_whole_statements_and_the_rest_one_by_one(store: Store) -> None:
    count = 2 * ROWS_PER_INSERT + 5  # two full statements and five rows on their own
    bans = [new(f"fd00:5e::{n:x}" if n % 3 else f"198.18.{n // 256}.{n % 256}", created=n)
            for n in range(count)]  # fmt: skip
    with store.batch():
        records = store.begin_bans(bans)
    assert [r.id for r in records] == list(range(1, count + 1))
    for ban, record in zip(bans, records, strict=True):
        assert (record.address, record.created) == (ban.address, ban.created)
        assert store.ban(record.id) == record
    # One already banned in the middle of a whole statement: nothing of the batch is written.
    again = [new(f"198.19.0.{n}") for n in range(ROWS_PER_INSERT)]
    again[ROWS_PER_INSERT // 2] = new(bans[0].address)
    with pytest.raises(DuplicateBanError):
        store.begin_bans(again)
    assert store.live_bans_for([b.address for b in again[:3]]) == {}


def test_live_lengths_of_one_family_are_not_asked_for_the_other(store: Store) -> None:
    store.begin_ban("fd00::", 32, created=0.0, expires=None, reason="r", rule=None,
                    evidence={}, offence=1)  # fmt: skip
    store.begin_ban("198.18.0.2", None, created=0.0, expires=None, reason="r", rule=None,
                    evidence={}, offence=1)  # fmt: skip
    hosts = ["fd00:0:5e::9", "fd01::9", "198.18.0.2", "198.18.0.3", "0.0.253.0"]
    found = store.live_bans_for(hosts)
    for host in hosts:
        assert (found.get(host), host) == (store.ban_for(host), host)
    assert (found["fd00:0:5e::9"].address, found["fd00:0:5e::9"].prefix) == ("fd00::", 32)
    assert set(found) == {"fd00:0:5e::9", "198.18.0.2"}


def test_a_burst_raises_the_page_cache_while_it_is_written(store: Store) -> None:
    def cache() -> int:
        return int(store._conn.execute("PRAGMA cache_size").fetchone()[0])

    own = cache()
    assert own == -CACHE_KIB
    with store.burst(BURST_MIN - 1):
        assert cache() == own  # a few bans: the connection's own
    with store.burst(BURST_MIN), store.batch():
        assert cache() == -BURST_CACHE_KIB
        store.begin_bans([new("198.18.0.2")])
    assert cache() == own
    with pytest.raises(DuplicateBanError), store.burst(BURST_MIN):
        store.begin_bans([new("198.18.0.2")])
    assert cache() == own  # given back after a failure too
