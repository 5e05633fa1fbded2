"""ACK-bearing probes: segments known to open no connection, judged like any probe.

The capture's kernel filter keeps every segment with ACK away from the daemon (they are the
bulk of established traffic), so ACK, Window and Maimon scans (nmap -sA, -sW, -sM) reach it
by another way: the kernel's connection tracking sees a TCP segment without SYN that belongs
to no connection it knows as ``ct state new``, and a rule in the daemon's table hands exactly
those to it (``block/table.py``, ``capture/nflog.py``); in ``replay``, the capture itself shows
that no packet of the flow came before. ``feed_unsolicited`` classifies them with
``classify.UNSOLICITED_KIND``, then asks what ``feed`` asks (the kernel's rule already asked its
socket table: a segment to a port a socket uses, a listener or a connection older than the
daemon's tracking, never comes here). Mixed into ``Detector``.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import Final

from portsentinel.detect.classify import UNSOLICITED_KIND
from portsentinel.detect.decoys import DecoyGroups, Group
from portsentinel.detect.mute import Mute, Mutes
from portsentinel.detect.recent import RecentPorts
from portsentinel.detect.settings import DetectorStats
from portsentinel.detect.track import KIND_BIT
from portsentinel.model import ACK, Decision, Packet, Proto, ScanKind

_TCP: Final = int(Proto.TCP)


class Unsolicited:
    """``Detector.feed_unsolicited``; see the module docstring."""

    __slots__ = ()
    _stats: DetectorStats
    _watch_tcp: bytearray | bytes
    _in_use_tcp: Container[int]
    _recent: dict[int, RecentPorts]
    _local: Container[bytes] | None
    _muted: dict[int, dict[bytes, Mute]]
    _muted_kinds: dict[ScanKind, int]
    _mutes: Mutes
    _stateful_rules: tuple[object, ...]
    _decoys: DecoyGroups
    _grouped: Callable[[Group, float], None]  # Grouping's (a stub here would shadow it)

    def _probe(self, pkt: Packet, kind: ScanKind, now: float) -> list[Decision]:
        raise NotImplementedError

    def _held(self, pkt: Packet, kind: ScanKind, now: float) -> list[Decision]:
        raise NotImplementedError

    def feed_unsolicited(self, pkt: Packet, now: float) -> list[Decision]:
        """Judge a TCP segment with ACK that opens no connection (see the module)."""
        _proto, src, dst, sport, port, flags, ttl, _options, frag = pkt
        stats = self._stats
        stats.packets += 1
        kind = UNSOLICITED_KIND[flags]
        if kind is None or frag or _proto != _TCP or not flags & ACK:
            stats.not_probe += 1
            return []
        if not self._watch_tcp[port]:
            stats.unwatched += 1
            return []
        if port in self._in_use_tcp:
            stats.in_use += 1
            return []
        if port in self._recent[_TCP].seen:  # a restarting service's clients' late segments
            stats.recently_in_use += 1
            return []
        local = self._local
        if local is not None and dst not in local:
            stats.not_local += 1
            return []
        group = self._decoys.see(src, _TCP, port, dst, ttl, now, sport)
        if group is not None and group.fresh:  # members joined: see ``Group.changed``
            self._grouped(group, now)
        muted = self._muted[_TCP]
        mute = muted.get(src) if muted else None
        if mute is not None:
            if now < mute.until:
                if self._stateful_rules:
                    return self._held(pkt, kind, now)
                mute.count += 1
                mute.kinds |= KIND_BIT[kind]
                mute.last = now
                self._muted_kinds[kind] += 1
                return []
            self._mutes.fold(src, mute)
            del muted[src]
        return self._probe(pkt, kind, now)
