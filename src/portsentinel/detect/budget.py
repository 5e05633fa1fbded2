"""The ban budget: how many bans may start, and be in force, at once — ranked by evidence.

A flood of forged sources must neither fill the firewall nor use up the room a real scanner
needs. So bans are ranked in tiers of evidence, each with its own token bucket
(``ratelimit.TokenBucket``, the project's one limiter):

- **proof**: the source completed a handshake with a bound port (a CONNECT): a forged source
  cannot, so no flood of forged packets can spend this tier's tokens;
- **ports**, ``PORT_TIERS`` of them: at least ``strong_ports`` distinct ports (5 by default),
  then twice that, four times, eight times and more (5-9, 10-19, 20-39, 40+): a source shows
  a tier's ports or more;
- **weak**: everything else (typically one forged SYN or UDP datagram), with half the rate and
  burst, and only up to a share of the active-ban cap: the rest stays for stronger bans.

A source spends a token of its own tier or, when that is spent, of any tier below it: never
of one above. A source refused is judged again on its next probe, when its evidence may be
stronger, and the first probe after a token comes back takes it; so within a tier tokens go
to sources in proportion to how often they probe.

While the budget is pressed (a bucket fell below ``PRESSURE_LEVEL`` of its burst, or
refused, in the last ``PRESSURE_HOLD`` seconds: with the defaults, ten new bans in a tier in
half a second, which is what a forged flood looks like; one scanner takes one token),
a ban admitted without a handshake is *provisional*: it lasts at most ``SHORT_BAN``, whatever
BAN_DURATION and the source's earlier bans say. The flood's chosen addresses then get short
bans; a real scanner among them is banned as fast, for less long, and banned again if it
comes back.

What a forged flood can do, measured in ``tests/e2e/test_flood_shapes.py``: to keep a real
scan that shows P ports from its ban, the flood's forged sources must each show about P/2
distinct ports or more, and probe as often as the scanner does, for as long as the scanner
goes on; every token they win bans an address they chose (at most ``rate`` per second in each
tier they reach, within MAX_ACTIVE_BANS, never one in the never-block set). A flood shaped
exactly like nmap from many addresses cannot be told from many real scans: the daemon then
bans them at the budget's rate, and a real scan among them waits its share of the tokens.
Pure: time is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from portsentinel.detect.track import KIND_BIT, SourceState
from portsentinel.model import ScanKind
from portsentinel.ratelimit import TokenBucket

_CONNECT_BIT: Final = KIND_BIT[ScanKind.CONNECT]
PORT_TIERS: Final = 4  # strong_ports x 1, 2, 4, 8 and more
WEAK: Final = -1  # tier of a source with too few ports and no handshake
PROOF: Final = PORT_TIERS  # tier of a completed handshake
PRESSURE_HOLD: Final = 60.0  # seconds the budget stays "pressed" after a bucket ran low
PRESSURE_LEVEL: Final = 0.9  # a bucket below this share of its burst presses the budget
SHORT_BAN: Final = 600.0  # the longest a ban without a handshake lasts while pressed


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
        "_active", "_pressed_until", "_tiers", "_weak", "_weak_active", "config", "refused",
        "weak_cap",
    )  # fmt: skip

    def __init__(self, config: BudgetConfig) -> None:
        self._active: dict[bytes, bool] = {}  # source -> strong?
        self._weak_active = 0
        self._pressed_until = float("-inf")
        self.refused = 0
        self.reconfigure(config)

    def reconfigure(self, config: BudgetConfig) -> None:
        """New limits; the bans in force keep their slots (they may exceed a lowered cap until
        they end)."""
        self.config = config
        # One bucket per port tier, then the proof tier's.
        self._tiers = [TokenBucket(config.rate, float(config.burst)) for _ in range(PROOF + 1)]
        self._weak = TokenBucket(
            config.rate * config.weak_share, max(1.0, config.burst * config.weak_share)
        )
        self.weak_cap = max(1, int(config.max_active * config.weak_share))

    def tier(self, state: SourceState) -> int:
        """``PROOF`` for a handshake, else the port tier (0 .. PORT_TIERS - 1), or ``WEAK``."""
        if state.kinds & _CONNECT_BIT:
            return PROOF
        ports, need = state.ports_seen, self.config.strong_ports
        if ports < need:
            return WEAK
        tier = 0
        while tier < PORT_TIERS - 1 and ports >= need << (tier + 1):
            tier += 1
        return tier

    def strong(self, state: SourceState) -> bool:
        """Strong evidence: many distinct ports, or a completed handshake."""
        return self.tier(state) != WEAK

    def admit(self, src: bytes, state: SourceState, now: float) -> bool:
        """Take a ban slot for ``src`` if its tier allows; False refuses (counted)."""
        active = self._active
        if src in active:
            return True
        ports = 1 if state.more is None else len(state.more)  # ``ports_seen``, inline
        if state.kinds & _CONNECT_BIT or ports >= self.config.strong_ports:
            return self._admit_strong(src, state, now)
        # The weak tier (a forged flood's every source): its own bucket.
        bucket = self._weak
        full = len(active) >= self.config.max_active or self._weak_active >= self.weak_cap
        if full or not bucket.take(now):
            self.refused += 1
            self._pressed_until = now + PRESSURE_HOLD
            return False
        if bucket.tokens < bucket.burst * PRESSURE_LEVEL:
            self._pressed_until = now + PRESSURE_HOLD
        self._occupy(src, False)
        return True

    def _admit_strong(self, src: bytes, state: SourceState, now: float) -> bool:
        """``admit`` for a source of a port tier or the proof tier (never ``WEAK``)."""
        if len(self._active) >= self.config.max_active or not self._token(self.tier(state), now):
            self.refused += 1
            self._pressed_until = now + PRESSURE_HOLD
            return False
        self._occupy(src, True)
        return True

    def provisional(self, state: SourceState, now: float) -> bool:
        """Is a ban admitted now for ``state`` provisional (short: see the module)?"""
        return now < self._pressed_until and self.tier(state) != PROOF

    def _token(self, tier: int, now: float) -> bool:
        """A token of ``tier`` or, that being spent, of the nearest tier below that has one;
        a bucket left below ``PRESSURE_LEVEL`` of its burst presses the budget."""
        buckets = [self._weak] if tier == WEAK else self._tiers[tier::-1]
        for bucket in buckets:
            if bucket.take(now):
                if bucket.tokens < bucket.burst * PRESSURE_LEVEL:
                    self._pressed_until = now + PRESSURE_HOLD
                return True
        return False

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
