"""Per-source evidence with hard bounds, so spoofed floods cannot grow memory or CPU time.

Every cap is a setting: sources tracked (the least recently seen one is evicted at the cap),
ports and destinations remembered per source, hit times kept (only when a window needs them).
Idle sources expire in O(expired): the sources sit in least-recently-seen order, so expiry
stops at the first one still active. That order assumes non-decreasing ``now`` values, which
monotonic time and sorted captures give.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Final

from portsentinel.model import ScanKind

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
    """Bounded map of source address -> SourceState in least-recently-seen order."""

    __slots__ = (
        "_keep_times",
        "_max_dsts",
        "_max_ports",
        "_max_sources",
        "_sources",
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
        self._sources: OrderedDict[bytes, SourceState] = OrderedDict()
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
        return len(self._sources)

    def __contains__(self, src: object) -> bool:
        return src in self._sources

    def resize(
        self,
        *,
        max_sources: int,
        max_ports: int,
        max_dsts: int,
        keep_times: int,
        idle_timeout: float,
    ) -> None:
        """New caps (a reloaded configuration): the least recently seen sources beyond the new
        cap are evicted; the others keep their evidence (hit times within the new bound)."""
        if min(max_sources, max_ports, max_dsts) < 1 or keep_times < 0:
            raise ValueError("tracker caps must be positive")
        self._max_sources = max_sources
        self._max_ports = max_ports
        self._max_dsts = max_dsts
        self.idle_timeout = idle_timeout
        sources = self._sources
        while len(sources) > max_sources:
            sources.popitem(last=False)
            self.evicted += 1
        if keep_times != self._keep_times:
            self._keep_times = keep_times
            for state in sources.values():
                old = state.times or ()
                state.times = deque(old, maxlen=keep_times) if keep_times else None

    def get(self, src: bytes) -> SourceState | None:
        return self._sources.get(src)

    def hit(  # noqa: PLR0917 - plain positional values: called for every probe
        self, src: bytes, proto: int, port: int, kind: ScanKind, dst: bytes, now: float
    ) -> SourceState:
        """Record one probe from ``src`` and return its updated state."""
        sources = self._sources
        state = sources.get(src)
        key = proto << 16 | port  # evidence_key, inline: called for every probe
        if state is None:
            if len(sources) >= self._max_sources:
                sources.popitem(last=False)
                self.evicted += 1
            state = sources[src] = SourceState(now, dst, self._keep_times, key)
        else:
            sources.move_to_end(src)
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

    def _add_dst(self, state: SourceState, dst: bytes) -> None:
        dsts = state.dsts
        if dsts is None:
            dsts = state.dsts = {state.first_dst}
        if len(dsts) < self._max_dsts:
            dsts.add(dst)

    def expire(self, now: float) -> int:
        """Forget sources idle for longer than ``idle_timeout``; returns how many."""
        if self.idle_timeout <= 0:
            return 0
        sources = self._sources
        horizon = now - self.idle_timeout
        count = 0
        while sources:
            src = next(iter(sources))
            if sources[src].last_seen >= horizon:
                break
            del sources[src]
            count += 1
        self.expired += count
        return count

    def forget(self, src: bytes) -> None:
        """Drop a source's evidence (nothing happens for an unknown source)."""
        self._sources.pop(src, None)
