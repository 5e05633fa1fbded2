"""The never-block set in the running daemon: whole at every moment, asked at the last one, and
a ban on an address it comes to hold lifted at once.

Why: a forged SYN "from" a gateway added a moment ago, or from the peer of an SSH session
opened 0.2 s before, must not ban it; a periodic re-read alone leaves such a gap every time.

- Routes are followed as they change: the set's ``RouteWatcher`` sits in the loop's selector
  and is served before the capture in the same turn (``Pipeline.loop``), as is the address
  watcher, so a route added before a probe arrived protects its gateway from that probe. The
  periodic refresh stays as the safety net (a lost notification, the IPv6 router table,
  resolv.conf, SSH sessions that ended).
- SSH peers: not by events. conntrack's NEW/UPDATE groups report every flow of the host (a
  forged flood too) and cannot be narrowed to the SSH ports without a socket filter, and an
  event read after the ring in the same turn would still come too late. Instead the detector
  asks ``confirm`` just before it acts against a source. Where the response worker installed
  the table's observation chain (``block/table.py``), the kernel notes each SSH session's peer
  in a set from its first established packet, and one lookup answers (~20 us); until then,
  and whenever the set cannot answer (flushed), one sock_diag dump of the established
  connections to the SSH ports (~5 ms on a host with a large socket table: a daemon under a
  forged flood spent a fifth of its time there, and every first ban waited for it). Either
  holds a session from the moment its handshake completed. It is asked only for what the ban
  budget already admitted, so a flood of forged probes cannot turn into a flood of kernel
  queries. The set is used only after a periodic refresh that began once the chain was in
  place: a session that went idle before the chain existed is in that refresh.
- Whenever the set changes (a refresh, a reloaded ignore list, the allow list, a new SSH peer)
  the response worker is told (``Responder.protect``): it lifts every live ban that holds a
  protected address. At start-up the worker does the same before it re-applies anything.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from portsentinel.block.nfnetlink import SetReader
from portsentinel.block.nft_state import TABLE
from portsentinel.block.table import SSH4, SSH6
from portsentinel.detect.detector import Detector
from portsentinel.host.neverblock import Entry, NeverBlock
from portsentinel.networks import AddressSet, Network
from portsentinel.respond.worker import Responder


class Protection:
    """The loop's side of the never-block set: refreshes, events, the detector's last check,
    and the worker told of every change."""

    def __init__(self, never_block: NeverBlock, detector: Detector) -> None:
        self.never_block = never_block
        self.responder: Responder | None = None
        self._version = never_block.version
        self._peers: SetReader | None = None  # the kernel's set of SSH peers, once usable
        detector.set_never_block(never_block)
        detector.set_protect_check(self.confirm)

    def fileno(self) -> int | None:
        """The route watcher's socket; None when routes are only re-read periodically."""
        return self.never_block.fileno()

    def on_event(self) -> None:
        """The route watcher's socket is readable."""
        self.never_block.on_event()
        self._changed()

    def refresh(self) -> None:
        """Read every live source again (the timer, an address change)."""
        notes = self.responder is not None and self.responder.notes_ssh_peers
        self.never_block.refresh()
        if notes and self._peers is None:
            self._peers = SetReader(TABLE)  # the chain was there before this refresh began
            self._peers.prepare(SSH4, 4)
            self._peers.prepare(SSH6, 16)
        if self._peers is not None:
            self._peers.touch(SSH4, SSH6)
        self._changed()

    def _peer(self, packed: bytes) -> bool | None:
        peers = self._peers
        if peers is None:
            return None
        return peers.contains(SSH4 if len(packed) == 4 else SSH6, packed)

    def close(self) -> None:
        if self._peers is not None:
            self._peers.close()

    def set_ignore(self, ignore: AddressSet) -> None:
        self.never_block.set_ignore(ignore)
        self._changed()

    def set_allow(self, networks: Iterable[str]) -> None:
        self.never_block.set_allow(ipaddress.ip_network(n) for n in networks)
        self._changed()

    def confirm(self, packed: bytes) -> bool:
        """The detector's last check before acting against ``packed`` (``NeverBlock.confirm``)."""
        protected = self.never_block.confirm(packed, self._peer if self._peers else None)
        self._changed()
        return protected

    def protects(self, net: Network) -> bool:
        """Does ``net`` hold a never-block address? (Asked by the response worker before it
        widens an IPv6 ban to a prefix; reads the current set, which refreshes replace.)"""
        return any(
            n.version == net.version and n.overlaps(net)
            for n in self.never_block.addresses.networks
        )

    def entries(self) -> tuple[Entry, ...]:
        """The set as it is now, immutable: read by the response worker's thread."""
        return self.never_block.entries

    def _changed(self) -> None:
        version = self.never_block.version
        if version != self._version:
            self._version = version
            if self.responder is not None:
                self.responder.protect()
