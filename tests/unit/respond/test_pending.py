"""A ban on its way through ``ban_many``: what it stores of the request, and whether the
detection loop's element is the one the ban wants."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from portsentinel.block import BanSpec
from portsentinel.block.base import ActionDetail
from portsentinel.block.nftables import ban_detail
from portsentinel.errors import BackendError
from portsentinel.model import Mode, Proto
from portsentinel.respond.pending import BanRequest, Pending, action_rows, sent_as_is
from portsentinel.store.records import ActionState
from portsentinel.store.sqlite import NewBan, Store


def request(**kw: object) -> BanRequest:
    base = BanRequest("198.18.0.2", 79, Proto.UDP, Mode.AUDP, 1, "UDP scan", "scan_trigger",
                      {"ports": ["udp/79"], "hits": 3})  # fmt: skip
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def pending(req: BanRequest | None, seconds: float | None = 3600.0) -> Pending:
    spec = BanSpec.create("198.18.0.2", port=79, proto=Proto.UDP, mode=Mode.AUDP,
                          timeout=seconds)  # fmt: skip
    return Pending(0, req, ["nftables", "hosts_deny"], seconds, 1, None, spec)


def test_the_stored_evidence_is_the_requests_with_its_plan_and_target() -> None:
    assert pending(request()).evidence() == {
        "ports": ["udp/79"], "hits": 3, "plan": ["nftables", "hosts_deny"], "port": 79,
        "proto": "udp", "mode": "audp",
    }  # fmt: skip
    assert pending(request(mode=None)).evidence()["mode"] is None


def test_an_element_counts_as_sent_only_with_the_timeout_the_ban_wants() -> None:
    assert sent_as_is(pending(request(in_kernel=True, kernel_timeout=3600)))
    assert sent_as_is(pending(request(in_kernel=True, kernel_timeout=None), seconds=None))
    assert not sent_as_is(pending(request()))  # the loop did not send it
    # A repeat offender: the loop sent a first offence's hour, the ban wants two.
    assert not sent_as_is(pending(request(in_kernel=True, kernel_timeout=3600), 7200.0))
    assert not sent_as_is(pending(request(in_kernel=True, kernel_timeout=3600), None))
    assert not sent_as_is(pending(None))  # a stored ban re-applied at start


def test_a_re_applied_ban_has_no_request_and_an_unrecorded_one_no_record() -> None:
    with pytest.raises(ValueError, match="no request"):
        pending(None).evidence()
    with pytest.raises(ValueError, match="not recorded"):
        _ = pending(request()).ban


def test_an_applied_element_is_held_in_its_bans_row_and_reads_back_whole(tmp_path: Path) -> None:
    with Store.open(str(tmp_path / "state")) as store:
        bans = [pending(request()), pending(request()), pending(request()), pending(request())]
        for p, address in zip(bans, ("198.18.0.2", "198.18.0.3", "198.18.0.4", "fd00:5e::4"),
                              strict=True):  # fmt: skip
            p.spec = BanSpec.create(address, port=79, proto=Proto.UDP, mode=Mode.AUDP,
                                    timeout=3600.0)  # fmt: skip
            [p.record] = store.begin_bans([NewBan(address, None, 5.0, 3605.0, "UDP scan", None,
                                                  p.evidence(), 1)])  # fmt: skip
        other = {**ban_detail(bans[2].spec), "handle": 7}  # not what ``ban_detail`` says
        outcomes: list[tuple[Pending, ActionDetail | BackendError]] = [
            (bans[0], ban_detail(bans[0].spec)), (bans[1], BackendError("no table")),
            (bans[2], other), (bans[3], ban_detail(bans[3].spec)),
        ]  # fmt: skip
        rows, held = action_rows("nftables", outcomes, hold=True)
        assert [(r[0], r[3]) for r in rows] == [(bans[1].ban.id, ActionState.FAILED),
                                                (bans[2].ban.id, ActionState.APPLIED)]  # fmt: skip
        assert [h[2] for h in held] == [bans[0].ban.id, bans[3].ban.id]
        with store.batch():
            store.record_actions(rows, at=5.0, first=True)
            store.hold_actions(held)
        for p in bans:
            [action] = store.actions(p.ban.id)
            assert action.updated == 5.0
            if p is not bans[1]:
                assert action.detail == (other if p is bans[2] else ban_detail(p.spec))
        assert store._conn.execute("SELECT count(*) FROM ban_actions").fetchone() == (2,)
        # Without ``hold`` (bans not recorded in this batch), or another backend: rows only.
        assert action_rows("nftables", outcomes, hold=False)[1] == []
        assert action_rows("iptables", outcomes, hold=True)[1] == []


def test_a_sent_copy_is_the_request_with_its_element_in_the_kernel() -> None:
    original = request(provisional=True)
    sent = original.sent(300)
    assert sent == dataclasses.replace(original, in_kernel=True, kernel_timeout=300)
    assert (original.in_kernel, original.kernel_timeout) == (False, None)  # left as it was
    assert sent.evidence is original.evidence
    with pytest.raises(dataclasses.FrozenInstanceError):
        sent.port = 80  # type: ignore[misc]
