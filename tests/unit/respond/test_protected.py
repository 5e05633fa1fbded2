"""Bans on addresses the never-block set comes to hold: lifted with their reason, as ``allow``
lifts them (no offence counted); other bans kept."""

from __future__ import annotations

import ipaddress

from portsentinel.host.neverblock import Entry, Source
from portsentinel.respond.protected import LIFTED_BY, lift_protected
from portsentinel.store.records import BanRecord, LiftedBy
from portsentinel.store.sqlite import Store
from unit.respond.test_bans import HOUR, manager, request, settings

ENTRIES: tuple[Entry, ...] = (
    (ipaddress.ip_network("198.18.0.7/32"), "gateway of route 198.18.4.0/24", Source.GATEWAY),
    (ipaddress.ip_network("fd00:5e::22/128"), "SSH peer", Source.SSH),
)


def test_bans_holding_a_protected_address_are_lifted_with_the_reason(store: Store) -> None:
    bans, backends, lines = manager(store, settings(ban_duration=HOUR))
    for address in ("198.18.0.7", "198.18.0.8", "fd00:5e::22"):
        assert bans.ban(request(address), 0.0) is not None
    lifted = lift_protected(bans, store.active_bans(1.0), ENTRIES, 1.0)
    assert sorted(r.address for r in lifted) == ["198.18.0.7", "fd00:5e::22"]
    assert [r.address for r in store.active_bans(1.0)] == ["198.18.0.8"]
    assert set(backends.kernel.bans) == {"198.18.0.8"}
    assert (
        "attackalert: Host 198.18.0.7 unblocked: now in the never-block set "
        "(gateway of route 198.18.4.0/24)"
    ) in lines
    assert "attackalert: Host fd00:5e::22 unblocked: now in the never-block set (SSH peer)" in lines
    assert LIFTED_BY is LiftedBy.ALLOW  # no offence: a later ban is not doubled for it
    assert store.offences("198.18.0.7", 0.0) == 0


def test_nothing_protected_lifts_nothing(store: Store) -> None:
    bans, backends, _lines = manager(store, settings(ban_duration=HOUR))
    assert bans.ban(request("198.18.0.7"), 0.0) is not None
    assert lift_protected(bans, store.active_bans(1.0), (), 1.0) == []
    assert set(backends.kernel.bans) == {"198.18.0.7"}


class Refusing:
    """A manager whose lift finds the ban already ended (lifted meanwhile)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.log = self.lines.append

    def lift(self, record: BanRecord, now: float, by: LiftedBy) -> bool:
        return False


def test_a_ban_already_ended_is_not_reported(store: Store) -> None:
    bans, _backends, _lines = manager(store, settings(ban_duration=HOUR))
    assert bans.ban(request("198.18.0.7"), 0.0) is not None
    other = Refusing()
    assert lift_protected(other, store.active_bans(1.0), ENTRIES, 1.0) == []
    assert other.lines == []
