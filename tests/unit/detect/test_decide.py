"""The decision step: admission checks, policy checks, BLOCK levels, remembered responses."""

from __future__ import annotations

import ipaddress

import pytest

from portsentinel.detect.budget import BanBudget, BudgetConfig
from portsentinel.detect.decide import BLOCK_ACTIONS, Policy, Responses
from portsentinel.detect.track import SourceState, evidence_key
from portsentinel.model import Action, Proto, Reason
from portsentinel.networks import AddressSet

SRC = bytes([198, 18, 0, 2])
OTHER = bytes([198, 18, 0, 3])
LOCAL = bytes([198, 18, 0, 1])
STATE = SourceState(0.0, LOCAL, keep_times=0, key=evidence_key(Proto.TCP, 80))


def policy(
    tcp: int = 1,
    udp: int = 1,
    *,
    ignore: AddressSet | None = None,
    local: set[bytes] | None = None,
) -> Policy:
    return Policy(
        block_levels={Proto.TCP: tcp, Proto.UDP: udp},
        max_responded=100,
        ignore=ignore,
        local=local,
    )


def test_block_levels_map_to_actions() -> None:
    assert BLOCK_ACTIONS == {0: Action.ALERT, 1: Action.BLOCK, 2: Action.COMMAND}
    p = policy(tcp=0, udp=2)
    assert p.decide(SRC, Proto.TCP, STATE, 0.0) == (Action.ALERT, Reason.TRIGGERED)
    assert p.decide(SRC, Proto.UDP, STATE, 0.0) == (Action.COMMAND, Reason.TRIGGERED)


@pytest.mark.parametrize("level", [-1, 3])
def test_unknown_block_level_is_refused(level: int) -> None:
    with pytest.raises(ValueError, match="block level"):
        policy(tcp=level)


def test_block_covers_both_protocols() -> None:
    p = policy()
    assert p.decide(SRC, Proto.TCP, STATE, 0.0) == (Action.BLOCK, Reason.TRIGGERED)
    assert p.decide(SRC, Proto.TCP, STATE, 1.0) == (Action.IGNORED, Reason.ALREADY_BLOCKED)
    assert p.decide(SRC, Proto.UDP, STATE, 1.0) == (Action.IGNORED, Reason.ALREADY_BLOCKED)
    assert p.decide(OTHER, Proto.UDP, STATE, 1.0) == (Action.BLOCK, Reason.TRIGGERED)


@pytest.mark.parametrize("tcp_level", [0, 2])
def test_alert_or_command_covers_only_its_protocol(tcp_level: int) -> None:
    p = policy(tcp=tcp_level)
    assert p.decide(SRC, Proto.TCP, STATE, 0.0)[1] is Reason.TRIGGERED
    assert p.decide(SRC, Proto.TCP, STATE, 0.0)[1] is Reason.ALREADY_BLOCKED
    assert p.decide(SRC, Proto.UDP, STATE, 0.0) == (Action.BLOCK, Reason.TRIGGERED)


def test_release_and_restore() -> None:
    p = policy()
    p.restore(SRC, Proto.UDP, Action.BLOCK)
    assert p.decide(SRC, Proto.TCP, STATE, 0.0)[1] is Reason.ALREADY_BLOCKED
    p.release(SRC)
    p.release(SRC)  # releasing twice is harmless
    assert p.decide(SRC, Proto.TCP, STATE, 0.0)[1] is Reason.TRIGGERED


def test_admission_order_and_views() -> None:
    ignore = AddressSet([ipaddress.ip_network("198.18.0.0/24")])
    p = policy(ignore=ignore, local={SRC, LOCAL})
    assert p.admit(SRC) is Reason.IGNORE_LIST  # the ignore list is asked first
    p.ignore = AddressSet()
    assert p.admit(SRC) is Reason.OWN_ADDRESS
    assert p.admit(OTHER) is None
    p.local = None
    assert p.admit(SRC) is None


def test_inserted_check_refuses_before_the_response_and_nothing_is_remembered() -> None:
    p = policy()
    seen: list[tuple[bytes, Proto, float]] = []

    def never_block(src: bytes, proto: Proto, state: SourceState, now: float) -> Reason | None:
        seen.append((src, proto, now))
        return Reason.OWN_ADDRESS if src == SRC else None

    p.checks.insert(0, never_block)
    assert p.decide(SRC, Proto.TCP, STATE, 3.0) == (Action.IGNORED, Reason.OWN_ADDRESS)
    assert SRC not in p.responses
    assert p.decide(OTHER, Proto.TCP, STATE, 4.0) == (Action.BLOCK, Reason.TRIGGERED)
    assert seen == [(SRC, Proto.TCP, 3.0), (OTHER, Proto.TCP, 4.0)]


def test_responses_are_bounded_oldest_first() -> None:
    r = Responses(2)
    a, b, c = (bytes([198, 18, 1, i]) for i in range(3))
    r.remember(a, Proto.TCP, Action.BLOCK)
    r.remember(b, Proto.TCP, Action.BLOCK)
    r.remember(a, Proto.UDP, Action.ALERT)  # refreshes a: b is now the oldest
    r.remember(c, Proto.TCP, Action.BLOCK)
    assert len(r) == 2
    assert b not in r
    assert r.covers(a, Proto.UDP)
    assert r.covers(a, Proto.TCP)  # the earlier block is kept when refreshed
    assert r.covers(c, Proto.UDP)


def test_responses_refuse_ignored_and_bad_sizes() -> None:
    with pytest.raises(ValueError, match="not a response"):
        Responses(1).remember(SRC, Proto.TCP, Action.IGNORED)
    with pytest.raises(ValueError, match="positive"):
        Responses(0)


def test_the_hosts_last_word_is_asked_only_before_acting_and_gives_back_the_slot() -> None:
    budget = BanBudget(BudgetConfig(strong_ports=1, burst=10, rate=1.0))
    p = Policy(block_levels={Proto.TCP: 1, Proto.UDP: 0}, max_responded=100, budget=budget)
    asked: list[bytes] = []

    def confirm(src: bytes) -> bool:
        asked.append(src)
        return src == SRC  # an SSH session opened a moment ago

    p.confirm = confirm
    assert p.decide(SRC, Proto.TCP, STATE, 1.0) == (Action.IGNORED, Reason.NEVER_BLOCK)
    assert SRC not in p.responses
    assert budget.active == 0  # the slot it took went back
    assert p.decide(OTHER, Proto.TCP, STATE, 1.0) == (Action.BLOCK, Reason.TRIGGERED)
    assert p.decide(SRC, Proto.UDP, STATE, 1.0) == (Action.ALERT, Reason.TRIGGERED)
    assert asked == [SRC, OTHER]  # an alert acts against nobody: not asked
    assert p.decide(OTHER, Proto.TCP, STATE, 2.0) == (Action.IGNORED, Reason.ALREADY_BLOCKED)
    assert asked == [SRC, OTHER]
