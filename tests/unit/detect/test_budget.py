"""The ban budget: token buckets and caps per evidence tier."""

from __future__ import annotations

import pytest

from portsentinel.detect.budget import BanBudget, BudgetConfig
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


def test_sources_with_five_forged_ports_cannot_spend_a_broad_scanners_tokens() -> None:
    """A flood whose forged sources each show five ports drains the strong tier; a source
    with four times that many ports (a real scan's first fraction of a second) or a completed
    handshake still gets its ban."""
    budget = BanBudget(BudgetConfig(rate=2, burst=3, strong_ports=5))
    forged = state_with(5)
    assert [budget.admit(src(i), forged, 0.0) for i in range(4)] == [True, True, True, False]
    assert not budget.broad(forged)
    scanner = state_with(20)
    assert budget.broad(scanner)
    assert budget.broad(state_with(1, ScanKind.CONNECT))
    assert not budget.broad(state_with(19))
    assert budget.admit(src(100), scanner, 0.0)  # its own tier's token
    assert not budget.admit(src(101), state_with(19), 0.0)  # strong, but the tier is spent
    # A broad source whose own tier is spent may still take a strong token when one is left.
    drained = BanBudget(BudgetConfig(rate=2, burst=1, strong_ports=5))
    assert drained.admit(src(1), scanner, 0.0)
    assert drained.admit(src(2), scanner, 0.0)  # the strong tier's one token
    assert not drained.admit(src(3), scanner, 0.0)
