"""The ban lifecycle after a restart and while it runs: a pending ban finished, a ban only the
kernel knows adopted with its remaining time, stray iptables rules removed, and what another
tool flushed put back (the conntrack chain too). What cannot be known is said: a command the
process died running is recorded uncertain, not run again; a damaged row is named and set
aside. Backends are the in-memory ones of test_bans."""

from __future__ import annotations

import ipaddress

import pytest

from portsentinel.config.types import Backend as BackendName
from portsentinel.host.neverblock import Source
from portsentinel.respond import restart
from portsentinel.store.records import ActionState
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


# --- what cannot be known is said, not guessed -----------------------------------------------


def pending(store: Store, address: str, plan: list[str]) -> int:
    """A ban a previous run recorded and died applying (kill -9)."""
    return store.begin_ban(address, None, created=0.0, expires=HOUR, reason="SYN scan", rule=None,
                           evidence={"plan": plan, "port": 1, "proto": "tcp", "mode": "atcp"},
                           offence=1).id  # fmt: skip


def test_a_command_the_process_died_running_is_not_run_again_but_said(store: Store) -> None:
    s = settings(ban_duration=HOUR, kill_run_cmd="/usr/local/bin/block $TARGET$")
    bans, backends, lines = manager(store, s)
    both = pending(store, "198.18.0.7", ["nftables", "run_cmd"])
    store.record_action(both, "nftables", {"element": "198.18.0.7"}, ActionState.APPLIED, at=1.0)
    only = pending(store, "198.18.0.8", ["run_cmd"])  # BLOCK_TCP=2: the command alone
    done = pending(store, "198.18.0.9", ["nftables", "run_cmd"])
    store.record_action(done, "run_cmd", {}, ActionState.APPLIED, at=1.0)  # ran; died after
    live = bans.restore(10.0)
    assert [r.address for r in live] == ["198.18.0.7", "198.18.0.8", "198.18.0.9"]
    assert ("run_cmd", "block 198.18.0.7") not in backends.kernel.calls
    assert [c for c in backends.kernel.calls if c[0] == "run_cmd"] == []  # none ran again
    assert set(backends.kernel.bans) == {"198.18.0.7", "198.18.0.9"}  # nftables re-applied
    for ban_id in (both, only):
        action = {a.backend: a for a in store.actions(ban_id)}["run_cmd"]
        assert action.state is ActionState.UNCERTAIN
        assert action.last_error is not None
        assert "may or may not have run" in action.last_error
        assert action.detail["address"] in ("198.18.0.7", "198.18.0.8")
    assert store.uncertain() == [("198.18.0.7", "run_cmd"), ("198.18.0.8", "run_cmd")]
    said = [line for line in lines if "may or may not have run" in line]
    assert len(said) == 2
    assert said[0].startswith("adminalert: WARNING: KILL_RUN_CMD for 198.18.0.7 may or may not")
    assert "portsentinel unblock 198.18.0.7, then portsentinel block 198.18.0.7" in said[0]
    # A second restart finds them recorded: nothing new is said or run.
    lines.clear()
    assert len(bans.restore(20.0)) == 3
    assert not [line for line in lines if "may or may not" in line]


def test_an_uncertain_command_is_not_undone_either(store: Store) -> None:
    s = settings(ban_duration=HOUR, kill_run_cmd="/bin/block $TARGET$",
                 unblock_run_cmd="/bin/unblock $TARGET$")  # fmt: skip
    bans, backends, lines = manager(store, s)
    pending(store, "198.18.0.7", ["run_cmd"])
    [record] = bans.restore(10.0)
    assert bans.unblock("198.18.0.7", 20.0) == record
    assert backends.kernel.calls == []  # neither KILL_RUN_CMD nor UNBLOCK_RUN_CMD
    assert any("UNBLOCK_RUN_CMD is not run for it" in line for line in lines)


def test_a_damaged_live_ban_is_named_set_aside_and_its_kernel_ban_adopted(store: Store) -> None:
    bans, backends, lines = manager(store, settings(ban_duration=HOUR))
    assert bans.ban(request("198.18.0.2"), 0.0) is not None
    damaged = bans.ban(request("198.18.0.3"), 0.0)
    assert damaged is not None
    store._conn.execute("UPDATE bans SET evidence = '{broken' WHERE id = ?", (damaged.id,))
    lines.clear()
    live = bans.restore(10.0)
    assert [r.address for r in live] == ["198.18.0.2", "198.18.0.3"]
    assert live[1].reason == "adopted from the kernel"  # the kernel's ban, a new record
    assert set(backends.kernel.bans) == {"198.18.0.2", "198.18.0.3"}
    [said] = [line for line in lines if "damaged row" in line]
    assert said.startswith(
        f"adminalert: WARNING: state store: skipped a damaged row: bans row {damaged.id} "
        "(198.18.0.3): evidence is not JSON"
    )
    assert said.endswith("its live ban is ended in the store (lifted by 'damaged')")
    assert bans.settle_damaged(20.0) == 0  # said once


class FakeChain:
    def __init__(self, problems: list[str | None], failures: list[str | None]) -> None:
        self.problems = problems
        self.failures = failures
        self.installs = 0

    def problem(self) -> str | None:
        return self.problems.pop(0)

    def install(self) -> str | None:
        self.installs += 1
        return self.failures.pop(0)


def test_the_conntrack_chain_is_part_of_the_repaired_state(store: Store) -> None:
    bans, _backends, lines = manager(store, settings())
    gone = "chain conntrack is missing"
    chain = FakeChain(
        [None, gone, gone, gone, gone], [None, "nft exited with 1", "nft exited with 1", None]
    )
    assert not bans.repair_conntrack(chain)  # type: ignore[arg-type]
    assert (chain.installs, lines) == (0, [])
    assert bans.repair_conntrack(chain)  # type: ignore[arg-type]
    assert lines == [
        f"adminalert: conntrack chain repaired ({gone}): the kernel tracks connections again, "
        "so late UDP replies are not taken for probes"
    ]
    lines.clear()
    assert not bans.repair_conntrack(chain)  # type: ignore[arg-type]
    assert not bans.repair_conntrack(chain)  # type: ignore[arg-type]
    assert lines == [
        f"adminalert: ERROR: cannot repair the conntrack chain ({gone}): nft exited with 1; "
        "late UDP replies may be taken for probes"
    ]  # said once while it lasts
    assert bans.repair_conntrack(chain)  # type: ignore[arg-type]
    assert chain.installs == 4


def test_many_damaged_rows_are_counted_after_the_first_few(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(restart, "NAMED_DAMAGED", 2)
    bans, _backends, lines = manager(store, settings())
    for i in range(5):
        assert bans.ban(request(f"198.18.0.{10 + i}"), 0.0) is not None
    store._conn.execute("UPDATE bans SET evidence = 'x'")
    lines.clear()
    assert store.active_bans(1.0) == []
    assert bans.settle_damaged(1.0) == 5
    assert len([line for line in lines if "skipped a damaged row" in line]) == 2
    assert lines[-1] == (
        "adminalert: WARNING: state store: 3 more damaged rows skipped (3 of bans); their live "
        "bans are ended in the store"
    )
    store._conn.execute("UPDATE bans SET evidence = '{}'")  # mended: every one was set aside
    assert store.active_bans(1.0) == []
