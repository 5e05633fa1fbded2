"""The terms of a ban: how long it lasts, and whether it covers one address or its IPv6 prefix.

Decided here, beside the other decisions (thresholds, the ban budget), and applied by
``respond.bans.BanManager``, which asks the store for the counts these rules need and the
never-block set whether a prefix may be banned. Pure: counts, addresses and times in, a
decision out; no store, no backend, no clock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from portsentinel.detect.budget import SHORT_BAN


@dataclass(frozen=True, slots=True)
class BanTerms:
    """The settings the terms follow (BAN_DURATION, BAN_REPEAT_FACTOR, BAN_MAX_DURATION,
    BAN_REPEAT_WINDOW, IPV6_PREFIX_AFTER, IPV6_PREFIX_LEN, DECOY_BAN_DURATION); ``None``
    durations are permanent."""

    duration: float | None
    repeat_factor: float
    max_duration: float | None
    repeat_window: float
    prefix_after: int  # 0: never widen
    prefix_len: int
    decoy: float = 300.0  # DECOY_BAN_DURATION

    def as_decoy(self, seconds: float | None) -> float:
        """A ban of a decoy group's member without proof of its address: ``seconds`` (None:
        permanent), DECOY_BAN_DURATION at most."""
        return self.decoy if seconds is None else min(seconds, self.decoy)

    def repeat_since(self, now: float) -> float:
        """Bans that began after this time make a source a repeat offender."""
        return now - self.repeat_window

    def short(self) -> float:
        """A provisional ban's length (admitted while the ban budget was pressed, without a
        handshake): a first offence's, at most ``budget.SHORT_BAN`` (a permanent one too)."""
        first = self.duration
        return SHORT_BAN if first is None else min(first, SHORT_BAN)

    def length(self, earlier: int) -> tuple[float | None, int]:
        """(seconds, or None for permanent; this offence's number) for a source with
        ``earlier`` bans in the repeat window: each repeat lasts ``repeat_factor`` times the
        one before, up to ``max_duration`` (never below a first ban's length)."""
        base = self.duration
        if base is None:
            return None, earlier + 1
        seconds = base * self.repeat_factor**earlier
        cap = self.max_duration
        if cap is not None:
            seconds = min(seconds, max(cap, base))
        return seconds, earlier + 1

    def prefix_of(self, address: str) -> ipaddress.IPv6Network | None:
        """The prefix a ban of ``address`` could widen to; None for IPv4 or when widening is
        off. (An IPv6 scanner changes addresses within its /64 at will.)"""
        if self.prefix_after < 1 or ":" not in address:
            return None
        return ipaddress.IPv6Network(f"{address}/{self.prefix_len}", strict=False)

    def widen(self, banned_in_prefix: int, *, protected: Callable[[], bool]) -> int | None:
        """The prefix length to ban instead of the address, or None for the address alone.

        ``banned_in_prefix``: the addresses of the prefix banned already (this one not
        counted); once IPV6_PREFIX_AFTER of them, this one included, are, the whole prefix
        is. Never when the prefix holds a never-block address: ``protected()`` says so, asked
        only once the count is reached (it walks the whole never-block set).
        """
        if self.prefix_after < 1 or banned_in_prefix + 1 < self.prefix_after or protected():
            return None
        return self.prefix_len
