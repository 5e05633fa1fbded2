"""Bounded per-source tracking: counts, capped evidence, eviction and idle expiry."""

from __future__ import annotations

import pytest

from portsentinel.detect.track import KIND_BIT, SourceState, Tracker, evidence_key, kinds_of
from portsentinel.model import Proto, ScanKind

TCP = int(Proto.TCP)
UDP = int(Proto.UDP)
DST = bytes([198, 18, 0, 1])


def addr(i: int) -> bytes:
    return (0xC6120000 + i).to_bytes(4, "big")  # 198.18.x.y


def tracker(**kw: int | float) -> Tracker:
    caps: dict[str, int | float] = {"max_sources": 100, "max_ports": 8, "max_dsts": 4}
    caps.update(kw)
    return Tracker(**caps)  # type: ignore[arg-type]


def test_first_hit_creates_state() -> None:
    t = tracker()
    state = t.hit(addr(2), TCP, 80, ScanKind.SYN, DST, 5.0)
    assert isinstance(state, SourceState)
    assert (state.first_seen, state.last_seen, state.hits) == (5.0, 5.0, 1)
    assert state.ports_seen == 1
    assert state.destinations == 1
    assert state.times is None
    assert state.rule_data is None
    assert t.get(addr(2)) is state
    assert addr(2) in t
    assert len(t) == 1


def test_repeats_count_but_evidence_stays_distinct() -> None:
    t = tracker()
    for now in (1.0, 2.0, 3.0):
        state = t.hit(addr(2), TCP, 80, ScanKind.SYN, DST, now)
    state = t.hit(addr(2), UDP, 80, ScanKind.UDP, DST, 4.0)
    assert state.hits == 4
    assert state.first_seen == 1.0
    assert state.last_seen == 4.0
    # TCP 80 and UDP 80 are different evidence.
    assert list(state.ports) == [evidence_key(TCP, 80), evidence_key(UDP, 80)]
    assert kinds_of(state.kinds) == [ScanKind.SYN, ScanKind.UDP]


def test_ports_are_capped_keeping_the_newest() -> None:
    t = tracker(max_ports=3)
    src = addr(2)
    for port in (10, 11, 12, 10, 13):  # 10 is refreshed, so 11 is the oldest when 13 comes
        state = t.hit(src, TCP, port, ScanKind.SYN, DST, 1.0)
    assert list(state.ports) == [evidence_key(TCP, p) for p in (12, 10, 13)]
    for port in range(1000, 2000):
        t.hit(src, TCP, port, ScanKind.SYN, DST, 1.0)
    assert state.ports_seen == 3


def test_destinations_are_counted_and_capped() -> None:
    t = tracker(max_dsts=3)
    src = addr(2)
    state = t.hit(src, TCP, 1, ScanKind.SYN, DST, 1.0)
    t.hit(src, TCP, 1, ScanKind.SYN, DST, 1.0)
    assert state.dsts is None  # one destination needs no set
    for i in range(2, 50):
        t.hit(src, TCP, 1, ScanKind.SYN, addr(i), 1.0)
    assert state.destinations == 3


def test_hit_times_kept_only_when_asked_and_bounded() -> None:
    t = tracker(keep_times=3)
    for now in range(10):
        state = t.hit(addr(2), TCP, 1, ScanKind.SYN, DST, float(now))
    assert state.times is not None
    assert list(state.times) == [7.0, 8.0, 9.0]


def test_kind_bits_are_distinct() -> None:
    bits = list(KIND_BIT.values())
    assert len(set(bits)) == len(ScanKind)
    assert all(bit & (bit - 1) == 0 for bit in bits)
    assert kinds_of(0) == []


def test_least_recently_seen_source_is_evicted_at_the_cap() -> None:
    t = tracker(max_sources=3)
    for i in range(3):
        t.hit(addr(i), TCP, 1, ScanKind.SYN, DST, float(i))
    t.hit(addr(0), TCP, 1, ScanKind.SYN, DST, 3.0)  # 0 is now the most recent
    t.hit(addr(9), TCP, 1, ScanKind.SYN, DST, 4.0)
    assert addr(1) not in t
    assert all(addr(i) in t for i in (0, 2, 9))
    assert t.evicted == 1


