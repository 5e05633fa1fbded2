"""The one rate limiter: a token bucket; repeated records limited per key and overall, and
notifications throttled; what either holds back is counted, never lost silently."""

from __future__ import annotations

from portsentinel.ratelimit import RepeatLimiter, Throttle, TokenBucket


def test_bucket_starts_full_spends_a_token_each_and_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=4.0, burst=2.0, last=10.0)
    assert [bucket.take(10.0) for _ in range(3)] == [True, True, False]
    assert not bucket.take(10.2)  # 0.8 of a token
    assert bucket.take(10.25)  # a whole one
    assert bucket.take(100.0)
    assert bucket.tokens == 1.0  # never more than the burst


def test_bucket_refill_says_whether_a_token_is_there_without_spending_it() -> None:
    bucket = TokenBucket(rate=1.0, burst=5.0, tokens=0.0, last=0.0)
    assert not bucket.refill(0.5)
    assert bucket.refill(1.0)
    assert bucket.refill(1.0)
    assert bucket.tokens == 1.0


def test_bucket_earns_nothing_when_time_goes_back() -> None:
    bucket = TokenBucket(rate=1.0, burst=3.0, tokens=0.5, last=100.0)
    assert not bucket.refill(50.0)
    assert (bucket.tokens, bucket.last) == (0.5, 100.0)  # nothing earned, nothing taken back
    assert bucket.take(100.5)  # earned from 100, not from 50
    assert not bucket.take(100.5)
    full = TokenBucket(rate=1.0, burst=2.0, last=100.0)
    assert full.take(50.0)  # spends what it has, earns nothing
    assert (full.tokens, full.last) == (1.0, 100.0)


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


def test_throttle_sends_its_rate_at_once_then_refills_over_the_window() -> None:
    throttle = Throttle(rate=2, window=60.0)
    assert throttle.allow(0.0, "a")
    assert throttle.allow(1.0, "a")
    assert not throttle.allow(2.0, "b")
    assert throttle.due == 62.0  # one window after the first refusal
    assert not throttle.allow(20.0, "b")  # 20 s of 60 at 2 per window: 0.67 of a token
    assert throttle.allow(31.0, "c")
    assert throttle.due == 62.0
    assert throttle.take() == (2, [("b", 2)])
    assert throttle.held == 0
    assert throttle.due is None
    assert throttle.take() == (0, [])


def test_throttle_counts_the_refused_by_key_within_its_cap() -> None:
    throttle = Throttle(rate=1, window=60.0, max_keys=2)
    assert throttle.allow(0.0, "a")
    for key in ("b", "c", "b", "d", "c", "b"):
        assert not throttle.allow(1.0, key)
    assert throttle.take() == (6, [("b", 3), ("c", 2)])  # "d" came past the cap: counted only
