"""The never-block set: addresses no decision may act against, kept live as the host changes.

Why: an active response that blocks the wrong host does more harm than the scan it answers.
A scan can be forged from any source address, so an attacker picks the one whose loss hurts:
the default gateway, the DNS resolver, the admin's SSH session, the host itself. This set
holds all of them and the decision step refuses (and logs, with the reason) any response
against an address in it:

  the operator's allow list, the ignore list, every address of the host and the broadcast
  address of each local IPv4 network, the next hop of every route (all tables, multipath,
  nexthop objects) and every IPv6 router, the resolvers of resolv.conf (and, behind a local
  stub, systemd-resolved's upstream ones), optionally the peers of current SSH sessions, and
  the special ranges (loopback, link-local, multicast ...).

The live parts change (DHCP, VPNs, route daemons, logins), so ``refresh()`` reads them again;
the caller runs it on a timer and when a watcher reports a change: the ``AddressWatcher``, and
the set's own ``RouteWatcher`` (``for_host(watch=True)``: ``fileno()`` and ``on_event()``), so
a gateway is protected as soon as its route exists. SSH sessions are not followed by events:
``confirm()`` asks the kernel at the moment a response is about to be made (see there). A
source that fails keeps its previous answer: a failed read must never shrink the protection.
``x in never_block`` is one ``AddressSet`` probe (cheap, on the decision path); ``why()``
finds the reason for the log line only; ``covering()`` tells which bans hold a protected
address, from an immutable tuple of entries (another thread may ask it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Final, Protocol, TypeVar

from portsentinel import paths
from portsentinel.errors import CaptureError
from portsentinel.host.addresses import AddrInfo, RouteNetlink
from portsentinel.host.resolvconf import Resolvers, load_resolvers
from portsentinel.host.routes import RT_TABLE_MAIN, NextHops, Route, RouteWatcher, read_next_hops
from portsentinel.host.sshpeers import SshPeers
from portsentinel.networks import AddressSet, Network


class Source(StrEnum):
    """Where an entry of the set comes from, in the order ``why`` prefers them."""

    ALLOW = "allow"
    IGNORE = "ignore"
    HOST = "host"
    BROADCAST = "broadcast"
    GATEWAY = "gateway"
    RESOLVER = "resolver"
    SSH = "ssh"
    SPECIAL = "special"


# Ranges that are never a scanner worth blocking: traffic "from" them is forged or local.
SPECIAL_RANGES: Final[tuple[tuple[str, str], ...]] = (
    ("127.0.0.0/8", "loopback"),
    ("::1/128", "loopback"),
    ("0.0.0.0/8", "this network (0.0.0.0/8)"),
    ("::/128", "unspecified address"),
    ("169.254.0.0/16", "link-local"),
    ("fe80::/10", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("ff00::/8", "multicast"),
    ("255.255.255.255/32", "broadcast"),
)
_SPECIAL: Final = tuple((ipaddress.ip_network(net), reason) for net, reason in SPECIAL_RANGES)

T = TypeVar("T")

Entry = tuple[Network, str, Source]
"""One network of the set, the reason ``why`` gives for it, and its source."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the live sources said at the last refresh (each kept from an earlier one if its
    read failed)."""

    addresses: tuple[AddrInfo, ...] = ()
    next_hops: NextHops = field(default_factory=NextHops)
    resolvers: Resolvers = field(default_factory=lambda: Resolvers(""))
    ssh_peers: frozenset[bytes] = frozenset()


# --- the pure part: snapshot + static lists -> entries ----------------------------------------


def _host(packed: bytes) -> Network:
    if len(packed) == 4:
        return ipaddress.IPv4Network((packed, 32))
    return ipaddress.IPv6Network((packed, 128))


def route_reason(route: Route) -> str:
    """``gateway of route 198.18.9.0/24``, ``gateway of the default route (table 100)``."""
    what = "the default route" if route.is_default else f"route {route.destination_text()}"
    table = "" if route.table == RT_TABLE_MAIN else f" (table {route.table})"
    return f"gateway of {what}{table}"


def _broadcasts(addresses: Iterable[AddrInfo]) -> Iterator[Entry]:
    """The directed broadcast address of each local IPv4 network (none for /31 and /32)."""
    for info in addresses:
        if len(info.address) == 4 and info.prefixlen <= 30:
            net = ipaddress.IPv4Network((info.address, info.prefixlen), strict=False)
            reason = f"broadcast address of {net}"
            yield _host(net.broadcast_address.packed), reason, Source.BROADCAST


def _gateways(hops: NextHops) -> Iterator[Entry]:
    for route in hops.routes:
        reason = route_reason(route)
        for gateway in route.gateways:
            yield _host(gateway), reason, Source.GATEWAY
    for router in hops.routers:
        yield _host(router), "IPv6 router", Source.GATEWAY
    for obj in hops.objects:
        yield _host(obj.gateway), f"gateway of nexthop object {obj.nhid}", Source.GATEWAY


def build_entries(snapshot: Snapshot, ignore: AddressSet, allow: Sequence[Network]) -> list[Entry]:
    """Every network of the set with its reason, most telling reason first. Pure."""
    entries: list[Entry] = [(net, "allowed by operator", Source.ALLOW) for net in allow]
    entries += [(net, "ignore list", Source.IGNORE) for net in ignore.networks]
    entries += [(_host(a.address), "host address", Source.HOST) for a in snapshot.addresses]
    entries += _broadcasts(snapshot.addresses)
    entries += _gateways(snapshot.next_hops)
    for resolvers in snapshot.resolvers.files():  # resolv.conf, then a stub's upstream ones
        reason = f"DNS resolver in {resolvers.path}"
        entries += [(_host(packed), reason, Source.RESOLVER) for packed in resolvers.packed]
    entries += [(_host(peer), "SSH peer", Source.SSH) for peer in sorted(snapshot.ssh_peers)]
    entries += [(net, reason, Source.SPECIAL) for net, reason in _SPECIAL]
    return entries


def covering(
    entries: Sequence[Entry], targets: Iterable[tuple[T, Network]]
) -> Iterator[tuple[T, str]]:
    """Each target whose network holds an address of the set, with the most telling reason.

    Pure, and reads only its arguments: the response worker asks it (from its own thread)
    which bans to lift, with ``NeverBlock.entries`` as they were at that moment.
    """
    members = AddressSet(net for net, _reason, _source in entries)
    for item, net in targets:
        if net.num_addresses == 1:  # an address ban: one probe of the set
            if net.network_address.packed not in members:
                continue
        elif not any(n.version == net.version and n.overlaps(net) for n, _r, _s in entries):
            continue
        yield (
            item,
            next(
                reason for n, reason, _s in entries if n.version == net.version and n.overlaps(net)
            ),
        )


# --- the live sources --------------------------------------------------------------------------


class LiveSources(Protocol):
    """What ``NeverBlock`` reads on each refresh (``SystemSources``, or a fake in tests).

    Each method raises ``CaptureError`` when it cannot answer.
    """

    def addresses(self) -> Sequence[AddrInfo]: ...

    def next_hops(self) -> NextHops: ...

    def resolvers(self) -> Resolvers: ...

    def ssh_peers(self) -> Collection[bytes]: ...

    def close(self) -> None: ...


class SystemSources:
    """This host's live sources, in the current network namespace.

    One rtnetlink socket serves the address, route, neighbour and nexthop dumps; it is opened
    on first use and kept. ``ssh_ports`` empty: SSH peers are not protected.
    """

    def __init__(
        self,
        resolv_conf: str | None = None,
        ssh_ports: Iterable[int] = (),
        resolved_conf: str | None = None,
    ):
        """``resolv_conf`` None: ``paths.RESOLV_CONF``, ``resolved_conf`` None:
        ``paths.RESOLVED_CONF``, read now (the tests point them elsewhere)."""
        self.resolv_conf = resolv_conf if resolv_conf is not None else paths.RESOLV_CONF
        self.resolved_conf = resolved_conf if resolved_conf is not None else paths.RESOLVED_CONF
        ports = tuple(ssh_ports)
        self._ssh = SshPeers(ports) if ports else None
        self._rtnl: RouteNetlink | None = None

    def addresses(self) -> Sequence[AddrInfo]:
        return self._netlink().addresses()

    def next_hops(self) -> NextHops:
        return read_next_hops(self._netlink())

    def resolvers(self) -> Resolvers:
        return load_resolvers(self.resolv_conf, self.resolved_conf)

    def ssh_peers(self) -> Collection[bytes]:
        return self._ssh.peers() if self._ssh is not None else frozenset()

    def close(self) -> None:
        if self._rtnl is not None:
            self._rtnl.close()
            self._rtnl = None
        if self._ssh is not None:
            self._ssh.close()

    def _netlink(self) -> RouteNetlink:
        if self._rtnl is None:
            self._rtnl = RouteNetlink()
        return self._rtnl


# --- the set -------------------------------------------------------------------------------------


class NeverBlock:
    """The live never-block set: ``packed in nb`` on the decision path, ``nb.why(packed)`` for
    the log line. ``refresh()`` re-reads the live sources; ``set_ignore``/``set_allow``
    replace the static lists without reading anything.
    """

    def __init__(
        self,
        sources: LiveSources,
        *,
        ignore: AddressSet | None = None,
        allow: Iterable[Network] = (),
        warn: Callable[[str], None] | None = None,
        watcher: RouteWatcher | None = None,
    ) -> None:
        """``warn`` receives each warning once (again only after it went away and came back).
        ``watcher``: route changes to follow (opened before the first read, so that no change
        falls between the two); closed with the set."""
        self._sources = sources
        self._watcher = watcher
        self._ignore = ignore if ignore is not None else AddressSet()
        self._allow: tuple[Network, ...] = tuple(allow)
        self._warn = warn
        self._warned: frozenset[str] = frozenset()
        self._snapshot = Snapshot()
        self._entries: tuple[Entry, ...] = ()
        self._set = AddressSet()
        self._why: tuple[tuple[AddressSet, str], ...] | None = None
        self.refreshes = 0
        self.failures = 0
        """Source reads that failed (their previous answer was kept)."""
        self.version = 0
        """Counts the changes of the set (a caller compares it to notice one)."""
        self.refresh()

    @classmethod
    def for_host(
        cls,
        *,
        resolv_conf: str | None = None,
        ssh_ports: Iterable[int] = (),
        ignore: AddressSet | None = None,
        allow: Iterable[Network] = (),
        warn: Callable[[str], None] | None = None,
        resolved_conf: str | None = None,
        watch: bool = False,
    ) -> NeverBlock:
        """The set for this host's own sources (current network namespace); ``resolv_conf``
        None is ``paths.RESOLV_CONF`` (``resolved_conf``: ``paths.RESOLVED_CONF``). ``watch``:
        follow route changes (a daemon); one that cannot is warned about, and the caller's
        periodic refresh is all there is."""
        watcher = None
        if watch:
            try:
                watcher = RouteWatcher()
            except CaptureError as exc:
                if warn is not None:
                    warn(f"cannot follow route changes ({exc}); re-reading them periodically")
        sources = SystemSources(resolv_conf, ssh_ports, resolved_conf)
        return cls(sources, ignore=ignore, allow=allow, warn=warn, watcher=watcher)

    # -- the decision path --------------------------------------------------------------------
    def __contains__(self, packed: object) -> bool:
        return packed in self._set

    def contains_text(self, address: str) -> bool:
        return self._set.contains_text(address)

    def why(self, packed: bytes) -> str | None:
        """The reason ``packed`` may not be blocked, or None when it may. Off the hot path:
        the per-reason index is built on the first call after a change."""
        if packed not in self._set:
            return None
        if self._why is None:
            self._why = _reason_index(self._entries)
        for networks, reason in self._why:
            if packed in networks:
                return reason
        return None  # unreachable: every network of the set has a reason

    # -- views ----------------------------------------------------------------------------------
    @property
    def addresses(self) -> AddressSet:
        """The current set (replaced, not changed, by a refresh)."""
        return self._set

    @property
    def entries(self) -> tuple[Entry, ...]:
        return self._entries

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def counts(self) -> dict[Source, int]:
        """Networks per source, for the start-up line and the status verb."""
        found = dict.fromkeys(Source, 0)
        for _net, _reason, source in self._entries:
            found[source] += 1
        return found

    def __len__(self) -> int:
        return len(self._set)

    # -- changes --------------------------------------------------------------------------------
    def fileno(self) -> int | None:
        """The route watcher's socket, for the caller's selector; None: nothing to watch."""
        return self._watcher.fileno() if self._watcher is not None else None

    def on_event(self) -> bool:
        """The route watcher's socket is readable: refresh if a route changed; True when the
        set changed."""
        return self._watcher is not None and self._watcher.poll() and self.refresh()

    def confirm(self, packed: bytes, peer: Callable[[bytes], bool | None] | None = None) -> bool:
        """Is ``packed`` protected, asking the kernel now for the SSH sessions?

        Why at this moment: the peer of a session opened a moment ago is not in the set until
        the next refresh, and a forged SYN in between would ban the admin. The set is asked
        first; then ``peer`` when given (the daemon's nftables set of SSH peers, noted by the
        kernel as sessions send: ~20 us), and when it cannot tell, one sock_diag dump of the
        established connections to the SSH ports (~5 ms: the kernel walks its whole socket
        table), whose peers join the set. The caller asks only before it acts against a
        source (a ban, a command), so a flood of forged probes does not make the kernel
        queries: the ban budget bounds them. A failed read protects nothing new.
        """
        if packed in self._set:
            return True
        old = self._snapshot
        known = peer(packed) if peer is not None else None
        if known is not None:
            peers = frozenset({packed}) if known else frozenset()
        else:
            try:
                peers = frozenset(self._sources.ssh_peers())
            except CaptureError:
                self.failures += 1
                return False
        if packed not in peers:
            return False
        self._snapshot = replace(old, ssh_peers=old.ssh_peers | peers)
        self._rebuild()
        return True

    def refresh(self) -> bool:
        """Read every live source again; True when the set changed."""
        warnings: list[str] = []
        old = self._snapshot
        sources = self._sources
        addresses = self._read(
            "host addresses", lambda: tuple(sources.addresses()), old.addresses, warnings
        )
        hops = self._read("routes", sources.next_hops, old.next_hops, warnings)
        resolvers = self._read("resolv.conf", sources.resolvers, old.resolvers, warnings)
        peers = self._read(
            "SSH peers", lambda: frozenset(sources.ssh_peers()), old.ssh_peers, warnings
        )
        warnings += hops.warnings + resolvers.warnings
        self._snapshot = Snapshot(addresses, hops, resolvers, peers)
        self.refreshes += 1
        self._report(warnings)
        return self._rebuild()

    def set_ignore(self, ignore: AddressSet) -> bool:
        """A reloaded ignore list; True when the set changed."""
        self._ignore = ignore
        return self._rebuild()

    def set_allow(self, allow: Iterable[Network]) -> bool:
        """The operator's allow list as the store now holds it; True when the set changed."""
        self._allow = tuple(allow)
        return self._rebuild()

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
        self._sources.close()

    def _read(self, what: str, read: Callable[[], T], previous: T, warnings: list[str]) -> T:
        try:
            return read()
        except CaptureError as exc:
            self.failures += 1
            warnings.append(f"never-block set: cannot read {what} ({exc}); kept the last ones")
            return previous

    def _report(self, warnings: list[str]) -> None:
        fresh = frozenset(warnings)
        if self._warn is not None:
            for message in dict.fromkeys(warnings):
                if message not in self._warned:
                    self._warn(message)
        self._warned = fresh

    def _rebuild(self) -> bool:
        entries = tuple(build_entries(self._snapshot, self._ignore, self._allow))
        if entries == self._entries:
            return False
        self._entries = entries
        self._set = AddressSet(net for net, _reason, _source in entries)
        self._why = None
        self.version += 1
        return True


def _reason_index(entries: Iterable[Entry]) -> tuple[tuple[AddressSet, str], ...]:
    """One ``AddressSet`` per reason, in the order the reasons first appear (= priority)."""
    grouped: dict[str, list[Network]] = {}
    for net, reason, _source in entries:
        grouped.setdefault(reason, []).append(net)
    return tuple((AddressSet(nets), reason) for reason, nets in grouped.items())
