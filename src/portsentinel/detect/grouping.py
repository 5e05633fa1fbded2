"""What a decoy group changes in the detector's decisions (``decoys.py`` finds the groups).

A member without proof of its address (no completed handshake: a CONNECT) gets a decoy's ban:
its decision says ``decoy`` and names the group, so the ban made from it lasts
DECOY_BAN_DURATION at most. A member banned before the group showed is cut to that length:
``take_cuts`` hands the cuts out (once per member), for the response side to shorten the ban
in the store and the kernel. A member with proof keeps its full ban: a forged source cannot
complete a handshake, so it is the scanner (or a host the scanner does not control the
packets of). Mixed into ``Detector``; adds no slots.
"""

from __future__ import annotations

from itertools import islice
from typing import Final

from portsentinel.detect.decide import BLOCKED_MARK, Policy
from portsentinel.detect.decoys import DecoyGroups, Group
from portsentinel.detect.track import KIND_BIT, Tracker
from portsentinel.model import Action, Decision, DecoyCut, ScanKind

_CONNECT_BIT: Final = KIND_BIT[ScanKind.CONNECT]


class Grouping:
    """Methods of ``Detector`` for decoy groups; see the module."""

    __slots__ = ()
    _decoys: DecoyGroups
    _cuts: list[DecoyCut]
    _tracker: Tracker
    policy: Policy

    def _text(self, packed: bytes) -> str:
        raise NotImplementedError

    def _grouped(self, group: Group, now: float) -> None:
        """Members joined ``group``: the bans of those without proof are cut, once. (Only
        the members that just joined are looked at: one that was banned later got a decoy's
        ban then.)"""
        fresh = group.fresh  # emptied at the end (nothing joins meanwhile): no new list
        names: tuple[str, ...] | None = None
        marks = self.policy.responses.marks  # ``Responses.blocked``, inline
        for src in fresh:
            member = group.members[src]
            if member.cut or not marks.get(src, 0) & BLOCKED_MARK or self._proven(src):
                continue
            member.cut = True
            if names is None:
                names = self._names(group)
            evidence = {**group.evidence(src), "members": list(names)}
            self._cuts.append(DecoyCut(now, self._text(src), names, evidence))
        fresh.clear()

    def _proven(self, src: bytes) -> bool:
        state = self._tracker.get(src)
        return state is not None and bool(state.kinds & _CONNECT_BIT)

    def _names(self, group: Group) -> tuple[str, ...]:
        """The members' names, in the order they joined: only the newcomers' are made (a
        group only grows, so its members' order only extends)."""
        texts = group.texts
        members = group.members
        if len(texts) < len(members):
            new = tuple(self._text(src) for src in islice(members, len(texts), None))
            texts = group.texts = texts + new
        return texts

    def _tell_group(self, decision: Decision, src: bytes) -> None:
        """Name ``src``'s group on its decision; a member without proof is a decoy (a ban
        made from this decision is short, so it needs no cut later)."""
        group = self._decoys.group_of(src)
        if group is None:
            return
        decision.group = self._names(group)
        decision.decoy = not self._proven(src)
        if decision.decoy and decision.action is not Action.IGNORED:
            group.members[src].cut = True

    def take_cuts(self) -> list[DecoyCut]:
        """The bans to cut since the last call (the response side applies them)."""
        cuts = list(self._cuts)
        self._cuts.clear()
        return cuts

    def decoy_evidence(self, src: bytes) -> dict[str, object] | None:
        """What the wire showed of ``src``'s claim to its address, when it is in a group."""
        group = self._decoys.group_of(src)
        if group is None:
            return None
        return {**group.evidence(src), "members": list(self._names(group))}

    @property
    def decoy_groups(self) -> int:
        """Groups formed so far."""
        return self._decoys.formed
