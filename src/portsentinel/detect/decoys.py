"""Decoys: several sources probing the same ports at the same moment are one event. Pure.

``nmap -D decoy1,decoy2,ME`` sends every probe once from each address of its list, back to
back: the target sees the same port probed from all of them within microseconds, port after
port. Only one of them is the scanner; the others are addresses it chose, perhaps to get
them banned. So sources whose probes keep landing on the same (destination, protocol, port)
within ``WINDOW`` seconds of each other are linked, and linked sources form a group:

- a pair is linked at once when two of its probes are copies of one: the same port from the
  same source port within ``COPY_WINDOW`` seconds (nmap's copies share the source port, the
  sequence number and the IPv4 ID). This matters live: a source is banned on its first probe
  and its later probes are dropped at ingress, before the capture sees them
  (``block/ingress.py``), so the first round is all the daemon sees of a fast decoy scan;
- otherwise a pair is linked once it co-occurred on ``SHARED`` probes or more, and on at
  least ``SHARE`` of the probes of the one of them that sent fewer (decoy copies co-occur on
  every probe; two independent scanners that happen to scan the same host at once share a
  few ports, not most of them): for a tool that varies the source port of its copies, seen
  when its first round does not end in bans (a trigger above 0, BLOCK_TCP 0, a slow scan
  whose bans wait for the evidence floor);
- groups merge when a member of one links with a member of another.

What a group changes is decided by the detector: a member without proof of its address (no
completed handshake, see ``budget``) is banned for DECOY_BAN_DURATION at most, and a ban made
before its group showed is cut to that length.

What the wire says about each member's claim to its address is kept as evidence, never used
to decide (see docs/detection.md, "Decoys"): the TTL (hop limit) of its probes in the group,
the TTL of the traffic it sent before (connections to ports in use, a minute or more before
its first probe), and whether every member's probes carry one TTL, or come from one source
port (copies of one probe: nmap gives each copy its own random TTL, but one source port).

Bounded under floods of forged sources: ``MAX_SLOTS`` ports watched for co-occurrence, each
remembering its last ``SLOT_SOURCES`` sources; ``MAX_SOURCES`` per-source counts and
``MAX_PAIRS`` pair counts, each table forgotten whole when full (a flood of random sources
only churns them); a group holds ``MAX_MEMBERS`` members at most.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

WINDOW: Final = 0.5  # seconds: "the same moment" (nmap sends a probe's copies within us)
COPY_WINDOW: Final = 0.1  # seconds: copies of one probe from one source port
SHARED: Final = 2  # co-occurring probes that link a pair
SHARE: Final = 0.5  # ... and this share of the probes of the pair's quieter source
SLOT_SOURCES: Final = 8  # sources remembered per (destination, protocol, port)
MAX_SLOTS: Final = 4096
MAX_SOURCES: Final = 65536
MAX_PAIRS: Final = 65536
MAX_MEMBERS: Final = 64
MAX_GROUPS: Final = 4096
TTLS_KEPT: Final = 4  # distinct TTLs remembered per member
EARLIER: Final = 60.0  # seconds before a source's first probe that traffic is "earlier"

Slot = tuple[int, int, bytes]  # (protocol, port, destination)


@dataclass(slots=True)
class _Pair:
    count: int = 0  # co-occurrences on distinct slots in a row
    last: Slot | None = None  # the slot of the last one (a retransmission counts once)


@dataclass(slots=True)
class Member:
    """One source of a group, with what the wire showed of it."""

    src: bytes
    ttls: list[int] = field(default_factory=list)  # its probes' TTLs since it joined
    sports: list[int] = field(default_factory=list)  # ... and their source ports
    earlier_ttl: int | None = None  # the TTL of its traffic before it joined, if any
    cut: bool = False  # the detector asked for its ban to be cut (once)

    def note(self, ttl: int, sport: int) -> None:
        if ttl not in self.ttls and len(self.ttls) < TTLS_KEPT:
            self.ttls.append(ttl)
        if sport not in self.sports and len(self.sports) < TTLS_KEPT:
            self.sports.append(sport)

    @property
    def ttl_agrees(self) -> bool | None:
        """Do its probes' TTLs match its earlier traffic's? None: no earlier traffic seen."""
        if self.earlier_ttl is None or not self.ttls:
            return None
        return self.ttls == [self.earlier_ttl]


@dataclass(slots=True)
class Group:
    """Sources that probed the same ports at the same moments: one event."""

    number: int
    formed: float
    members: dict[bytes, Member] = field(default_factory=dict)
    changed: bool = True  # members joined since the detector last looked

    @property
    def one_ttl(self) -> bool:
        """Every member's probes carry one and the same TTL: stamped by one sender."""
        seen = {ttl for m in self.members.values() for ttl in m.ttls}
        return len(seen) == 1

    @property
    def one_source_port(self) -> bool:
        """Every member's probes come from one and the same source port: copies of one
        probe (nmap's decoys share it, with the sequence number and the IPv4 ID)."""
        seen = {sport for m in self.members.values() for sport in m.sports}
        return len(seen) == 1

    def evidence(self, member: bytes) -> dict[str, object]:
        """What the wire showed of ``member``'s claim to its address, for its ban record."""
        m = self.members[member]
        return {
            "group": self.number,
            "probe_ttls": list(m.ttls),
            "earlier_ttl": m.earlier_ttl,
            "ttl_agrees": m.ttl_agrees,
            "one_ttl": self.one_ttl,
            "one_source_port": self.one_source_port,
        }


