"""The ban budget: how many bans may start, and be in force, at once — ranked by evidence.

A flood of forged single-probe sources must neither fill the firewall nor use up the room a
real scanner needs. So bans come in three tiers:

- **broad**: the source probed at least ``BROAD_FACTOR`` x ``strong_ports`` distinct ports
  (20 by default), or completed a handshake with a bound port (a CONNECT: a forged source
  cannot complete one);
- **strong**: at least ``strong_ports`` distinct ports;
- **weak**: everything else (typically one forged SYN or UDP datagram).

Each tier has its own token bucket (``ratelimit.TokenBucket``, the project's one limiter),
so a lower tier can never spend a higher tier's tokens (a broad source may also take a strong
token when its own are spent); and weak bans may fill the active-ban cap only up to a reserve
that stays for strong ones. A source refused is judged again on its next probe, when its
evidence may be stronger.

Why three: forged SYNs can give a forged source five distinct ports cheaply. Measured in
``tests/e2e/test_flood_hostile.py`` (130,816 forged sources at the sender's maximum, each seen
about four times): once the daemon read more of the flood, enough forged sources reached five
ports to spend every strong token, and a real ``nmap -p 1-200`` scan in the flood was refused
until the flood ended. A forged source needs four times the packets to reach the broad tier,
and a real scan gets there within its first fraction of a second. A flood shaped to give its
sources twenty ports each still reaches it; that is issue 15's open question of a budget
forged packets cannot drain.
Pure: time is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from portsentinel.detect.track import KIND_BIT, SourceState
from portsentinel.model import ScanKind
from portsentinel.ratelimit import TokenBucket

_CONNECT_BIT: Final = KIND_BIT[ScanKind.CONNECT]
BROAD_FACTOR: Final = 4  # distinct ports for the broad tier, in units of strong_ports


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

    __slots__ = (
        "_active", "_broad", "_strong", "_weak", "_weak_active", "config", "refused", "weak_cap",
    )  # fmt: skip

    def __init__(self, config: BudgetConfig) -> None:
        self.config = config
        self._broad = TokenBucket(config.rate, float(config.burst))
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
        self._broad = TokenBucket(config.rate, float(config.burst))
        self._strong = TokenBucket(config.rate, float(config.burst))
        self._weak = TokenBucket(
            config.rate * config.weak_share, max(1.0, config.burst * config.weak_share)
        )
        self.weak_cap = max(1, int(config.max_active * config.weak_share))

    def broad(self, state: SourceState) -> bool:
        """The strongest evidence: ports far beyond a cheap forgery, or a handshake."""
        ports = self.config.strong_ports * BROAD_FACTOR
        return state.ports_seen >= ports or bool(state.kinds & _CONNECT_BIT)

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
        if full or not self._token(state, strong, now):
            self.refused += 1
            return False
        self._occupy(src, strong)
        return True

    def _token(self, state: SourceState, strong: bool, now: float) -> bool:
        if not strong:
            return self._weak.take(now)
        if self.broad(state) and self._broad.take(now):
            return True
        return self._strong.take(now)

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
