"""The one rate limiter: a token bucket, and the two limiters built on it.

A blocked scanner keeps probing and a forged flood brings a new "source" per packet; each log
line, event, kernel round trip or notification they cause costs time the detection loop does
not have. So every such cost is paid from a ``TokenBucket``: ``burst`` tokens, refilled at
``rate`` per second, one token per thing done. ``RepeatLimiter`` keeps one bucket per key plus
a global one (records); ``Throttle`` keeps one bucket and remembers whom it refused
(notifications). What either holds back is counted for a summary, never dropped silently.

Pure: time is an argument, in seconds on any clock that does not go back.
"""

from __future__ import annotations

from collections import OrderedDict

SUMMARY_TOP = 5  # keys named in a summary, those that held most
SUMMARY_EVERY = 10.0  # seconds between two summaries of the records held back


class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate`` per second; starts full unless told."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(
        self, rate: float, burst: float, *, tokens: float | None = None, last: float = 0.0
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst if tokens is None else tokens
        self.last = last

    def refill(self, now: float) -> bool:
        """Add what the time since the last refill earned; True when a whole token is there to
        spend. A ``now`` before the last refill (a capture's times need not be ordered) earns
        nothing and takes nothing back."""
        elapsed = now - self.last
        if elapsed > 0.0:
            tokens = self.tokens + elapsed * self.rate
            self.tokens = tokens if tokens < self.burst else self.burst
            self.last = now
        return self.tokens >= 1.0

    def take(self, now: float) -> bool:
        """Refill and spend one token: True when the thing may be done now.

        ``refill``'s arithmetic written out again, in locals: on the per-packet path of
        repeated records (``RepeatLimiter.allow``) that is a call less and no ``min``, about
        a third less time per record than calling ``refill`` (measured with timeit).
        """
        tokens = self.tokens
        elapsed = now - self.last
        if elapsed > 0.0:
            tokens += elapsed * self.rate
            tokens = tokens if tokens < self.burst else self.burst
            self.last = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True


class _KeyBucket(TokenBucket):
    """A key's bucket and how many of its records it held since the last summary."""

    __slots__ = ("held",)

    def __init__(self, rate: float, burst: float, tokens: float, last: float) -> None:
        super().__init__(rate, burst, tokens=tokens, last=last)
        self.held = 0


class RepeatLimiter:
    """Per-key token buckets plus a global one; counts what each key had suppressed."""

    def __init__(
        self,
        *,
        rate: float = 1.0,
        burst: float = 20.0,
        global_rate: float = 2000.0,
        global_burst: float = 5000.0,
        max_keys: int = 4096,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._keys: OrderedDict[object, _KeyBucket] = OrderedDict()
        self._global = TokenBucket(global_rate, global_burst)
        self.suppressed = 0  # held back since the last summary
        self.total_suppressed = 0

    def allow(self, key: object, now: float) -> bool:
        """True to write this record now; False holds it back (counted)."""
        entry = self._keys.get(key)
        bucket = self._global  # ``refill``, written out: a flood's every record asks
        elapsed = now - bucket.last
        if elapsed > 0.0:
            tokens = bucket.tokens + elapsed * bucket.rate
            bucket.tokens = tokens if tokens < bucket.burst else bucket.burst
            bucket.last = now
        if bucket.tokens < 1.0:
            # Past the overall rate (a flood: often a new key per record): held without
            # making an entry for a key not seen before, so a flood does not churn the keys.
            if entry is not None:
                entry.held += 1
            self.suppressed += 1
            self.total_suppressed += 1
            return False
        if entry is None:
            entry = self._new_entry(key, self.burst, now)
        else:
            self._keys.move_to_end(key)
        if not entry.take(now):
            self._hold(entry, 1)
            return False
        self._global.tokens -= 1.0
        return True

    def allow_pair(self, first: object, second: object, now: float) -> bool:
        """``allow`` for the key ``(first, second)``: the detector's record gate, called as
        ``gate(source, reason, now)``. Past the overall rate (a forged flood's records) it
        holds the record without a further call."""
        key = (first, second)
        bucket = self._global
        elapsed = now - bucket.last
        if elapsed > 0.0:
            tokens = bucket.tokens + elapsed * bucket.rate
            bucket.tokens = tokens if tokens < bucket.burst else bucket.burst
            bucket.last = now
        if bucket.tokens >= 1.0:
            return self.allow(key, now)
        entry = self._keys.get(key)
        if entry is not None:
            entry.held += 1
        self.suppressed += 1
        self.total_suppressed += 1
        return False

    def add_held(self, key: object, count: int) -> None:
        """Records held back elsewhere (the detector's muted sources) for the summary."""
        if count > 0:
            entry = self._keys.get(key)
            # A new key starts with a full bucket: its last refill was long ago.
            self._hold(entry if entry is not None else self._new_entry(key, 0.0, 0.0), count)

    def _new_entry(self, key: object, tokens: float, last: float) -> _KeyBucket:
        keys = self._keys
        if len(keys) >= self.max_keys:
            keys.popitem(last=False)
        entry = keys[key] = _KeyBucket(self.rate, self.burst, tokens, last)
        return entry

    def _hold(self, entry: _KeyBucket | None, count: int) -> None:
        if entry is not None:
            entry.held += count
        self.suppressed += count
        self.total_suppressed += count

    def summary(self) -> tuple[int, list[tuple[object, int]]]:
        """(records held back since the last call, the keys that held most, up to 5) — and reset."""
        held = sorted(((key, e.held) for key, e in self._keys.items() if e.held), key=_count)
        for entry in self._keys.values():
            entry.held = 0
        total, self.suppressed = self.suppressed, 0
        return total, held[:SUMMARY_TOP]


class Throttle:
    """At most ``rate`` sends at once and ``rate`` per ``window`` on average; what it refuses
    is counted by key, and a summary of it falls due one window after the first refusal."""

    def __init__(self, rate: int, window: float, max_keys: int = 1024) -> None:
        self.window = window
        self._bucket = TokenBucket(rate / window, float(rate))
        self._max_keys = max_keys
        self.held = 0
        self.keys: dict[str, int] = {}
        self.due: float | None = None  # when the summary of what was held is due

    def allow(self, now: float, key: str) -> bool:
        if self._bucket.take(now):
            return True
        self.held += 1
        if key in self.keys or len(self.keys) < self._max_keys:
            self.keys[key] = self.keys.get(key, 0) + 1
        self.schedule(now)
        return False

    def schedule(self, now: float) -> None:
        if self.due is None:
            self.due = now + self.window

    def take(self) -> tuple[int, list[tuple[str, int]]]:
        """(held since the last summary, the five keys held most) — and start over."""
        top = sorted(self.keys.items(), key=_count)[:SUMMARY_TOP]
        held, self.held, self.keys, self.due = self.held, 0, {}, None
        return held, top


def _count(item: tuple[object, int]) -> int:
    """Sort key: most held first (ties keep their order)."""
    return -item[1]
