"""The ban budget: how many bans may start, and be in force, at once — ranked by evidence.

A flood of forged single-probe sources must neither fill the firewall nor use up the room a
real scanner needs. So bans come in two tiers:

- **strong**: the source probed at least ``strong_ports`` distinct ports, or completed a
  handshake with a bound port (a CONNECT: a forged source cannot complete one);
- **weak**: everything else (typically one forged SYN or UDP datagram).

Each tier has its own token bucket (``ratelimit.TokenBucket``, the project's one limiter),
so weak bans can never spend a strong ban's tokens; and
weak bans may fill the active-ban cap only up to a reserve that stays for strong ones. A
source refused while weak is judged again on its next probe, when its evidence may be strong.
Pure: time is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from portsentinel.detect.track import KIND_BIT, SourceState
from portsentinel.model import ScanKind
from portsentinel.ratelimit import TokenBucket

_CONNECT_BIT: Final = KIND_BIT[ScanKind.CONNECT]


@dataclass(frozen=True)
class BudgetConfig:
    max_active: int = 10000  # MAX_ACTIVE_BANS
    rate: float = 20.0  # BAN_RATE: new strong bans per second, sustained
    burst: int = 100  # BAN_BURST
    strong_ports: int = 5  # BAN_STRONG_PORTS
    weak_share: float = 0.5  # weak bans get this share of the rate, burst and cap

    def __post_init__(self) -> None:
        if self.max_active < 1 or self.burst < 1 or self.rate <= 0 or self.strong_ports < 1:
            raise ValueError("ban budget values must be positive")
        if not 0 < self.weak_share < 1:
            raise ValueError("weak_share must be between 0 and 1")


class BanBudget:
    """Admits or refuses a new ban; knows which bans are in force and in which tier."""

    __slots__ = ("_active", "_strong", "_weak", "_weak_active", "config", "refused", "weak_cap")

    def __init__(self, config: BudgetConfig) -> None:
        self.config = config
        self._strong = TokenBucket(config.rate, float(config.burst))
        self._weak = TokenBucket(
            config.rate * config.weak_share, max(1.0, config.burst * config.weak_share)
        )
        self.weak_cap = max(1, int(config.max_active * config.weak_share))
        self._active: dict[bytes, bool] = {}  # source -> strong?
        self._weak_active = 0
        self.refused = 0

    def reconfigure(self, config: BudgetConfig) -> None:
        """New limits; the bans in force keep their slots (they may exceed a lowered cap until
        they end)."""
        self.config = config
        self._strong = TokenBucket(config.rate, float(config.burst))
        self._weak = TokenBucket(
            config.rate * config.weak_share, max(1.0, config.burst * config.weak_share)
        )
        self.weak_cap = max(1, int(config.max_active * config.weak_share))

    def strong(self, state: SourceState) -> bool:
        """Strong evidence: many distinct ports, or a completed handshake."""
        return state.ports_seen >= self.config.strong_ports or bool(state.kinds & _CONNECT_BIT)

    def admit(self, src: bytes, state: SourceState, now: float) -> bool:
        """Take a ban slot for ``src`` if its tier allows; False refuses (counted)."""
        if src in self._active:
            return True
        strong = self.strong(state)
        full = len(self._active) >= self.config.max_active or (
            not strong and self._weak_active >= self.weak_cap
        )
        if full or not (self._strong if strong else self._weak).take(now):
            self.refused += 1
            return False
        self._occupy(src, strong)
        return True

    def restore(self, src: bytes, strong: bool) -> None:
        """A ban already in force (restored at start-up) occupies its slot."""
        self.release(src)
        self._occupy(src, strong)

    def release(self, src: bytes) -> None:
        strong = self._active.pop(src, None)
        if strong is False:
            self._weak_active -= 1

    def _occupy(self, src: bytes, strong: bool) -> None:
        self._active[src] = strong
        if not strong:
            self._weak_active += 1

    @property
    def active(self) -> int:
        return len(self._active)
