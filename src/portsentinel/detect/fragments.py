"""Evasive IP fragments (``nmap -f``): judged like probes whatever flags they claim.

A first fragment too short to hold the transport header, or a later one whose offset lands
inside it (RFC 1858), hides the flags and perhaps the ports: ACK/RST cannot excuse it. Mixed
into ``Detector``; adds no slots.
"""

from __future__ import annotations

from collections.abc import Callable, Container

from portsentinel.detect.decoys import DecoyGroups, Group
from portsentinel.detect.settings import DetectorStats
from portsentinel.model import Decision, Packet, Proto, ScanKind

_TCP = int(Proto.TCP)


class Fragments:
    """``Detector._feed_fragment``; see the module."""

    __slots__ = ()
    _stats: DetectorStats
    _stealth: dict[int, bool]
    _watch_tcp: bytearray | bytes
    _watch_udp: bytearray | bytes
    _in_use_tcp: Container[int]
    _in_use_udp: Container[int]
    _recheck_tcp: Callable[[int], bool] | None
    _recheck_udp: Callable[[int], bool] | None
    _local: Container[bytes] | None
    _decoys: DecoyGroups
    _grouped: Callable[[Group, float], None]  # Grouping's (a stub here would shadow it)

    def _probe(self, pkt: Packet, kind: ScanKind, now: float) -> list[Decision]:
        raise NotImplementedError

    def _feed_fragment(self, pkt: Packet, now: float) -> list[Decision]:
        """An evasive fragment: its flags cannot be trusted, so ACK/RST do not excuse it.

        A fragment without ports counts for any stealth mode of its protocol; one that
        carries its destination port goes through the usual port checks.
        """
        proto, src, dst, sport, port, _flags, ttl, _options, _frag = pkt
        stats = self._stats
        if not self._stealth.get(proto, False):
            stats.unwatched += 1
            return []
        if port:
            watch = self._watch_tcp if proto == _TCP else self._watch_udp
            if not watch[port]:
                stats.unwatched += 1
                return []
            tcp = proto == _TCP
            recheck = self._recheck_tcp if tcp else self._recheck_udp
            if port in (self._in_use_tcp if tcp else self._in_use_udp) or (
                recheck is not None and recheck(port)
            ):
                stats.in_use += 1
                return []
        local = self._local
        if local is not None and dst not in local:
            stats.not_local += 1
            return []
        group = self._decoys.see(src, proto, port, dst, ttl, now, sport)
        if group is not None and group.fresh:  # members joined: see ``Group.changed``
            self._grouped(group, now)
        return self._probe(pkt, ScanKind.FRAGMENT, now)
