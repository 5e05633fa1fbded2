"""Rate limits for repetitive records, so a flood cannot fill the disk or starve the capture.

A blocked scanner keeps probing; a forged flood brings a new "source" per packet. Each line
and event costs the detection loop time, so repeats are limited per key (source and reason)
and overall, and what was held back is summarised — never dropped silently. Pure: time is an
argument.
"""

from __future__ import annotations

from collections import OrderedDict


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
        self.global_rate = global_rate
        self.global_burst = global_burst
        self.max_keys = max_keys
        self._keys: OrderedDict[object, list[float]] = OrderedDict()  # key -> [tokens, last, held]
        self._global = [global_burst, 0.0]
        self.suppressed = 0  # held back since the last summary
        self.total_suppressed = 0

    def allow(self, key: object, now: float) -> bool:
        """True to write this record now; False holds it back (counted)."""
        glob = self._global
        glob[0] = min(self.global_burst, glob[0] + (now - glob[1]) * self.global_rate)
        glob[1] = now
        entry = self._keys.get(key)
        if glob[0] < 1.0:
            # Past the overall rate (a flood: often a new key per record): held without
            # making an entry for a key not seen before, so a flood does not churn the keys.
            self._hold(entry, 1)
            return False
        if entry is None:
            entry = self._new_entry(key, self.burst, now)
        else:
            self._keys.move_to_end(key)
            entry[0] = min(self.burst, entry[0] + (now - entry[1]) * self.rate)
            entry[1] = now
        if entry[0] < 1.0:
            self._hold(entry, 1)
            return False
        entry[0] -= 1.0
        glob[0] -= 1.0
        return True

    def add_held(self, key: object, count: int) -> None:
        """Records held back elsewhere (the detector's muted sources) for the summary."""
        if count > 0:
            entry = self._keys.get(key)
            # A new key starts with a full bucket: its last refill was long ago.
            self._hold(entry if entry is not None else self._new_entry(key, 0.0, 0.0), count)

    def _new_entry(self, key: object, tokens: float, last: float) -> list[float]:
        keys = self._keys
        if len(keys) >= self.max_keys:
            keys.popitem(last=False)
        entry = keys[key] = [tokens, last, 0.0]
        return entry

    def _hold(self, entry: list[float] | None, count: int) -> None:
        if entry is not None:
            entry[2] += count
        self.suppressed += count
        self.total_suppressed += count

    def summary(self) -> tuple[int, list[tuple[object, int]]]:
        """(records held back since the last call, the keys that held most, up to 5) — and reset."""
        held = sorted(
            ((key, int(e[2])) for key, e in self._keys.items() if e[2]), key=lambda kv: -kv[1]
        )
        for entry in self._keys.values():
            entry[2] = 0.0
        total, self.suppressed = self.suppressed, 0
        return total, held[:5]
