"""The detector's readers and what the host tells it outside the hot path: the counters, the
held repeats, the ports in use lately (RECENTLY_IN_USE) and successes for the TRW walk.

A mix-in of ``Detector``: it adds no slots (the detector's hold the attributes, so it mixes
with other mix-ins), only methods that read them; kept apart so the detector's module stays
about the packets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from portsentinel.detect.mute import Mutes
from portsentinel.detect.recent import RecentPorts
from portsentinel.detect.settings import DetectorStats
from portsentinel.detect.track import Tracker
from portsentinel.detect.trw import SequentialTest
from portsentinel.model import Packet, Proto, Reason


class DetectorViews:
    """Methods of ``Detector`` that read its state; see the module."""

    __slots__ = ()
    _stats: DetectorStats
    _mutes: Mutes
    _tracker: Tracker
    _recent: dict[int, RecentPorts]
    _trw: SequentialTest | None

    def take_held(self) -> dict[bytes, int]:
        """Probes of muted sources per source since the last call (their records were held
        back without asking the gate): for the summary of held records."""
        return self._mutes.take_held()

    def fresh_probes(self) -> int:
        """Probes counted so far that were not repeats of a source already responded to (a
        cheap read for the daemon, which eases off while only repeats come in)."""
        stats = self._stats
        return stats.probes - stats.ignored_by_reason[Reason.ALREADY_BLOCKED]

    @property
    def stats(self) -> DetectorStats:
        """The counters as of now, as a copy with the muted repeats and the tracker's figures
        added in. Nothing is written, so another thread (the metrics endpoint) may read it
        while the loop counts; the figures are then at most a few probes apart."""
        tracker = self._tracker
        return dataclasses.replace(
            self._mutes.counted_in(self._stats),
            tracked_sources=len(tracker),
            sources_evicted=tracker.evicted,
            sources_expired=tracker.expired,
        )

    def note_in_use(self, proto: Proto, ports: Iterable[int], now: float) -> None:
        """The host view's ports in use at ``now``: a port no socket uses any more is still
        no target for RECENTLY_IN_USE seconds after it was last reported (a service
        restarting under clients that retry)."""
        self._recent[int(proto)].note(ports, now)

    def _success(self, pkt: Packet) -> None:
        """A SYN or datagram to a port in use, for TRW: counted only for a tracked source
        (see ``trw``: every client of a busy server would otherwise take a tracker slot)."""
        proto, src, dst, _sport, port, _flags, _ttl, _options, _frag = pkt
        state = self._tracker.get(src)
        if state is not None and self._trw is not None:
            self._trw.success(state, proto, port, dst)
