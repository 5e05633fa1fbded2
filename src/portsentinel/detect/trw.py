"""Sequential scoring: Threshold Random Walk (Jung, Paxson, Berger, Balakrishnan, 2004). Pure.

Each *first contact* of a source with a (destination, protocol, port) is a trial: a success
when a socket uses the port (a SYN or datagram to it: the kernel completes the handshake or
hands the datagram over), a failure when none does (the probes the detector counts). A benign
host succeeds with probability theta0 (TRW_SUCCESS_BENIGN), a scanner with theta1
(TRW_SUCCESS_SCANNER). The likelihood ratio L starts at 1 and is multiplied by theta1/theta0
on a success and by (1-theta1)/(1-theta0) on a failure; the source is a scanner once
L >= beta/alpha and is cleared once L <= (1-beta)/(1-alpha), where alpha is the
false-positive target (TRW_FALSE_POSITIVE) and beta the detection target (TRW_DETECTION).
With the paper's values (0.01, 0.99, 0.8, 0.2) a failure multiplies L by 4 and a success by
1/4: four straight failures (L 256 >= 99) make a scanner, whatever time they are spread
over, and a single probe to a closed port (L 4) alerts nobody.

Differences from the paper, on purpose:
- A cleared source starts a new walk (L back to 1) instead of being exempt for good, so a
  client that turns to scanning is still caught; its earlier contacts stay first-contacted.
- Successes count only for a source that already has evidence (a failed contact since it was
  last idle): every client of a busy server would otherwise take a slot of the bounded
  tracker, and a flood of them could push a real scanner's evidence out. A source's walk thus
  starts at its first failure; successes before it are not counted, which can only make it
  flagged sooner, never later.
- Repeats to a port already contacted in the walk are no new trial (a client retrying).
- Once a source is flagged it stays flagged for as long as its evidence is tracked.
"""

from __future__ import annotations

import math
from typing import ClassVar, Final

from portsentinel.detect.rules import ScanTrigger
from portsentinel.detect.settings import DetectorConfig
from portsentinel.detect.track import SourceState
from portsentinel.model import ScanKind

MAX_CONTACTS: Final = 256
"""First contacts remembered per source walk; past it the oldest is forgotten (a repeat of
it would count again: only a source that contacted this many ports can get there)."""

_KEY: Final = "trw"
_MAX_LLR: Final = 709.78  # the largest log L a score shows: exp() of more overflows a float


class Walk:
    """One source's walk: log L, the trials it took and the keys already contacted."""

    __slots__ = ("contacted", "contacts", "flagged", "llr")

    def __init__(self) -> None:
        self.llr = 0.0
        self.contacts = 0
        self.flagged = False
        self.contacted: dict[tuple[bytes, int], None] = {}

    def first(self, dst: bytes, key: int) -> bool:
        """Note a contact; True when it is the first with this (destination, proto, port)."""
        contacted = self.contacted
        pair = (dst, key)
        if pair in contacted:
            return False
        if len(contacted) >= MAX_CONTACTS:
            del contacted[next(iter(contacted))]
        contacted[pair] = None
        return True


def walk_of(state: SourceState) -> Walk | None:
    """The walk kept in ``state`` (None before the rule saw the source)."""
    data = state.rule_data
    walk = data.get(_KEY) if data is not None else None
    return walk if isinstance(walk, Walk) else None


class SequentialTest:
    """SCAN_RULE="trw": fire when a source's likelihood ratio reaches beta/alpha."""

    __slots__ = ("_clear", "_fail", "_flag", "_success", "alpha", "beta", "theta0", "theta1")
    keeps_state: ClassVar[bool] = True  # every repeat is a trial to see (or skip)
    name: ClassVar[str] = "trw"
    times_needed: ClassVar[int] = 0

    def __init__(
        self,
        alpha: float = 0.01,
        beta: float = 0.99,
        theta0: float = 0.8,
        theta1: float = 0.2,
    ) -> None:
        if not 0 < alpha < beta < 1:
            raise ValueError("TRW needs 0 < false positive < detection < 1")
        if not 0 < theta1 < theta0 < 1:
            raise ValueError("TRW needs 0 < scanner success < benign success < 1")
        self.alpha, self.beta, self.theta0, self.theta1 = alpha, beta, theta0, theta1
        self._flag = math.log(beta / alpha)
        self._clear = math.log((1 - beta) / (1 - alpha))
        self._fail = math.log((1 - theta1) / (1 - theta0))
        self._success = math.log(theta1 / theta0)

    def observe(  # noqa: PLR0917 - plain positional values: called for every probe
        self, state: SourceState, proto: int, port: int, kind: ScanKind, dst: bytes, now: float
    ) -> bool:
        """A probe to a port no socket uses: a failure, when it is a first contact."""
        walk = self._walk(state)
        if walk.first(dst, proto << 16 | port):
            walk.contacts += 1
            walk.llr += self._fail
            if walk.llr >= self._flag:
                walk.flagged = True
        return walk.flagged

    def success(self, state: SourceState, proto: int, port: int, dst: bytes) -> None:
        """A SYN or datagram to a port in use: a success, when it is a first contact."""
        walk = self._walk(state)
        if walk.flagged or not walk.first(dst, proto << 16 | port):
            return
        walk.contacts += 1
        walk.llr += self._success
        if walk.llr <= self._clear:  # benign: a new walk starts
            walk.llr = 0.0
            walk.contacts = 0

    def score(self, state: SourceState) -> tuple[float, int] | None:
        """L and the trials of the current walk (None before the rule saw the source)."""
        walk = walk_of(state)
        if walk is None:
            return None
        # log L grows by log 4 with each failure, also once flagged: past ~709 (about 512
        # first contacts) exp() overflows; L is shown capped there instead (~1.79e308).
        return math.exp(min(walk.llr, _MAX_LLR)), walk.contacts

    @property
    def threshold(self) -> float:
        """L at which a source is a scanner: beta/alpha."""
        return self.beta / self.alpha

    @staticmethod
    def _walk(state: SourceState) -> Walk:
        data = state.rule_data
        if data is None:
            data = state.rule_data = {}
        walk = data.get(_KEY)
        if not isinstance(walk, Walk):
            walk = data[_KEY] = Walk()
        return walk


def scoring_rule(config: DetectorConfig) -> ScanTrigger | SequentialTest:
    """The rule SCAN_RULE names: PortSentry's trigger (with its window) or the TRW test."""
    if config.scan_rule == "trw":
        return SequentialTest(
            config.trw_false_positive,
            config.trw_detection,
            config.trw_success_benign,
            config.trw_success_scanner,
        )
    return ScanTrigger(config.scan_trigger, config.scan_window,
                       per_protocol=config.trigger_per_protocol)  # fmt: skip
