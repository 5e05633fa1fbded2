"""Muted sources: the detector's short cut for a responded scanner's repeats. Pure.

A source already responded to whose "already blocked" record the record gate held back is
muted for ``MUTE_SECONDS``: its probes are only counted (the policy and the gate would answer
as before), so each repeat costs a few counter bumps instead of a tracker hit and a policy
check. The counts reach the source's tracked state (hits, kinds, last seen; its port evidence
stays as it was when it was muted) when the mute ends, or whenever that state is read.

The detector reads ``Mutes.by_proto`` and ``Mutes.kinds`` itself on the hot path (a muted
probe is counted in place, without a call); everything else about muting is here.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Final

from portsentinel.detect.settings import DetectorStats
from portsentinel.detect.track import Tracker
from portsentinel.model import Action, Reason, ScanKind

# Short, so a record still goes out a few times a second. A released source is unmuted at
# once; one the bounded responses list forgets stays muted until its mute ends.
MUTE_SECONDS: Final = 0.25
MUTED_CAP: Final = 4096


class Mute:
    """A muted source: until when, and its probes since the last fold into its state."""

    __slots__ = ("count", "kinds", "last", "until")

    def __init__(self, until: float, now: float) -> None:
        self.until = until
        self.count = 0
        self.kinds = 0  # KIND_BIT mask
        self.last = now


class Mutes:
    """The muted sources of each protocol, and the probes of muted sources per source since
    ``take_held`` was last called (their records were held back without asking the gate)."""

    __slots__ = ("_held_by_source", "_tracker", "by_proto", "fresh", "kinds")

    def __init__(self, tracker: Tracker, protos: tuple[int, ...]) -> None:
        self._tracker = tracker
        self.by_proto: dict[int, dict[bytes, Mute]] = {proto: {} for proto in protos}
        # Probes counted while muted, by kind: the detector adds them to its counters when
        # they are read, so the hot path bumps one dict entry instead of four counters.
        self.kinds: dict[ScanKind, int] = dict.fromkeys(ScanKind, 0)
        self._held_by_source: dict[bytes, int] = {}
        # (source, protocol) muted since ``take_fresh``: the daemon may quiet them in the kernel.
        self.fresh: list[tuple[bytes, int]] = []

    def mute(self, proto: int, src: bytes, now: float) -> None:
        """Mute ``src`` for ``proto`` from ``now`` on."""
        muted = self.by_proto[proto]
        if len(muted) >= MUTED_CAP:
            self._fold_all(muted)
            muted.clear()  # a flood of blocked sources only churns it
        muted[src] = Mute(now + MUTE_SECONDS, now)
        if len(self.fresh) < MUTED_CAP:
            self.fresh.append((src, proto))
        if len(self._held_by_source) >= MUTED_CAP:
            self._held_by_source.clear()  # only the per-source detail goes; the totals stay

    def count_held(self, src: bytes) -> None:
        """One probe of a muted source that was tracked at once (rules with state of their
        own see every probe), so it has nothing left to fold."""
        held = self._held_by_source
        held[src] = held.get(src, 0) + 1

    def fold(self, src: bytes, mute: Mute) -> None:
        """A muted source's counted probes into its state (hits, kinds, last seen: its port
        evidence stays as it was when it was muted) and into the held counts."""
        count = mute.count
        if not count:
            return
        state = self._tracker.get(src)
        if state is not None:  # else evicted meanwhile: the counters still have them
            state.hits += count
            state.kinds |= mute.kinds
            state.last_seen = max(state.last_seen, mute.last)
            if state.times is not None:
                state.times.extend(itertools.repeat(mute.last, min(count, state.times.maxlen or 0)))
        held = self._held_by_source
        held[src] = held.get(src, 0) + count
        mute.count = mute.kinds = 0

    def fold_source(self, src: bytes) -> None:
        """Bring ``src``'s counted probes into its state, leaving it muted (a read of it)."""
        for muted in self.by_proto.values():
            mute = muted.get(src)
            if mute is not None:
                self.fold(src, mute)

    def release(self, src: bytes) -> None:
        """Unmute ``src`` for every protocol, its counted probes folded in."""
        for muted in self.by_proto.values():
            mute = muted.pop(src, None)
            if mute is not None:
                self.fold(src, mute)

    def clear(self) -> None:
        """Unmute every source (what a muted source was spared may now be answered otherwise)."""
        for muted in self.by_proto.values():
            self._fold_all(muted)
            muted.clear()
        self.fresh.clear()

    def take_held(self) -> dict[bytes, int]:
        """Probes of muted sources per source since the last call: for the summary of held
        records."""
        for muted in self.by_proto.values():
            self._fold_all(muted)
        held, self._held_by_source = self._held_by_source, {}
        return held

    def take_fresh(self) -> list[tuple[bytes, int]]:
        """The (source, protocol) pairs muted since the last call."""
        fresh, self.fresh = self.fresh, []
        return fresh

    def counted_in(self, stats: DetectorStats) -> DetectorStats:
        """A copy of ``stats`` with the probes counted while muted added in, each as the
        "already blocked" ignored probe whose record was held back that it stands for.
        Nothing is written, so another thread may call it while the loop counts."""
        muted = dict(self.kinds)
        total = sum(muted.values())
        by_action = dict(stats.decisions_by_action)
        by_action[Action.IGNORED] += total
        by_reason = dict(stats.ignored_by_reason)
        by_reason[Reason.ALREADY_BLOCKED] += total
        return dataclasses.replace(
            stats,
            probes=stats.probes + total,
            probes_by_kind={kind: n + muted[kind] for kind, n in stats.probes_by_kind.items()},
            decisions_by_action=by_action,
            ignored_by_reason=by_reason,
            held=stats.held + total,
        )

    def _fold_all(self, muted: dict[bytes, Mute]) -> None:
        for src, mute in muted.items():
            self.fold(src, mute)
