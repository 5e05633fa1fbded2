"""Per-source evidence with hard bounds, so spoofed floods cannot grow memory or CPU time.

Every cap is a setting: sources tracked (two generations, see ``Tracker``), ports and
destinations remembered per source, hit times kept (only when a window needs them). Eviction
and idle expiry drop a whole generation at once, so neither walks the sources. ``now`` values
are assumed non-decreasing, as monotonic time and sorted captures give.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from typing import Final

from portsentinel.model import ScanKind

DST_CANON_CAP: Final = 1024
"""Destination addresses kept as one shared object each (this host's few addresses); past
this many distinct ones (a replay of foreign traffic) the table starts over."""

KIND_BIT: Final[dict[ScanKind, int]] = {kind: 1 << i for i, kind in enumerate(ScanKind)}
"""One bit per scan kind, for the ``kinds`` mask of a source."""


def kinds_of(mask: int) -> list[ScanKind]:
    """The scan kinds set in a ``kinds`` mask, in ScanKind order."""
    return [kind for kind, bit in KIND_BIT.items() if mask & bit]


def evidence_key(proto: int, port: int) -> int:
    """The key of a (protocol, port) pair in ``SourceState.ports``."""
    return proto << 16 | port


class SourceState:
    """What one source did while tracked; a few hundred bytes, whatever it sends.

    ``ports`` lists distinct (proto, port) keys (``evidence_key``), newest last, capped. Most
    sources (a forged flood's, a single probe's) have one: it is kept inline in ``port`` and a
    dict is made only for a second key, which saves ~200 bytes a source at the tracker's cap.
    ``times`` holds the most recent hit times, only when a scoring window needs them.
    ``rule_data`` is for scoring rules that keep per-source state of their own (a TRW score,
    say); it is created by the rule on first use and freed with the source.
    """

    __slots__ = (
        "dsts",
        "first_dst",
        "first_seen",
        "hits",
        "kinds",
        "last_seen",
        "more",
        "port",
        "rule_data",
        "times",
    )

    def __init__(self, now: float, dst: bytes, keep_times: int, key: int) -> None:
        self.first_seen = now
        self.last_seen = now
        self.hits = 0
        self.kinds = 0
        self.port = key  # the only key while ``more`` is None
        self.more: dict[int, None] | None = None
        self.times: deque[float] | None = deque(maxlen=keep_times) if keep_times else None
        # One destination is the common case; a set is made only for a second one.
        self.first_dst = dst
        self.dsts: set[bytes] | None = None
        self.rule_data: dict[str, object] | None = None

    @property
    def destinations(self) -> int:
        """Distinct destination addresses seen (capped by the tracker)."""
        return 1 if self.dsts is None else len(self.dsts)

    @property
    def ports(self) -> list[int]:
        """The distinct (proto, port) keys remembered, oldest first (capped by the tracker)."""
        return [self.port] if self.more is None else list(self.more)

    @property
    def ports_seen(self) -> int:
        """Distinct (proto, port) pairs remembered (capped by the tracker)."""
        return 1 if self.more is None else len(self.more)


class Tracker:
    """Bounded map of source address -> SourceState, kept in two generations.

    New sources go into the young generation; when it is full (half the cap) the old one is
    dropped whole (its sources counted as evicted) and the young one becomes old. A source
    seen again while old moves back into the young generation, so a source keeps its
    evidence for at least half the cap's worth of new sources after its last probe. Next to
    an exact least-recently-seen order this costs no per-hit reordering and about half the
    memory at the cap under a flood: no linked order, and whole tables freed at once.

    Idle expiry works the same way in time: ``expire`` drops the old generation once it has
    been old for longer than ``idle_timeout`` (each source in it was last seen before then),
    then the young one becomes old. So a source is forgotten between one and two idle
    timeouts after its last probe, never sooner; and its stale evidence is never counted:
    a source idle for longer than the timeout starts afresh on its next probe.
    """

    __slots__ = (
        "_dsts",
        "_keep_times",
        "_max_dsts",
        "_max_ports",
        "_old",
        "_old_cap",
        "_rotated_at",
        "_stale_after",
        "_young",
        "_young_cap",
        "evicted",
        "expired",
        "idle_timeout",
    )

    def __init__(
        self,
        *,
        max_sources: int,
        max_ports: int,
        max_dsts: int,
        keep_times: int = 0,
        idle_timeout: float = 0.0,
    ) -> None:
        """``keep_times`` 0 keeps no hit times; ``idle_timeout`` <= 0 never expires sources."""
        self._young: dict[bytes, SourceState] = {}
        self._old: dict[bytes, SourceState] = {}
        self._rotated_at = -math.inf  # when the old generation became old
        # Every decoded packet brings its own copy of the destination address: a source's
        # state keeps a shared one instead (~50 bytes a source at the cap).
        self._dsts: dict[bytes, bytes] = {}
        self._keep_times = keep_times
        self.evicted = 0
        self.expired = 0
        self.resize(
            max_sources=max_sources,
            max_ports=max_ports,
            max_dsts=max_dsts,
            keep_times=keep_times,
            idle_timeout=idle_timeout,
        )

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    def __contains__(self, src: object) -> bool:
        return src in self._young or src in self._old

    def resize(
        self,
        *,
        max_sources: int,
        max_ports: int,
        max_dsts: int,
        keep_times: int,
        idle_timeout: float,
    ) -> None:
        """New caps (a reloaded configuration): sources beyond the new cap are evicted, the
        old generation first; the others keep their evidence (hit times within the new
        bound)."""
        if min(max_sources, max_ports, max_dsts) < 1 or keep_times < 0:
            raise ValueError("tracker caps must be positive")
        self._young_cap = max(1, (max_sources + 1) // 2)
        self._old_cap = max_sources - self._young_cap
        self._max_ports = max_ports
        self._max_dsts = max_dsts
        self.idle_timeout = idle_timeout
        self._stale_after = idle_timeout if idle_timeout > 0 else math.inf
        # Beyond the new caps: the oldest entries go, the old generation first. (Rebuilt, not
        # deleted one by one from the front, which costs a scan per deletion.)
        before = len(self)
        if len(self._young) > self._young_cap:
            self._young = _newest(self._young, self._young_cap)
        if len(self) > max_sources:
            self._old = _newest(self._old, max_sources - len(self._young))
        self.evicted += before - len(self)
        young, old = self._young, self._old
        if keep_times != self._keep_times:
            self._keep_times = keep_times
            for generation in (young, old):
                for state in generation.values():
                    kept = state.times or ()
                    state.times = deque(kept, maxlen=keep_times) if keep_times else None

    def get(self, src: bytes) -> SourceState | None:
        """The state of ``src`` if tracked (one idle past the timeout may still be here)."""
        state = self._young.get(src)
        return state if state is not None else self._old.get(src)

    def hit(  # noqa: PLR0917 - plain positional values: called for every probe
        self, src: bytes, proto: int, port: int, kind: ScanKind, dst: bytes, now: float
    ) -> SourceState:
        """Record one probe from ``src`` and return its updated state."""
        young = self._young
        state = young.get(src)
        key = proto << 16 | port  # evidence_key, inline: called for every probe
        if state is None and src not in self._old:  # a new source (a forged flood's each one)
            if len(young) >= self._young_cap:
                young = self._rotate(now)
            dsts = self._dsts  # ``_shared``, inline
            shared = dsts.get(dst)
            if shared is None:
                if len(dsts) >= DST_CANON_CAP:
                    dsts.clear()
                shared = dsts[dst] = dst
            state = young[src] = SourceState(now, shared, self._keep_times, key)
            state.hits = 1
            state.kinds = KIND_BIT[kind]
            if state.times is not None:
                state.times.append(now)
            return state
        if state is None or now - state.last_seen > self._stale_after:
            state = self._enter(src, key, dst, now)
        state.last_seen = now
        if dst != state.first_dst:
            self._add_dst(state, dst)
        more = state.more
        if more is not None:
            # Re-inserting moves a key to the end, so the oldest evidence goes first.
            if more.pop(key, 0) is not None and len(more) >= self._max_ports:
                del more[next(iter(more))]
            more[key] = None
        elif key != state.port:
            if self._max_ports == 1:
                state.port = key
            else:
                state.more = {state.port: None, key: None}
        state.hits += 1
        state.kinds |= KIND_BIT[kind]
        if state.times is not None:
            state.times.append(now)
        return state

    def _enter(self, src: bytes, key: int, dst: bytes, now: float) -> SourceState:
        """A source not in the young generation (or stale in it): put there, back from the
        old one or new; one whose evidence went stale starts afresh."""
        young = self._young
        state = young.pop(src, None)
        if state is None:
            state = self._old.pop(src, None)
        if state is not None and now - state.last_seen > self._stale_after:
            state = None
            self.expired += 1
        if len(young) >= self._young_cap:
            young = self._rotate(now)
        if state is None:
            state = SourceState(now, self._shared(dst), self._keep_times, key)
        young[src] = state
        return state

    def _rotate(self, now: float) -> dict[bytes, SourceState]:
        """The old generation goes (counted as evicted), the young one becomes old (cut to
        the old one's share of the cap, which is one less for an odd cap)."""
        young = self._young
        self.evicted += len(self._old)
        while len(young) > self._old_cap:  # at most once: young_cap - old_cap <= 1
            del young[next(iter(young))]
            self.evicted += 1
        self._old, self._young = young, {}
        self._rotated_at = now
        return self._young

    def _shared(self, dst: bytes) -> bytes:
        """The one kept copy of ``dst`` (made on first sight)."""
        dsts = self._dsts
        shared = dsts.get(dst)
        if shared is None:
            if len(dsts) >= DST_CANON_CAP:
                dsts.clear()
            shared = dsts[dst] = dst
        return shared

    def _add_dst(self, state: SourceState, dst: bytes) -> None:
        dsts = state.dsts
        if dsts is None:
            dsts = state.dsts = {state.first_dst}
        if len(dsts) < self._max_dsts and dst not in dsts:
            dsts.add(self._shared(dst))

    def expire(self, now: float) -> int:
        """Forget the old generation once it has been old for longer than ``idle_timeout``
        (each of its sources idle that long); the young one then becomes old. Returns how
        many were forgotten."""
        if self.idle_timeout <= 0:
            return 0
        count = 0
        old = self._old
        if old and now - self._rotated_at > self.idle_timeout:
            count = len(old)
            self.expired += count
            old = self._old = {}
        if not old and self._young:
            self._rotate(now)
        return count

    def forget(self, src: bytes) -> None:
        """Drop a source's evidence (nothing happens for an unknown source)."""
        if self._young.pop(src, None) is None:
            self._old.pop(src, None)


def _newest(generation: dict[bytes, SourceState], keep: int) -> dict[bytes, SourceState]:
    """The ``keep`` most recently entered sources of a generation."""
    if keep <= 0:
        return {}
    return dict(itertools.islice(generation.items(), len(generation) - keep, None))
