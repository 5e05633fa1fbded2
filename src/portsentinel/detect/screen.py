"""The packets the detector may count as probes, judged by the packet alone. Pure.

``Detector.feed`` drops a packet at once, whatever it has seen before, when the packet is not a
probe's kind (TCP with ACK or RST) or goes to a port no stealth mode watches. ``ProbeScreen``
is that first judgement as plain tables, so that a caller going through many packets (the
replay's first pass, for every frame of a capture) can keep only the others without asking
the detector about each: calling the screen, or reading its tables inline as ``__call__``
does, says False only for packets ``feed`` would drop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from portsentinel.detect.classify import TCP_KIND
from portsentinel.model import Packet, Proto, ScanKind

_TCP = int(Proto.TCP)
_UDP = int(Proto.UDP)


@dataclass(frozen=True)
class ProbeScreen:
    """Watched ports as 64 KiB tables (``tcp[port] == 1``), the scan kind of each TCP flags
    byte (None: not a probe), and the protocols whose evasive fragments count."""

    tcp: bytearray
    udp: bytearray
    fragments: frozenset[int]
    kinds: tuple[ScanKind | None, ...] = field(default=TCP_KIND, repr=False)

    def __call__(self, pkt: Packet) -> bool:
        """False when ``feed`` drops this packet for what it is or where it goes."""
        proto, _src, _dst, _sport, port, flags, _ttl, _options, frag = pkt
        if frag:  # its flags cannot be trusted; a port it carries is checked later
            return proto in self.fragments
        if proto == _TCP:
            return self.tcp[port] == 1 and self.kinds[flags] is not None
        return proto == _UDP and self.udp[port] == 1
