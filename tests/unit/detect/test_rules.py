"""PortSentry's SCAN_TRIGGER rule, with and without a window, and the rule protocol."""

from __future__ import annotations

import pytest

from portsentinel.detect.rules import ScanTrigger, ScoringRule
from portsentinel.detect.track import SourceState, Tracker, evidence_key
from portsentinel.model import Proto, ScanKind

TCP = int(Proto.TCP)
SRC = bytes([198, 18, 0, 2])
DST = bytes([198, 18, 0, 1])


def fire_pattern(rule: ScanTrigger, times: list[float]) -> list[bool]:
    """Feed one source's hits through a tracker sized for the rule; whether each fired."""
    t = Tracker(max_sources=10, max_ports=10, max_dsts=10, keep_times=rule.times_needed)
    out = []
    for now in times:
        state = t.hit(SRC, TCP, 80, ScanKind.SYN, DST, now)
        out.append(rule.observe(state, TCP, 80, ScanKind.SYN, DST, now))
    return out


@pytest.mark.parametrize("trigger", [0, 1])
def test_zero_and_one_fire_on_every_hit(trigger: int) -> None:
    assert fire_pattern(ScanTrigger(trigger), [0.0, 1.0, 2.0]) == [True, True, True]


def test_n_fires_on_the_nth_hit_and_every_later_one() -> None:
    assert fire_pattern(ScanTrigger(3), [0.0] * 5) == [False, False, True, True, True]


def test_window_counts_only_recent_hits() -> None:
    rule = ScanTrigger(3, window=10.0)
    assert rule.times_needed == 3
    # At 11.0 the hit at 0.0 is 11 s old: only two count. At 12.0: 5, 11, 12 count.
    assert fire_pattern(rule, [0.0, 5.0, 11.0, 12.0]) == [False, False, False, True]


def test_window_edge_is_inclusive() -> None:
    assert fire_pattern(ScanTrigger(2, window=10.0), [0.0, 10.0]) == [False, True]
    assert fire_pattern(ScanTrigger(2, window=10.0), [0.0, 10.5]) == [False, False]


def test_slow_scan_never_fires_inside_a_window() -> None:
    rule = ScanTrigger(3, window=10.0)
    assert not any(fire_pattern(rule, [float(i * 6) for i in range(50)]))


def test_window_needs_no_times_for_trivial_triggers() -> None:
    assert ScanTrigger(1, window=10.0).times_needed == 0
    assert ScanTrigger(5).times_needed == 0


def test_windowed_rule_without_kept_times_does_not_fire() -> None:
    # Misconfigured tracker (no times kept): the rule cannot prove the window, so it holds.
    state = SourceState(0.0, DST, keep_times=0, key=evidence_key(TCP, 80))
    state.hits = 10
    assert not ScanTrigger(3, window=10.0).observe(state, TCP, 80, ScanKind.SYN, DST, 0.0)


def test_name_and_validation() -> None:
    assert ScanTrigger(1).name == "scan_trigger"
    assert ScanTrigger(1, name="other").name == "other"
    with pytest.raises(ValueError, match="negative"):
        ScanTrigger(-1)
    with pytest.raises(ValueError, match="negative"):
        ScanTrigger(1, window=-1.0)


def test_scan_trigger_is_a_scoring_rule() -> None:
    rule: ScoringRule = ScanTrigger(2)  # checked by mypy
    assert rule.name == "scan_trigger"


def test_per_protocol_the_trigger_counts_tcp_and_udp_apart() -> None:
    """PortSentry 1.2 ran one process per protocol, so one counter each (LOG_FORMAT 1.2);
    2.0 counts both together."""
    shared, apart = ScanTrigger(3), ScanTrigger(3, per_protocol=True)
    for rule in (shared, apart):
        state = SourceState(0.0, b"\x01" * 4, 0, 0)
        fired = []
        for n, proto in enumerate((6, 17, 6, 17, 6), start=1):
            state.hits = n  # the tracker counts every hit of the source
            fired.append(rule.observe(state, proto, 100 + n, ScanKind.SYN, b"", float(n)))
        assert fired == ([False, False, True, True, True] if rule is shared
                         else [False, False, False, False, True])  # fmt: skip
