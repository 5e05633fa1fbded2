"""Cutting a ban as a decoy's (``respond/decoys.py``): the store's record, the kernel's
timeout (through the nftables backend's renewal), the log line; and decoy requests' length."""

from __future__ import annotations

from portsentinel.respond.bans import BanRequest
from portsentinel.respond.decoys import CutRequest, cut_ban
from portsentinel.store.changes import CUT_AS_DECOY
from portsentinel.store.sqlite import Store
from unit.respond.test_bans import HOUR, manager, request, settings

GROUP = ("198.18.1.1", "198.18.1.2", "198.18.0.2")


def test_a_ban_is_cut_in_the_store_and_the_kernel(store: Store) -> None:
    bans, backends, lines = manager(store, settings(ban_duration=HOUR, decoy_ban_duration=300.0))
    record = bans.ban(request("198.18.1.1"), 1000.0)
    assert record is not None
    assert backends.kernel.bans == {"198.18.1.1": HOUR}
    evidence = {"one_ttl": True, "probe_ttls": [44]}
    cut = cut_ban(bans, CutRequest("198.18.1.1", GROUP, evidence), 1000.5)
    assert cut is not None
    assert cut.expires == 1000.5 + 300.0
    assert backends.kernel.bans == {"198.18.1.1": 300.0}  # the element's new timeout
    [change] = store.ban_changes(record.id)
    assert change.change == CUT_AS_DECOY
    assert (change.expires_before, change.expires_after) == (1000.0 + HOUR, 1300.5)
    assert change.detail["group"] == list(GROUP)
    assert change.detail["evidence"] == evidence
    assert lines[-1] == (
        "attackalert: Host 198.18.1.1: ban cut to 300s as a decoy's: it probed the same ports "
        "at the same moments as 198.18.1.2, 198.18.0.2, without proof of its address"
    )
    # Cut once: a second request changes nothing.
    assert cut_ban(bans, CutRequest("198.18.1.1", GROUP), 1001.0) is None
    assert [e.address for e in store.due_for_expiry(1301.0)] == ["198.18.1.1"]


def test_nothing_to_cut(store: Store) -> None:
    bans, backends, _lines = manager(store, settings(ban_duration=200.0))
    assert cut_ban(bans, CutRequest("198.18.1.9", GROUP), 1000.0) is None  # never banned
    assert bans.ban(request("198.18.1.1"), 1000.0) is not None
    assert cut_ban(bans, CutRequest("198.18.1.1", GROUP), 1000.0) is None  # shorter already
    assert backends.kernel.bans == {"198.18.1.1": 200.0}
    assert store.changes_since(0.0) == []


def test_a_decoy_request_is_short_from_the_start(store: Store) -> None:
    bans, backends, _lines = manager(store, settings(ban_duration=None, decoy_ban_duration=120.0))
    plain = bans.ban(request("198.18.0.2"), 1000.0)
    decoy = bans.ban(BanRequest(**{**request("198.18.1.1").__dict__, "decoy": True}), 1000.0)
    assert plain is not None
    assert plain.expires is None  # permanent, as configured
    assert decoy is not None
    assert decoy.expires == 1120.0
    assert backends.kernel.bans == {"198.18.0.2": None, "198.18.1.1": 120.0}
