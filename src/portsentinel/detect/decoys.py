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
- otherwise a pair is linked once it co-occurred on ``SHARED`` probes or more, counted from a
  source's second probe on (so a flood of forged sources, one probe each, costs no count at
  all), and on at least ``SHARE`` of the probes of the one of them that sent fewer (decoy
  copies co-occur on
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
it joined), and whether every member's probes carry one TTL, or come from one source
port (copies of one probe: nmap gives each copy its own random TTL, but one source port).

Bounded under floods of forged sources: ``MAX_SLOTS`` ports watched for co-occurrence, each
remembering its last ``SLOT_SOURCES`` sources (copies of one probe come back to back, so a
chain of links joins them all); ``MAX_SOURCES`` per-source counts and ``MAX_PAIRS`` pair
counts; each table forgotten whole when full (a flood of random sources only churns them);
``MAX_GROUPS`` groups of ``MAX_MEMBERS`` members at most, and ``MAX_GROUPED`` members in all
(the oldest group dropped first: a forged flood from one source port joins every source).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

WINDOW: Final = 0.5  # seconds: "the same moment" (nmap sends a probe's copies within us)
COPY_WINDOW: Final = 0.1  # seconds: copies of one probe from one source port
SHARED: Final = 2  # co-occurring probes that link a pair
SHARE: Final = 0.5  # ... and this share of the probes of the pair's quieter source
SLOT_SOURCES: Final = 3  # sources remembered per (destination, protocol, port)
MAX_SLOTS: Final = 4096
MAX_SOURCES: Final = 65536
MAX_PAIRS: Final = 65536
MAX_MEMBERS: Final = 64
MAX_GROUPS: Final = 4096
MAX_GROUPED: Final = 16384  # members of all groups together (a flood fills groups of 64)
TTLS_KEPT: Final = 4  # distinct TTLs remembered per member
EARLIER: Final = 60.0  # seconds before a source joined its group that traffic is "earlier"

Slot = tuple[int, int, bytes]  # (protocol, port, destination)


class Member:
    """One source of a group, with what the wire showed of it. (A plain class, its values in
    tuples: one is made per source that joins, and a forged flood from one source port joins
    every source, up to the caps.)"""

    __slots__ = ("cut", "earlier_ttl", "sports", "src", "ttls")

    def __init__(self, src: bytes, earlier_ttl: int | None = None) -> None:
        self.src = src
        self.ttls: tuple[int, ...] = ()  # its probes' TTLs since it joined
        self.sports: tuple[int, ...] = ()  # ... and their source ports
        self.earlier_ttl = earlier_ttl  # the TTL of its traffic before it joined, if any
        self.cut = False  # the detector asked for its ban to be cut (once)

    def __repr__(self) -> str:
        return f"Member({self.src!r}, ttls={self.ttls}, sports={self.sports})"

    @property
    def ttl_agrees(self) -> bool | None:
        """Do its probes' TTLs match its earlier traffic's? None: no earlier traffic seen."""
        if self.earlier_ttl is None or not self.ttls:
            return None
        return self.ttls == (self.earlier_ttl,)


_SINGLES: dict[int, tuple[int]] = {}
"""One-value tuples, shared by the members that saw one value each (a forged flood's all carry
one TTL and one source port): about 180 bytes a member less than two lists of their own."""
_SINGLES_MAX: Final = 4096


def _added(values: tuple[int, ...], value: int) -> tuple[int, ...]:
    """``values`` with ``value`` after them (a shared tuple for a first value)."""
    if values:
        return (*values, value)
    single = _SINGLES.get(value)
    if single is None:
        single = (value,)
        if len(_SINGLES) < _SINGLES_MAX:
            _SINGLES[value] = single
    return single


