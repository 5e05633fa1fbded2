"""Bounded per-source tracking: counts, capped evidence, eviction and idle expiry."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portsentinel.detect import track
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


def test_a_source_seen_again_outlives_one_not_seen_at_the_cap() -> None:
    t = tracker(max_sources=4)  # two generations of two
    for i in range(3):
        t.hit(addr(i), TCP, 1, ScanKind.SYN, DST, float(i))  # 0, 1 fill the young; 2 rotates
    t.hit(addr(0), TCP, 1, ScanKind.SYN, DST, 3.0)  # 0 is young again
    t.hit(addr(9), TCP, 1, ScanKind.SYN, DST, 4.0)  # the young is full: 1, never seen again, goes
    assert addr(1) not in t
    assert all(addr(i) in t for i in (0, 2, 9))
    assert t.evicted == 1
    state = t.get(addr(0))
    assert state is not None
    assert state.hits == 2


def test_a_source_keeps_its_evidence_for_half_the_cap_of_new_sources() -> None:
    t = tracker(max_sources=1000)
    t.hit(addr(0), TCP, 1, ScanKind.SYN, DST, 0.0)
    for i in range(1, 500):  # whatever else comes, the next 499 new sources leave it be
        t.hit(addr(i), TCP, 1, ScanKind.SYN, DST, 0.0)
    assert addr(0) in t
    for i in range(500, 1500):
        t.hit(addr(i), TCP, 1, ScanKind.SYN, DST, 0.0)
    assert addr(0) not in t
    assert len(t) <= 1000


@pytest.mark.parametrize("cap", [1, 2, 3, 7, 64])
@pytest.mark.parametrize("expiring", [False, True])
def test_the_cap_holds_for_every_size(cap: int, expiring: bool) -> None:
    # With expiry, generations also turn over in time (found by the fuzz harness: a cap of
    # one held two sources once a turn in time made the young generation old).
    t = tracker(max_sources=cap, idle_timeout=2.5 if expiring else 0.0)
    for i in range(5 * cap + 3):
        t.hit(addr(i), TCP, 1, ScanKind.SYN, DST, float(i))
        assert len(t) <= cap
        assert addr(i) in t  # the newest is always kept
        t.expire(float(i))
        assert len(t) <= cap
    assert t.evicted + t.expired + len(t) == 5 * cap + 3


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
    assert t.expire(5.0) == 0  # both become the old generation
    t.hit(addr(1), TCP, 1, ScanKind.SYN, DST, 8.0)  # seen again: young again
    assert t.expire(15.0) == 0  # the old generation has been old for exactly 10 s
    assert t.expire(15.5) == 1  # longer: addr(2), idle for 14.5 s, goes; addr(1) becomes old
    assert addr(2) not in t
    assert addr(1) in t
    assert t.expire(25.5) == 0
    assert t.expire(26.0) == 1
    assert len(t) == 0
    assert t.expired == 2


def test_stale_evidence_is_never_counted() -> None:
    # Forgetting is lazy (within two timeouts), but a source idle for longer than the
    # timeout starts afresh on its next probe, wherever it still sits.
    t = tracker(idle_timeout=10.0)
    t.hit(addr(1), TCP, 1, ScanKind.SYN, DST, 0.0)
    t.hit(addr(1), TCP, 2, ScanKind.SYN, DST, 0.0)
    state = t.hit(addr(1), TCP, 3, ScanKind.SYN, DST, 10.5)  # never expired: still young
    assert (state.hits, state.ports_seen, state.first_seen) == (1, 1, 10.5)
    assert t.expired == 1
    t.expire(11.0)  # young -> old
    state = t.hit(addr(1), TCP, 4, ScanKind.SYN, DST, 21.0)  # from the old generation
    assert (state.hits, state.first_seen) == (1, 21.0)
    assert t.expired == 2
    state = t.hit(addr(1), TCP, 5, ScanKind.SYN, DST, 31.0)  # exactly the timeout: kept
    assert state.hits == 2


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 7), st.integers(0, 12).map(lambda q: q / 4)),  # exact times
        min_size=1,
        max_size=120,
    )
)
def test_expiry_never_forgets_early_and_always_by_two_timeouts(
    steps: list[tuple[int, float]],
) -> None:
    timeout, tick = 10.0, 1.0
    t = tracker(max_sources=100, idle_timeout=timeout)
    now, next_tick = 0.0, tick
    last_hit: dict[int, float] = {}
    for source, gap in steps:
        now += gap
        while next_tick <= now:  # the daemon's tick, once a second
            t.expire(next_tick)
            for src, seen in last_hit.items():
                idle = next_tick - seen
                if idle <= timeout:
                    assert addr(src) in t, "forgotten before the timeout"
                elif idle > 2 * (timeout + tick):
                    assert addr(src) not in t, "kept past two timeouts"
            next_tick += tick
        state = t.hit(addr(source), TCP, 1, ScanKind.SYN, DST, now)
        before = last_hit.get(source)
        if before is not None and now - before > timeout:
            assert state.hits == 1, "stale evidence counted"
        last_hit[source] = now


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


def test_sources_share_one_copy_of_a_destination() -> None:
    # Each decoded packet brings its own bytes object; the states keep one shared copy.
    t = tracker(max_dsts=4)
    first = t.hit(addr(1), TCP, 80, ScanKind.SYN, bytes(DST), 1.0)
    second = t.hit(addr(2), TCP, 80, ScanKind.SYN, bytes(DST), 1.0)
    assert first.first_dst == DST
    assert second.first_dst is first.first_dst
    other = bytes([198, 18, 0, 2])
    first = t.hit(addr(1), TCP, 81, ScanKind.SYN, bytes(other), 2.0)
    second = t.hit(addr(2), TCP, 81, ScanKind.SYN, bytes(other), 2.0)
    assert first.dsts == second.dsts == {DST, other}
    assert {id(d) for d in first.dsts or ()} == {id(d) for d in second.dsts or ()}


def test_the_shared_destinations_stay_bounded() -> None:
    t = tracker(max_sources=10)
    for i in range(5000):
        t.hit(addr(i), TCP, 80, ScanKind.SYN, (0xC6130000 + i).to_bytes(4, "big"), float(i))
    assert len(t._dsts) <= track.DST_CANON_CAP