class DecoyGroups:
    """See the module docstring. ``see`` is called for every confirmed probe."""

    __slots__ = ("_groups", "_number", "_of", "_pairs", "_probes", "_slots", "_ttls", "formed")

    def __init__(self) -> None:
        # Per slot: (time, source, TTL, source port) of its last sources.
        self._slots: dict[Slot, list[tuple[float, bytes, int, int]]] = {}
        self._probes: dict[bytes, list[float]] = {}  # per source: [probes, first probe's time]
        self._ttls: dict[bytes, tuple[int, float]] = {}  # per source: its last (TTL, time) heard
        self._pairs: dict[tuple[bytes, bytes], _Pair] = {}
        self._of: dict[bytes, Group] = {}
        self._groups: dict[int, Group] = {}
        self._number = 0
        self.formed = 0  # groups formed so far (a counter)

    def __len__(self) -> int:
        return len(self._groups)

    def group_of(self, src: bytes) -> Group | None:
        return self._of.get(src)

    def heard(self, src: bytes, ttl: int, now: float) -> None:
        """Traffic from ``src`` that is no probe (a connection to a port in use): its TTL is
        the "earlier traffic" a later group's probes are held against, when it came EARLIER
        seconds or more before the source's first probe (a scan's own SYNs to open ports come
        with its probes)."""
        ttls = self._ttls
        if len(ttls) >= MAX_SOURCES:
            ttls.clear()
        ttls[src] = (ttl, now)

    def _earlier_ttl(self, src: bytes) -> int | None:
        heard, first = self._ttls.get(src), self._probes.get(src)
        if heard is None or first is None or heard[1] > first[1] - EARLIER:
            return None
        return heard[0]

    def see(  # noqa: PLR0917 - plain values: called for every probe
        self, src: bytes, proto: int, port: int, dst: bytes, ttl: int, now: float, sport: int = 0
    ) -> Group | None:
        """A confirmed probe. Returns the source's group, if it has one."""
        probes = self._probes
        seen = probes.get(src)
        if seen is None:
            if len(probes) >= MAX_SOURCES:
                probes.clear()
            seen = probes[src] = [0, now]
        seen[0] += 1
        count = int(seen[0])
        key = (proto, port, dst)
        slots = self._slots
        slot = slots.get(key)
        if slot is None:
            if len(slots) >= MAX_SLOTS:
                del slots[next(iter(slots))]  # the oldest port watched
            slot = slots[key] = []
        since = now - WINDOW
        if slot and slot[0][0] < since:
            slot[:] = [entry for entry in slot if entry[0] >= since]
        group = self._of.get(src)
        present = False
        copies = now - COPY_WINDOW
        for when, other, other_ttl, other_sport in slot:
            if other == src:
                present = True
                continue
            copy = sport != 0 and other_sport == sport and when >= copies
            if self._co_occurred(src, other, key, count) or copy:
                group = self._link(src, other, now)
                joined = group.members.get(other)
                if joined is not None:
                    joined.note(other_ttl, other_sport)
        if not present:
            slot.append((now, src, ttl, sport))
            if len(slot) > SLOT_SOURCES:
                del slot[0]
        if group is not None:
            member = group.members.get(src)
            if member is not None:
                member.note(ttl, sport)
        return group

    def _co_occurred(self, a: bytes, b: bytes, key: Slot, count: int) -> bool:
        """Count one co-occurrence of ``a`` and ``b`` on ``key``; True once they are linked."""
        pair = (a, b) if a < b else (b, a)
        pairs = self._pairs
        entry = pairs.get(pair)
        if entry is None:
            if len(pairs) >= MAX_PAIRS:
                pairs.clear()
            entry = pairs[pair] = _Pair()
        if entry.last == key:
            return False  # a retransmission on the same port counts once
        entry.last = key
        entry.count += 1
        shared = entry.count
        other = self._probes.get(b)
        quieter = min(count, int(other[0]) if other is not None else 0)
        return shared >= SHARED and shared >= SHARE * quieter

    def _link(self, a: bytes, b: bytes, now: float) -> Group:
        """``a`` and ``b`` in one group: a new one, one joining the other's, or two merged."""
        of = self._of
        ga, gb = of.get(a), of.get(b)
        if ga is not None and ga is gb:
            return ga
        if ga is None and gb is None:  # a new group
            groups = self._groups
            if len(groups) >= MAX_GROUPS:
                self._drop(groups[next(iter(groups))])
            self._number += 1
            self.formed += 1
            group = groups[self._number] = Group(self._number, now)
        elif ga is None or gb is None:  # one joins the other's
            group = _either(ga, gb)
        else:  # two groups merged
            group, other = (ga, gb) if len(ga.members) >= len(gb.members) else (gb, ga)
            for src, member in other.members.items():
                if len(group.members) < MAX_MEMBERS:
                    group.members[src] = member
                    of[src] = group
                else:
                    del of[src]
            del self._groups[other.number]
        for src in (b, a):  # the one seen first, first
            if src not in group.members and len(group.members) < MAX_MEMBERS:
                group.members[src] = Member(src, earlier_ttl=self._earlier_ttl(src))
                of[src] = group
                group.changed = True
        return group

    def _drop(self, group: Group) -> None:
        for src in group.members:
            self._of.pop(src, None)
        del self._groups[group.number]


def _either(a: Group | None, b: Group | None) -> Group:
    if a is not None:
        return a
    if b is None:
        raise ValueError("no group")
    return b