@dataclass(slots=True)
class Group:
    """Sources that probed the same ports at the same moments: one event."""

    number: int
    formed: float
    members: dict[bytes, Member] = field(default_factory=dict)
    fresh: list[bytes] = field(default_factory=list)  # joined since the detector looked
    texts: tuple[str, ...] = ()  # the first members' names, kept by the detector

    @property
    def changed(self) -> bool:
        """Members joined since the detector last looked (``fresh``)."""
        return bool(self.fresh)

    # The first two distinct TTLs and source ports its members' probes carried (two are
    # enough to say "not one"; kept as they come, so no member list is walked).
    seen_ttls: list[int] = field(default_factory=list)
    seen_sports: list[int] = field(default_factory=list)

    def note(self, member: Member, ttl: int, sport: int) -> None:
        """A probe of ``member``'s: its TTL and source port, for the member and the group.
        (``Member.note`` written out again: called for every probe of a member.)"""
        kept = member.ttls
        if ttl not in kept and len(kept) < TTLS_KEPT:
            member.ttls = _added(kept, ttl)
        kept = member.sports
        if sport not in kept and len(kept) < TTLS_KEPT:
            member.sports = _added(kept, sport)
        values = self.seen_ttls
        if ttl not in values and len(values) < 2:
            values.append(ttl)
        values = self.seen_sports
        if sport not in values and len(values) < 2:
            values.append(sport)

    def absorb(self, other: Group) -> None:
        """The marks ``other`` saw, ``other`` being merged into this group."""
        for mine, theirs in ((self.seen_ttls, other.seen_ttls),
                             (self.seen_sports, other.seen_sports)):  # fmt: skip
            for value in theirs:
                if value not in mine and len(mine) < 2:
                    mine.append(value)

    @property
    def one_ttl(self) -> bool:
        """Every member's probes carry one and the same TTL: stamped by one sender."""
        return len(self.seen_ttls) == 1

    @property
    def one_source_port(self) -> bool:
        """Every member's probes come from one and the same source port: copies of one
        probe (nmap's decoys share it, with the sequence number and the IPv4 ID)."""
        return len(self.seen_sports) == 1

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

    __slots__ = (
        "_groups", "_number", "_of", "_pairs", "_probes", "_slots", "_ttls", "formed",
    )  # fmt: skip

    def __init__(self) -> None:
        # Per slot, its last sources: (time, source, TTL, source port, the member the probe
        # was noted in, if its source had one).
        self._slots: dict[Slot, list[tuple[float, bytes, int, int, Member | None]]] = {}
        self._probes: dict[bytes, int] = {}  # probes seen per source
        self._ttls: dict[bytes, tuple[int, float]] = {}  # per source: its last (TTL, time) heard
        self._pairs: dict[tuple[bytes, bytes], tuple[int, Slot]] = {}  # (co-occurrences, last)
        self._of: dict[bytes, Group] = {}
        self._groups: OrderedDict[int, Group] = OrderedDict()
        self._number = 0
        self.formed = 0  # groups formed so far (a counter)

    def __len__(self) -> int:
        return len(self._groups)

    @property
    def heard_table(self) -> dict[bytes, tuple[int, float]]:
        """The table ``heard`` writes, for a caller that writes it inline (the detector's
        path for SYNs to ports in use), with the same cap."""
        return self._ttls

    def group_of(self, src: bytes) -> Group | None:
        return self._of.get(src)

    def heard(self, src: bytes, ttl: int, now: float) -> None:
        """Traffic from ``src`` that is no probe (a connection to a port in use): its TTL is
        the "earlier traffic" a later group's probes are held against, when it came EARLIER
        seconds or more before the source joined the group (a scan's own SYNs to open ports
        come with its probes)."""
        ttls = self._ttls
        if len(ttls) >= MAX_SOURCES:
            ttls.clear()
        ttls[src] = (ttl, now)

    def see(  # noqa: PLR0917 - plain values: called for every probe
        self, src: bytes, proto: int, port: int, dst: bytes, ttl: int, now: float, sport: int = 0
    ) -> Group | None:
        """A confirmed probe. Returns the source's group, if it has one."""
        probes = self._probes
        count = probes.get(src, 0) + 1
        if count == 1 and len(probes) >= MAX_SOURCES:
            probes.clear()
        probes[src] = count
        of = self._of
        group = mine = of.get(src)  # ``mine``: the source's own, kept as links are made
        key = (proto, port, dst)
        slots = self._slots
        slot = slots.get(key)
        present = False
        if slot is not None:
            if slot[0][0] < now - WINDOW:
                slot[:] = [entry for entry in slot if entry[0] >= now - WINDOW]
            copies = now - COPY_WINDOW
            # Copies of one probe are sent back to back: the port's last sources hold them.
            for when, other, other_ttl, other_sport, noted in slot:
                if other == src:
                    present = True
                elif (sport and other_sport == sport and when >= copies) or (
                    count > 1 and self._co_occurred(src, other, key, count)
                ):
                    # ``_link``'s commonest cases written out: already one group, or the
                    # source joins the other's (each new source of a one-port flood).
                    theirs = of.get(other)
                    if theirs is None or (mine is not None and theirs is not mine):
                        group = self._link(src, other, now)
                        mine = of.get(src)
                    else:
                        group = theirs
                        if mine is None and len(theirs.members) < MAX_MEMBERS:
                            mine = self._join(theirs, src, now)
                    joined = group.members.get(other)
                    # The member its probe was noted in when it came: noted in this group
                    # then, or in one merged into it since (``absorb``): nothing to add.
                    if joined is not None and joined is not noted:
                        group.note(joined, other_ttl, other_sport)
        member = None
        if group is not None:
            member = group.members.get(src)
            if member is not None:
                group.note(member, ttl, sport)
        if slot is None:  # the port's first probe in a while: nobody to link with
            if len(slots) >= MAX_SLOTS:
                slots.clear()
            slots[key] = [(now, src, ttl, sport, member)]
        elif not present:
            slot.append((now, src, ttl, sport, member))
            if len(slot) > SLOT_SOURCES:
                del slot[0]
        return group

    def _join(self, group: Group, src: bytes, now: float) -> Group:
        """``src`` (in no group) joins ``group`` (not full); its earlier traffic's TTL is
        the one heard EARLIER seconds or more before now."""
        heard = self._ttls.get(src)
        earlier = heard[0] if heard is not None and heard[1] <= now - EARLIER else None
        if len(self._of) >= MAX_GROUPED:
            self._drop_oldest(keep=group)
        group.members[src] = Member(src, earlier)
        self._of[src] = group
        group.fresh.append(src)
        return group

    def _co_occurred(self, a: bytes, b: bytes, key: Slot, count: int) -> bool:
        """Count one co-occurrence of ``a`` and ``b`` on ``key``; True once they are linked."""
        pair = (a, b) if a < b else (b, a)
        pairs = self._pairs
        entry = pairs.get(pair)
        if entry is None:
            if len(pairs) >= MAX_PAIRS:
                pairs.clear()
            pairs[pair] = (1, key)
            return False
        shared, last = entry
        if last == key:
            return False  # a retransmission on the same port counts once
        shared += 1
        pairs[pair] = (shared, key)
        if shared < SHARED:
            return False
        other = self._probes.get(b, 0)
        return shared >= SHARE * (count if other > count else other)

    def _link(self, a: bytes, b: bytes, now: float) -> Group:
        """``a`` and ``b`` in one group: a new one, one joining the other's, or two merged."""
        of = self._of
        ga, gb = of.get(a), of.get(b)
        if ga is not None and ga is gb:
            return ga
        if ga is None and gb is None:  # a new group
            groups = self._groups
            if len(groups) >= MAX_GROUPS:
                self._drop(groups.popitem(last=False)[1])  # the oldest
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
            group.fresh.extend(s for s in other.fresh if s in group.members)
            group.absorb(other)
            del self._groups[other.number]  # merged
        for src in (b, a):  # the one seen first, first
            if src not in group.members and len(group.members) < MAX_MEMBERS:
                self._join(group, src, now)
        return group

    def _drop(self, group: Group) -> None:
        for src in group.members:
            self._of.pop(src, None)

    def _drop_oldest(self, keep: Group) -> None:
        """Forget the oldest group but ``keep`` (the one a source is joining)."""
        for number, group in self._groups.items():
            if group is not keep:
                del self._groups[number]
                self._drop(group)
                return


def _either(a: Group | None, b: Group | None) -> Group:
    if a is not None:
        return a
    if b is None:
        raise ValueError("no group")
    return b