def test_spoofed_flood_stays_within_the_caps() -> None:
    t = tracker(max_sources=50, max_ports=4, max_dsts=2)
    for i in range(100_000):
        t.hit(addr(i), TCP, i & 0xFFFF, ScanKind.SYN, addr(i + 1), float(i))
    assert len(t) == 50
    assert t.evicted == 100_000 - 50


def test_expiry_forgets_only_idle_sources() -> None:
    t = tracker(idle_timeout=10.0)
    t.hit(addr(1), TCP, 1, ScanKind.SYN, DST, 0.0)
    t.hit(addr(2), TCP, 1, ScanKind.SYN, DST, 1.0)
    t.hit(addr(1), TCP, 1, ScanKind.SYN, DST, 8.0)  # refreshed: now after addr(2)
    assert t.expire(10.0) == 0
    assert t.expire(11.0) == 0  # idle for exactly the timeout is not longer than it
    assert t.expire(11.5) == 1
    assert addr(2) not in t
    assert addr(1) in t
    assert t.expire(100.0) == 1
    assert len(t) == 0
    assert t.expired == 2


def test_expiry_stops_at_the_first_active_source() -> None:
    t = tracker(max_sources=10_000, idle_timeout=5.0)
    for i in range(10_000):
        t.hit(addr(i), TCP, 1, ScanKind.SYN, DST, float(i))
    assert t.expire(10_000.0) == 9_995  # sources last seen before 9995.0
    assert len(t) == 5


def test_expiry_walks_in_seen_order_and_stops_early() -> None:
    # Expiry is O(expired): it trusts the seen order and never looks past an active source,
    # which is why callers must feed non-decreasing times.
    t = tracker(idle_timeout=5.0)
    t.hit(addr(1), TCP, 1, ScanKind.SYN, DST, 100.0)
    t.hit(addr(2), TCP, 1, ScanKind.SYN, DST, 0.0)
    assert t.expire(104.0) == 0
    assert addr(2) in t


def test_zero_idle_timeout_never_expires() -> None:
    t = tracker(idle_timeout=0.0)
    t.hit(addr(1), TCP, 1, ScanKind.SYN, DST, 0.0)
    assert t.expire(1e12) == 0
    assert len(t) == 1


def test_forget() -> None:
    t = tracker()
    t.hit(addr(1), TCP, 1, ScanKind.SYN, DST, 0.0)
    t.forget(addr(1))
    t.forget(addr(1))
    assert t.get(addr(1)) is None


@pytest.mark.parametrize(
    "kw",
    [{"max_sources": 0}, {"max_ports": 0}, {"max_dsts": 0}, {"keep_times": -1}],
)
def test_caps_must_be_positive(kw: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="positive"):
        tracker(**kw)


def test_one_port_is_kept_inline_and_a_second_makes_the_dict() -> None:
    t = tracker(max_ports=3)
    state = t.hit(addr(1), TCP, 80, ScanKind.SYN, DST, 0.0)
    assert state.more is None
    assert (state.ports, state.ports_seen) == ([evidence_key(TCP, 80)], 1)
    t.hit(addr(1), TCP, 80, ScanKind.SYN, DST, 1.0)  # a repeat stays inline
    assert state.more is None
    t.hit(addr(1), UDP, 80, ScanKind.UDP, DST, 2.0)
    assert state.ports == [evidence_key(TCP, 80), evidence_key(UDP, 80)]
    assert state.hits == 3


def test_a_cap_of_one_port_keeps_the_newest() -> None:
    t = tracker(max_ports=1)
    t.hit(addr(1), TCP, 80, ScanKind.SYN, DST, 0.0)
    state = t.hit(addr(1), TCP, 81, ScanKind.SYN, DST, 1.0)
    assert (state.ports, state.more) == ([evidence_key(TCP, 81)], None)
