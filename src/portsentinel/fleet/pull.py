"""Pull: the fleet's decisions into this host's fleet sets (``block/fleet_sets``).

Every ``CROWDSEC_POLL_INTERVAL`` the stream gives what is new and deleted since this key's last
pull; every ``CROWDSEC_RESYNC_INTERVAL`` (and at start, and after a failure) the whole list
(``startup=true``) replaces what the store knows, since LAPI 1.4.6's time-based cursor can
miss a decision for good and never sends a longer one for an address it sent already. The
store keeps each decision (``fleet_decisions``) and what this host does with it; ``reconcile``
turns that into the sets' elements, each with the longest remaining time of its address:

- ``refused``: the never-block set holds the address (this host, its gateways, resolvers, SSH
  peers, ``allow``): never applied, said once;
- ``dismissed``: ``unblock --local`` lifted it here;
- ``own``: this host's own live ban lasts at least as long (its own bans come back this way);
- ``applied``: everything else.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from portsentinel.block.fleet_sets import FleetSets
from portsentinel.fleet import alerts
from portsentinel.fleet.lapi import Lapi
from portsentinel.host.neverblock import Entry, covering
from portsentinel.store.fleet import FleetDecision
from portsentinel.store.sqlite import Store

Log = Callable[[str], None]
SLACK = 2.0  # seconds: a local ban ending this much earlier still covers a decision


@dataclass
class PullStats:
    pulls: int = 0
    resyncs: int = 0
    received: int = 0  # decisions the stream brought (new)
    deleted: int = 0
    refused: int = 0  # addresses refused (never-block set), counted once each
    applied: int = 0  # addresses in the fleet sets now
    last_pull: float | None = None
    last_error: str | None = None


class Puller:
    """See the module docstring."""

    def __init__(
        self, store: Store, lapi: Lapi, sets: FleetSets, *,
        protection: Callable[[], Sequence[Entry]], log: Log,
    ) -> None:  # fmt: skip
        self.store = store
        self.lapi = lapi
        self.sets = sets
        self.protection = protection
        self.log = log
        self.kernel: dict[str, float] = {}  # address -> until, as written to the sets
        self.stats = PullStats()
        self._refused_said: set[str] = set()

    def pull(self, now: float, *, full: bool) -> None:
        new, deleted = self.lapi.stream(startup=full)
        decisions = [d for d in (alerts.decision_of(raw, now) for raw in new) if d is not None]
        gone = [i for i in (alerts.deleted_id(raw) for raw in deleted) if i is not None]
        self.store.fleet_decisions_merge(decisions, gone, now=now, complete=full)
        self.stats.pulls += 1
        self.stats.resyncs += full
        self.stats.received += len(decisions)
        self.stats.deleted += len(gone)
        self.stats.last_pull = now
        self.reconcile(now, full=full)

    def reconcile(self, now: float, *, full: bool = False) -> None:
        """The sets made to match the store's decisions, this host's bans and the
        never-block set as they are now."""
        rows = [d for d in self.store.fleet_decisions() if d.until > now]
        addresses = {d.address for d in rows}
        own = self.store.live_bans_for(addresses) if addresses else {}
        refused = self._refused(addresses)
        wanted: dict[str, float] = {}
        changes: list[tuple[int, str, str]] = []
        for d in rows:
            if d.state == "dismissed":
                continue
            state, note = self._treatment(d, own.get(d.address), refused)
            if (state, note) != (d.state, d.note):
                changes.append((d.id, state, note))
            if state == "applied":
                wanted[d.address] = max(wanted.get(d.address, 0.0), d.until)
        if changes:
            self.store.fleet_decisions_mark(changes)
        put = {a: u - now for a, u in wanted.items()
               if full or abs(self.kernel.get(a, 0.0) - u) > SLACK}  # fmt: skip
        remove = set(self.kernel) - set(wanted)
        if full or put or remove:
            self.sets.apply(put, remove, full=full)
        self.kernel = wanted
        self.stats.applied = len(wanted)

    def _treatment(
        self, d: FleetDecision, local: object, refused: dict[str, str]
    ) -> tuple[str, str]:
        why = refused.get(d.address)
        if why is not None:
            if d.address not in self._refused_said:
                self._refused_said.add(d.address)
                self.stats.refused += 1
                self.log(f"adminalert: fleet decision on {d.address} ({d.origin}, {d.scenario}) "
                         f"refused: never-block set ({why})")  # fmt: skip
            return "refused", why
        expires = getattr(local, "expires", 0.0)
        if local is not None and (expires is None or expires >= d.until - SLACK):
            return "own", ""
        return "applied", ""

    def _refused(self, addresses: set[str]) -> dict[str, str]:
        entries = self.protection()
        if not entries or not addresses:
            return {}
        targets = ((a, ipaddress.ip_network(a)) for a in addresses)
        return dict(covering(entries, targets))

    def clear(self) -> None:
        """The fleet turned off: its sets go."""
        self.sets.remove()
        self.kernel = {}
