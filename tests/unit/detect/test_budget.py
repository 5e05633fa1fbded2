"""The ban budget: token buckets and caps per evidence tier."""

from __future__ import annotations

import pytest

from portsentinel.detect.budget import (
    PORT_TIERS,
    PRESSURE_HOLD,
    PROOF,
    WEAK,
    BanBudget,
    BudgetConfig,
)
from portsentinel.detect.track import SourceState, Tracker
from portsentinel.model import ScanKind

HOST = bytes([198, 18, 0, 1])


def state_with(ports: int, kind: ScanKind = ScanKind.SYN) -> SourceState:
    tracker = Tracker(max_sources=10, max_ports=64, max_dsts=4)
    state = None
    for port in range(1, ports + 1):
        state = tracker.hit(b"\x01\x02\x03\x04", 6, port, kind, HOST, 0.0)
    assert state is not None
    return state


def src(i: int) -> bytes:
    return (0xC6130000 + i).to_bytes(4, "big")


def test_strong_means_many_ports_or_a_handshake() -> None:
    budget = BanBudget(BudgetConfig(strong_ports=3))
    assert not budget.strong(state_with(2))
    assert budget.strong(state_with(3))
    assert budget.strong(state_with(1, ScanKind.CONNECT))


def test_weak_bans_are_rate_limited_and_refill_with_time() -> None:
    budget = BanBudget(BudgetConfig(rate=10, burst=4, weak_share=0.5, strong_ports=5))
    weak = state_with(1)
    granted = [budget.admit(src(i), weak, 0.0) for i in range(5)]
    assert granted == [True, True, False, False, False]  # weak burst: 4 * 0.5
    assert budget.refused == 3
    assert budget.admit(src(10), weak, 0.2)  # 0.2 s at 5 weak bans/s: one more token


def test_weak_flood_cannot_spend_strong_tokens_or_the_reserve() -> None:
    budget = BanBudget(BudgetConfig(max_active=10, rate=1000, burst=1000, strong_ports=2))
    weak, strong = state_with(1), state_with(2)
    admitted = sum(budget.admit(src(i), weak, i * 0.01) for i in range(100))
    assert admitted == budget.weak_cap == 5
    assert all(budget.admit(src(1000 + i), strong, 2.0) for i in range(5))
    assert not budget.admit(src(2000), strong, 2.0)  # the whole cap is now in force
    assert budget.active == 10


def test_release_frees_the_slot_and_restore_takes_one() -> None:
    budget = BanBudget(BudgetConfig(max_active=2, rate=100, burst=100, strong_ports=2))
    weak = state_with(1)
    assert budget.admit(src(1), weak, 0.0)
    assert not budget.admit(src(2), weak, 0.0)  # weak cap is 1
    budget.release(src(1))
    assert budget.admit(src(2), weak, 0.0)
    budget.restore(src(3), strong=True)
    assert budget.active == 2
    assert budget.admit(src(2), weak, 0.0)  # already admitted: no second slot
    assert budget.active == 2


@pytest.mark.parametrize(
    "kw", [{"max_active": 0}, {"rate": 0}, {"burst": 0}, {"strong_ports": 0}, {"weak_share": 1.0}]
)
def test_config_is_validated(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        BudgetConfig(**kw)  # type: ignore[arg-type]


def test_tiers_rank_ports_by_doubling_and_a_handshake_above_them() -> None:
    budget = BanBudget(BudgetConfig(strong_ports=5))
    tiers = {n: budget.tier(state_with(n)) for n in (1, 4, 5, 9, 10, 19, 20, 39, 40, 64)}
    assert tiers == {1: WEAK, 4: WEAK, 5: 0, 9: 0, 10: 1, 19: 1, 20: 2, 39: 2, 40: 3, 64: 3}
    assert budget.tier(state_with(1, ScanKind.CONNECT)) == PROOF == PORT_TIERS


def test_forged_sources_cannot_spend_the_tokens_of_a_source_with_more_ports() -> None:
    """A flood whose forged sources each show five ports drains the lowest port tier; then
    twenty (a flood shaped against a fixed 20-port rule): a source with more ports than the
    flood's (a real scan's first fraction of a second), or a handshake, still gets its ban."""
    budget = BanBudget(BudgetConfig(rate=2, burst=3, strong_ports=5))
    five, twenty = state_with(5), state_with(20)
    assert [budget.admit(src(i), five, 0.0) for i in range(4)] == [True, True, True, False]
    assert [budget.admit(src(10 + i), twenty, 0.0) for i in range(7)] == [True] * 6 + [False]
    assert not budget.admit(src(20), state_with(39), 0.0)  # tiers 2, 1 and 0 are spent
    assert budget.admit(src(100), state_with(40), 0.0)  # its own tier
    assert budget.admit(src(101), state_with(1, ScanKind.CONNECT), 0.0)  # proof
    assert not budget.admit(src(102), five, 0.4)  # 0.4 s at 2/s: not yet a whole token
    assert budget.admit(src(102), five, 0.5)


def test_a_higher_tier_spends_lower_tokens_but_never_the_reverse() -> None:
    budget = BanBudget(BudgetConfig(rate=1, burst=1, strong_ports=5))
    proof = state_with(1, ScanKind.CONNECT)
    granted = [budget.admit(src(i), proof, 0.0) for i in range(6)]
    assert granted == [True] * 5 + [False]  # its own token, then one of each port tier
    assert not budget.admit(src(10), state_with(64), 0.0)  # nothing left below proof
    fresh = BanBudget(BudgetConfig(rate=1, burst=1, strong_ports=5))
    assert fresh.admit(src(1), state_with(5), 0.0)
    assert not fresh.admit(src(2), state_with(5), 0.0)  # tier 0 spent; higher ones untouched
    assert fresh.admit(src(3), state_with(10), 0.0)


def test_many_bans_at_once_press_the_budget_and_make_bans_without_a_handshake_provisional() -> None:
    budget = BanBudget(BudgetConfig(rate=1, burst=20, strong_ports=5))
    five, proof = state_with(5), state_with(1, ScanKind.CONNECT)
    assert budget.admit(src(1), five, 0.0)
    assert not budget.provisional(five, 0.0)  # one ban of twenty: an ordinary scan
    for i in range(2, 4):
        assert budget.admit(src(i), five, 0.0)
    assert budget.provisional(five, 0.0)  # the tier's bucket fell below 90 %
    assert not budget.provisional(proof, 0.0)  # a handshake cannot be forged: never short
    assert budget.provisional(five, PRESSURE_HOLD - 1)
    assert not budget.provisional(five, PRESSURE_HOLD + 1)  # eased


def test_a_refusal_presses_the_budget_too() -> None:
    budget = BanBudget(BudgetConfig(max_active=2, rate=1, burst=40, strong_ports=5))
    weak = state_with(1)
    assert budget.admit(src(1), weak, 0.0)
    assert not budget.provisional(weak, 0.0)  # 19 of 20 weak tokens left
    assert not budget.admit(src(2), weak, 1.0)  # the weak share of the cap is full
    assert budget.provisional(weak, 1.0)
