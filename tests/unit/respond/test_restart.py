"""The ban lifecycle after a restart and while it runs: a pending ban finished, a ban only the
kernel knows adopted with its remaining time, stray iptables rules removed, and what another
tool flushed put back. Backends are the in-memory ones of test_bans."""

from __future__ import annotations

import ipaddress

from portsentinel.config.types import Backend as BackendName
from portsentinel.host.neverblock import Source
from portsentinel.store.sqlite import Store
from unit.respond.test_bans import HOUR, manager, request, settings


def test_restore_finishes_a_pending_ban_and_adopts_what_only_the_kernel_has(store: Store) -> None:
    s = settings(ban_duration=HOUR)
    bans, backends, lines = manager(store, s)
    # A previous run wrote the ban and died before any backend ran (kill -9).
    store.begin_ban("198.18.0.7", None, created=0.0, expires=HOUR, reason="SYN scan", rule=None,
                    evidence={"plan": ["nftables"], "port": 1, "proto": "tcp", "mode": "atcp"},
                    offence=1)  # fmt: skip
    # The detection loop's first ban reached the kernel; the process died before the store.
    backends.kernel.bans["198.18.0.99"] = 100.0
    live = bans.restore(10.0)
    assert [r.address for r in live] == ["198.18.0.7", "198.18.0.99"]
    adopted = live[1]
    assert adopted.expires == 110.0  # the time the kernel said it has left
    assert adopted.reason == "adopted from the kernel"
    assert backends.kernel.bans == {"198.18.0.7": HOUR - 10.0, "198.18.0.99": 100.0}
    assert any("WARNING" in line and "198.18.0.99" in line for line in lines)
    # Adopted, it is an ordinary ban: it expires and is lifted from the kernel.
    assert [r.address for r in bans.expire(111.0)] == ["198.18.0.99"]
    assert "198.18.0.99" not in backends.kernel.bans


def test_repair_puts_back_what_another_tool_flushed(store: Store) -> None:
    bans, backends, _lines = manager(store, settings(ban_duration=HOUR))
    assert bans.ban(request("198.18.0.2"), 0.0) is not None
    assert bans.ban(request("fd00:5e::2"), 0.0) is not None
    backends.kernel.bans.clear()  # nft flush ruleset
    assert bans.repair(100.0) == 2
    assert set(backends.kernel.bans) == {"198.18.0.2", "fd00:5e::2"}
    assert bans.repair(101.0) == 0


def test_strays_of_a_backend_the_loop_never_writes_first_are_removed(store: Store) -> None:
    bans, backends, lines = manager(store, settings(block_backend=BackendName.IPTABLES))
    backends.kernel.bans["198.18.0.99"] = None  # a rule of ours the store does not know
    assert bans.restore(10.0) == []
    assert backends.kernel.bans == {}
    assert any("removed stray iptables ban of 198.18.0.99" in line for line in lines)
    assert bans.ban(request("198.18.0.2"), 20.0) is not None


def test_restore_lifts_a_ban_on_an_address_protected_since_and_never_reapplies_it(
    store: Store,
) -> None:
    bans, backends, lines = manager(store, settings(ban_duration=HOUR))
    assert bans.ban(request("198.18.0.7"), 0.0) is not None
    assert bans.ban(request("198.18.0.8"), 0.0) is not None
    backends.kernel.bans.clear()  # a reboot: the kernel forgot, the store did not
    backends.kernel.bans["198.18.0.9"] = 100.0  # a first ban the store never recorded
    protected = (
        (ipaddress.ip_network("198.18.0.7/32"), "gateway of route 198.18.4.0/24", Source.GATEWAY),
        (ipaddress.ip_network("198.18.0.9/32"), "SSH peer", Source.SSH),
    )
    live = bans.restore(10.0, protected)
    assert [r.address for r in live] == ["198.18.0.8"]
    assert set(backends.kernel.bans) == {"198.18.0.8"}  # neither re-applied nor adopted
    assert [r.address for r in store.active_bans(10.0)] == ["198.18.0.8"]
    said = [line for line in lines if "now in the never-block set" in line]
    assert len(said) == 2
