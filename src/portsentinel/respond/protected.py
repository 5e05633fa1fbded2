"""Bans on addresses the never-block set holds: lifted at once, never kept nor re-applied.

Why: an address may become protected after it was banned (a route through it added, an SSH
session opened from it, the operator's allow list, a reloaded ignore list); a ban on it then
cuts off exactly what the set exists to keep reachable. The daemon's loop tells the response
worker of every change of the set, and the worker lifts each live ban whose network holds a
protected address, saying why. At start-up the same step runs before any ban is re-applied,
so a restart never brings such a ban back.

The ban is recorded as lifted by ``allow``, the reason the operator's ``allow`` gives: the
store then counts it as no offence (a repeat ban of the address is not doubled for it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from portsentinel.host.neverblock import Entry, covering
from portsentinel.store.records import BanRecord, LiftedBy

Entries = Callable[[], Sequence[Entry]]
"""The never-block set's entries as they are now (``Protection.entries``; any thread)."""

LIFTED_BY = LiftedBy.ALLOW


class Lifter(Protocol):
    """What lifting needs of ``BanManager``."""

    log: Callable[[str], None]

    def lift(self, record: BanRecord, now: float, by: LiftedBy) -> bool: ...


def lift_protected(
    manager: Lifter, records: Iterable[BanRecord], entries: Sequence[Entry], now: float
) -> list[BanRecord]:
    """Lift every ban of ``records`` whose network holds an address of ``entries``; the bans
    lifted (one already lifted meanwhile is left out)."""
    if not entries:
        return []
    targets = (
        (record, ipaddress.ip_network(f"{record.address}/{record.prefix}", strict=False))
        for record in records
    )
    lifted = []
    for record, reason in covering(entries, targets):
        if manager.lift(record, now, LIFTED_BY):
            manager.log(
                f"attackalert: Host {record.target} unblocked: now in the never-block set "
                f"({reason})"
            )
            lifted.append(record)
    return lifted
