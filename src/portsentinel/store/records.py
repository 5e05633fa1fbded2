"""The store's records: frozen dataclasses for what goes in and comes out, and the row mapping.

Built only off the hot path (a decision flush, a ban, a CLI query). Enum values are the text
stored in the state columns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

from portsentinel.model import Decision, flag_names


class BanState(StrEnum):
    """A ban's lifecycle: pending -> active | failed; active -> lifted | expired."""

    PENDING = "pending"  # written, backends not (all) run yet
    ACTIVE = "active"  # backends ran; some may have failed (see its actions)
    LIFTED = "lifted"  # ended by unblock, allow or reconcile
    EXPIRED = "expired"  # ended by its expiry time
    FAILED = "failed"  # no backend could apply it


class ActionState(StrEnum):
    """What one backend did for one ban."""

    APPLIED = "applied"
    FAILED = "failed"
    UNDONE = "undone"
    UNDO_FAILED = "undo_failed"


class LiftedBy(StrEnum):
    """Who ended a ban."""

    EXPIRY = "expiry"
    UNBLOCK = "unblock"
    ALLOW = "allow"
    RECONCILE = "reconcile"
    WIDENED = "widened"  # replaced by a ban of its whole IPv6 prefix


# --- Records -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventRow:
    """One event, with the keys of the JSON event schema; ``time`` is epoch seconds."""

    time: float
    src: str
    dst: str
    proto: str  # 'tcp' | 'udp'
    port: int
    kind: str
    action: str
    reason: str
    mode: str | None = None
    rule: str | None = None
    hits: int = 0
    ports_seen: int = 0
    flags: str | None = None
    ip_options: bool = False

    @classmethod
    def from_decision(cls, decision: Decision, wall: float) -> EventRow:
        """The row for one decision; ``wall`` is the packet's wall-clock (or capture) time."""
        tcp = decision.proto.key == "tcp"
        return cls(
            wall,
            decision.src,
            decision.dst,
            decision.proto.key,
            decision.port,
            decision.kind.value,
            decision.action.value,
            decision.reason.value,
            decision.mode.value if decision.mode is not None else None,
            decision.rule,
            decision.hits,
            decision.ports_seen,
            flag_names(decision.flags) if tcp else None,
            decision.ip_options,
        )


@dataclass(frozen=True, slots=True)
class BanRecord:
    """A ban as stored. ``expires`` None is permanent; ``lifted_at`` is when it ended."""

    id: int
    address: str  # the network address, normalised
    prefix: int
    created: float
    expires: float | None
    state: BanState
    reason: str
    rule: str | None
    evidence: Mapping[str, Any]  # ports, kinds, hits, first/last seen: as the caller gave them
    offence: int  # 1 for a first ban, 2 for a repeat, ...
    lifted_at: float | None
    lifted_by: str | None
    offline: bool  # a replay's record, never applied to a firewall

    def activated(self) -> BanRecord:
        """This ban marked active (a plain copy: ``dataclasses.replace`` costs ten times as
        much, which a batch of thousands of bans notices)."""
        return BanRecord(
            self.id, self.address, self.prefix, self.created, self.expires, BanState.ACTIVE,
            self.reason, self.rule, self.evidence, self.offence, self.lifted_at, self.lifted_by,
            self.offline,
        )  # fmt: skip

    @property
    def live(self) -> bool:
        return self.state in (BanState.PENDING, BanState.ACTIVE)

    @property
    def target(self) -> str:
        """``ADDR`` for a host ban, ``ADDR/LEN`` for a prefix ban: what backends block."""
        width = 32 if "." in self.address else 128
        return self.address if self.prefix == width else f"{self.address}/{self.prefix}"


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """How one backend applied (or undid) one ban; ``detail`` is what undoing it needs."""

    ban_id: int
    backend: str
    detail: Mapping[str, Any]
    state: ActionState
    attempts: int  # records in a row with this state: 3 x 'undo_failed' is 3
    last_error: str | None
    updated: float


@dataclass(frozen=True, slots=True)
class AllowRecord:
    """One entry of the never-block set."""

    network: str  # 'ADDR/LEN'
    added: float
    comment: str


EVENT_COLS: Final = (
    "time, src, dst, proto, port, kind, action, reason, mode, rule, hits, ports_seen, flags, "
    "ip_options"
)
BAN_COLS: Final = (
    "id, address, prefix, created, expires, state, reason, rule, evidence, offence, lifted_at, "
    "lifted_by, offline"
)
ACTION_COLS: Final = "ban_id, backend, detail, state, attempts, last_error, updated"


def event_from_row(row: tuple[Any, ...]) -> EventRow:
    time, src, dst, proto, port, kind, action, reason, mode, rule, hits, ports_seen = row[:12]
    flags, ip_options = row[12:14]
    return EventRow(
        time, src, dst, proto, port, kind, action, reason, mode, rule, hits, ports_seen, flags,
        bool(ip_options),
    )  # fmt: skip


def ban_from_row(row: tuple[Any, ...]) -> BanRecord:
    (ban_id, address, prefix, created, expires, state, reason, rule, evidence) = row[:9]
    offence, lifted_at, lifted_by, offline = row[9:]
    return BanRecord(
        ban_id, address, prefix, created, expires, BanState(state), reason, rule,
        MappingProxyType(json.loads(evidence)), offence, lifted_at, lifted_by, bool(offline),
    )  # fmt: skip


def action_from_row(row: tuple[Any, ...]) -> ActionRecord:
    ban_id, backend, detail, state, attempts, last_error, updated = row
    return ActionRecord(
        ban_id, backend, MappingProxyType(json.loads(detail)), ActionState(state), attempts,
        last_error, updated,
    )  # fmt: skip


def to_json(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value), separators=(",", ":"), sort_keys=True)
