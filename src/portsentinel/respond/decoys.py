"""A ban cut to DECOY_BAN_DURATION: its source turned out to be one of a decoy group.

The detector bans a source on its first probe; a moment later its probes may show it among
several sources probing the same ports at the same moments (``nmap -D``), without proof of
its address (``detect/grouping.py``). The ban is then cut: the store first (``Store.cut_ban``:
the ban's end moves and a ``ban_changes`` row "cut as decoy" says when, from what, and the
group and evidence), then the kernel (the nftables element gets the new timeout, in the inet
and the ingress sets alike, by the same renewal that gives a repeat offender its longer one).
The ban then expires as any other. A prefix ban, or one already shorter, is not touched.

The fleet hooks here: ``cut_ban`` returns the cut ban (None: nothing was cut), and the store's
``changes_since`` lists every cut for a poller that withdraws what it pushed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from portsentinel.alert.portsentry_log import decoy_cut_line
from portsentinel.respond.backends import spec_of
from portsentinel.respond.bans import BanManager
from portsentinel.store.records import ActionState, BanRecord


@dataclass(frozen=True)
class CutRequest:
    """The detector's ``DecoyCut``, for the response worker."""

    address: str
    group: tuple[str, ...]
    evidence: Mapping[str, object] = field(default_factory=dict)


def cut_ban(manager: BanManager, request: CutRequest, now: float) -> BanRecord | None:
    """Cut the live ban of ``request.address`` to DECOY_BAN_DURATION from ``now`` (see the
    module); the ban as cut, or None when there was none to cut."""
    store = manager.store
    record = store.ban_for(request.address)
    if record is None or record.target != request.address:
        return None  # not banned, or banned with its prefix: a decoy does not shorten that
    seconds = manager.terms.decoy
    detail = {"group": list(request.group), "evidence": dict(request.evidence),
              "seconds": seconds}  # fmt: skip
    cut = store.cut_ban(record.id, now + seconds, at=now, detail=detail)
    if cut is None:
        return None
    applied = {a.backend for a in store.actions(cut.id) if a.state is ActionState.APPLIED}
    spec = spec_of(cut, now)
    if "nftables" in applied and spec is not None:
        manager.renew_in_kernel([spec])
    manager.log(decoy_cut_line(request.address, request.group, seconds))
    return cut
