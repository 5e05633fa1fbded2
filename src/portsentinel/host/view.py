"""What the detector must know about this host, kept fresh: its addresses, the ports in use
(sockets, and ports that NAT forwards to containers), and which packets answer flows the host
started (the kernel's connection tracking).

Each source is optional: one that cannot be opened is logged once and the daemon goes on
with less knowledge, never with a crash.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from portsentinel.errors import CaptureError
from portsentinel.host.addresses import AddressWatcher, dump_addresses
from portsentinel.host.conntrack import Conntrack
from portsentinel.host.inuse import InUseView, SocketTable
from portsentinel.host.natrules import NatForwarding, read_nat_rules
from portsentinel.model import Packet, Proto
from portsentinel.ratelimit import TokenBucket

# Conntrack is asked only for would-be probes, at most this often (a kernel round trip costs
# ~20 us); past the budget a packet is judged without it, and the skip is counted.
REPLY_CHECKS_PER_SECOND = 2000.0
REPLY_CHECK_BURST = 200

_ALL_PORTS = range(1, 65536)  # a frozenset of it costs 4 MiB; built only when NAT forwards all


class HostView:
    """Local addresses (a set the detector reads by reference), in-use views, reply check."""

    def __init__(self, log: Callable[[str], None], *, use_conntrack: bool = True) -> None:
        self._log = log
        self.local: set[bytes] = set()
        self._watcher: AddressWatcher | None = None
        try:
            self._watcher = AddressWatcher()  # open before the first dump: no change slips by
        except CaptureError as exc:
            log(
                f"adminalert: WARNING: cannot follow address changes ({exc}); "
                "re-reading them periodically"
            )
        self.refresh_addresses()
        self._table = SocketTable()
        self.in_use = {proto: InUseView(self._table, proto) for proto in Proto}
        self.nat = NatForwarding()
        self._conntrack: Conntrack | None = None
        if use_conntrack:
            try:
                self._conntrack = Conntrack()
            except CaptureError as exc:
                log(
                    f"adminalert: WARNING: connection tracking unavailable ({exc}); "
                    "late UDP replies to this host's own queries may be reported"
                )
        self._check_budget = TokenBucket(
            REPLY_CHECKS_PER_SECOND, REPLY_CHECK_BURST, last=time.monotonic()
        )
        self.reply_checks = 0
        self.reply_checks_skipped = 0
        self.reply_check_errors = 0

    # --- addresses --------------------------------------------------------------------------

    def watcher_fd(self) -> int | None:
        return self._watcher.fileno() if self._watcher is not None else None

    def on_address_event(self) -> bool:
        """The watcher's socket is readable: re-read the addresses if anything changed."""
        if self._watcher is not None and self._watcher.poll():
            self.refresh_addresses()
            return True
        return False

    def refresh_addresses(self) -> None:
        try:
            fresh = dump_addresses()
        except CaptureError as exc:
            self._log(f"adminalert: WARNING: cannot read this host's addresses: {exc}")
            return
        # Mutated in place: the detector holds this very set.
        self.local.intersection_update(fresh)
        self.local.update(fresh)

    # --- ports in use -----------------------------------------------------------------------

    def refresh_in_use(self) -> None:
        for view in self.in_use.values():
            try:
                view.refresh()
            except CaptureError as exc:
                self._log(f"adminalert: WARNING: cannot read the socket table: {exc}")

    def refresh_nat(self) -> None:
        """Ports that DNAT/REDIRECT forward are served without a local socket: in use."""
        nat = read_nat_rules(timeout=2.0)
        if nat.warnings != self.nat.warnings:
            for warning in nat.warnings:
                self._log(f"adminalert: WARNING: NAT rules: {warning}")
        self.nat = nat
        self.in_use[Proto.TCP].set_extra(_ALL_PORTS if nat.all_tcp else nat.tcp)
        self.in_use[Proto.UDP].set_extra(_ALL_PORTS if nat.all_udp else nat.udp)

    # --- replies to this host's own flows ---------------------------------------------------

    @property
    def tracks_replies(self) -> bool:
        return self._conntrack is not None

    def is_reply(self, pkt: Packet) -> bool:
        """Does this packet answer a flow the host started, or (a TCP SYN) open a connection
        the host has already accepted? (Never judged by port alone.)"""
        conntrack = self._conntrack
        if conntrack is None:
            return False
        if not self._check_budget.take(time.monotonic()):
            self.reply_checks_skipped += 1
            return False
        self.reply_checks += 1
        try:
            proto, src, dst, sport, dport, _flags, _ttl, _options, _frag = pkt
            if proto == Proto.TCP:
                return conntrack.lookup_accepted(proto, src, sport, dst, dport)
            return conntrack.lookup_reply(proto, src, sport, dst, dport)
        except CaptureError:
            self.reply_check_errors += 1
            return False

    def knows_flow(self, pkt: Packet) -> bool:
        """Does conntrack track this TCP segment's connection, either way? (For a segment it
        called invalid: a late or out-of-window one, no probe.) Without conntrack: no; an
        error: yes (a segment is not called a probe on a guess)."""
        conntrack = self._conntrack
        if conntrack is None:
            return False
        proto, src, dst, sport, dport, _flags, _ttl, _options, _frag = pkt
        try:
            return conntrack.lookup_reply(proto, src, sport, dst, dport) or (
                conntrack.lookup_accepted(proto, src, sport, dst, dport)
            )
        except CaptureError:
            return True

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
        if self._conntrack is not None:
            self._conntrack.close()
        self._table.close()
