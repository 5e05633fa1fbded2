"""Repeated records are limited per key and overall, and counted, never lost silently."""

from __future__ import annotations

from portsentinel.alert.ratelimit import RepeatLimiter


def test_per_key_burst_then_rate() -> None:
    limiter = RepeatLimiter(rate=2.0, burst=3.0)
    assert [limiter.allow("a", 0.0) for _ in range(5)] == [True, True, True, False, False]
    assert limiter.allow("b", 0.0)  # another key has its own bucket
    assert limiter.allow("a", 0.5)  # half a second at 2/s: one token
    assert not limiter.allow("a", 0.5)
    total, top = limiter.summary()
    assert total == 3
    assert top == [("a", 3)]
    assert limiter.summary() == (0, [])


def test_global_cap_holds_back_a_flood_of_new_keys() -> None:
    limiter = RepeatLimiter(global_rate=10.0, global_burst=100.0)
    allowed = sum(limiter.allow(("src", i), 0.0) for i in range(1000))
    assert allowed == 100
    assert limiter.total_suppressed == 900
    assert limiter.summary()[0] == 900
    assert len(limiter._keys) == 100  # the held ones made no entries


def test_keys_are_bounded() -> None:
    limiter = RepeatLimiter(max_keys=10, global_burst=1e9)
    for i in range(1000):
        limiter.allow(i, float(i))
    assert len(limiter._keys) == 10


def test_records_held_elsewhere_join_the_summary() -> None:
    limiter = RepeatLimiter(rate=1.0, burst=1.0)
    assert limiter.allow("a", 0.0)
    assert not limiter.allow("a", 0.0)
    limiter.add_held("a", 5)
    limiter.add_held("b", 2)
    limiter.add_held("c", 0)
    held, top = limiter.summary()
    assert held == 8
    assert top == [("a", 6), ("b", 2)]
    assert limiter.total_suppressed == 8
    assert limiter.allow("b", 10.0)  # a key made by add_held starts with a full bucket
