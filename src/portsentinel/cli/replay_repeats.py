"""``replay`` without ``--every-probe``: a source's repeats summarised as the live daemon
summarises them, on the capture's clock.

The daemon without an events stream gives the detector a record gate (``daemon/outputs``): an
ignored probe (a blocked scanner's next one, a refused source's) becomes a record only while
its source and reason are within the repeat limiter's rate, 20 at once and one a second after
that; the rest are counted, the source is muted, and every SUMMARY_EVERY seconds one line says
how many were held back and whose. A full-range scan is then a block and a score of records,
not 65,000. Every probe is still counted; ``--every-probe`` takes the gate away.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from portsentinel.detect.detector import Detector
from portsentinel.model import Reason, addr_text
from portsentinel.ratelimit import SUMMARY_EVERY, RepeatLimiter


@dataclass(frozen=True)
class Held:
    """The records held back over one stretch of the capture."""

    time: float  # the stretch's end (capture time)
    seconds: float  # its length
    count: int
    top: tuple[tuple[str, str, int], ...]  # (source, reason, records), most first, up to five


class Repeats:
    """The record gate of one replay; what it held back goes to ``summarise`` once a stretch
    of SUMMARY_EVERY capture seconds ends, and at the end of the capture."""

    def __init__(
        self,
        detector: Detector,
        summarise: Callable[[Held], None],
        limiter: RepeatLimiter | None = None,
    ) -> None:
        self._detector = detector
        self._summarise = summarise
        self._limiter = limiter if limiter is not None else RepeatLimiter()
        self._since: float | None = None
        self.due = -math.inf  # capture time of the next summary; the first packet starts one
        detector.set_record_gate(self._gate)

    def _gate(self, src: bytes, reason: Reason, now: float) -> bool:
        return self._limiter.allow((src, reason), now)

    def next_stretch(self, now: float) -> None:
        """At the first packet at or past ``due``: summarise the stretch that ended at ``due``;
        the next one starts at ``now``."""
        if self._since is not None:
            self._held(self.due, SUMMARY_EVERY)
        self._since, self.due = now, now + SUMMARY_EVERY

    def finish(self, end: float) -> None:
        """After the last packet (at ``end``): summarise the last stretch."""
        if self._since is not None:
            end = max(end, self._since)
            self._held(end, end - self._since)

    def _held(self, time: float, seconds: float) -> None:
        limiter = self._limiter
        for src, count in self._detector.take_held().items():  # the muted sources' probes
            limiter.add_held((src, Reason.ALREADY_BLOCKED), count)
        count, top = limiter.summary()
        if count:
            named = tuple((_source(key), _reason(key), n) for key, n in top)
            self._summarise(Held(time, seconds, count, named))


def _source(key: object) -> str:
    src = key[0] if isinstance(key, tuple) else key
    return addr_text(src) if isinstance(src, bytes) else str(src)


def _reason(key: object) -> str:
    reason = key[1] if isinstance(key, tuple) and len(key) > 1 else ""
    return reason.value if isinstance(reason, Reason) else str(reason)
