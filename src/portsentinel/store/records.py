"""The store's records: frozen dataclasses for what goes in and comes out, and the row mapping.

Built only off the hot path (a decision flush, a ban, a CLI query). Enum values are the text
stored in the state columns.

A row that cannot become a record (evidence that is not JSON, an unknown state, a NULL or a
text where a number must be, an address that does not parse: a file edited by hand, a disk
that flipped a bit) raises ``DamagedRowError``, which names the table, the row and what is wrong;
the store's readers skip such a row and keep it for the daemon to report (``Store.damaged``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, NamedTuple, TypeVar

from portsentinel.model import Decision, flag_names
from portsentinel.networks import canonical_ipv4


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
    # A command (KILL_RUN_CMD, KILL_ROUTE) the process was running, or about to run, when it
    # died: it may or may not have run, and is not run again (schema version 3).
    UNCERTAIN = "uncertain"


class LiftedBy(StrEnum):
    """Who ended a ban."""

    EXPIRY = "expiry"
    UNBLOCK = "unblock"
    ALLOW = "allow"
    RECONCILE = "reconcile"
    WIDENED = "widened"  # replaced by a ban of its whole IPv6 prefix
    DAMAGED = "damaged"  # its row could not be read (``DamagedRowError``): ended, set aside


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
    score: float | None = None  # SCAN_RULE trw: the likelihood ratio
    contacts: int = 0  # ... and the first contacts it took
    scanner: str | None = None  # the tool the probes look made by
    group: str | None = None  # a decoy group's members, space-separated (schema version 6)

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
            decision.score,
            decision.contacts,
            decision.scanner,
            " ".join(decision.group) or None,
        )


class BanRecord(NamedTuple):
    """A ban as stored. ``expires`` None is permanent; ``lifted_at`` is when it ended.

    A tuple, not a frozen dataclass: a burst's thousands of bans each make one (two with
    ``activated``), and a frozen class sets each of its 13 fields through
    ``object.__setattr__``, ten times the cost of building a tuple."""

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
        """This ban marked active (a plain copy: ``_replace`` costs several times as much,
        which a batch of thousands of bans notices)."""
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
    "ip_options, score, contacts, scanner, decoy_group"
)
BAN_COLS: Final = (
    "id, address, prefix, created, expires, state, reason, rule, evidence, offence, lifted_at, "
    "lifted_by, offline"
)
ACTION_COLS: Final = "ban_id, backend, detail, state, attempts, last_error, updated"


def event_from_row(row: tuple[Any, ...]) -> EventRow:
    time, src, dst, proto, port, kind, action, reason, mode, rule, hits, ports_seen = row[:12]
    flags, ip_options, score, contacts, scanner, group = row[12:18]
    return EventRow(
        time, src, dst, proto, port, kind, action, reason, mode, rule, hits, ports_seen, flags,
        bool(ip_options), score, contacts or 0, scanner, group,
    )  # fmt: skip


class DamagedRowError(ValueError):
    """A row of ``table`` that cannot become a record; ``live`` for a ban row whose state says
    it holds (pending or active), whose ban is then neither applied nor ever lifted."""

    def __init__(
        self, table: str, row_id: object, problem: str, *, about: str = "", live: bool = False
    ) -> None:
        self.table = table
        self.row_id = row_id
        self.problem = problem
        self.live = live
        shown = f" ({about})" if about else ""
        super().__init__(f"{table} row {row_id}{shown}: {problem}")

    @property
    def key(self) -> tuple[str, object]:
        return (self.table, self.row_id)


def ban_from_row(row: tuple[Any, ...]) -> BanRecord:
    """A ``bans`` row (``BAN_COLS``) as a record; DamagedRowError when it cannot be one."""
    (ban_id, address, prefix, created, expires, state, reason, rule, evidence) = row[:9]
    offence, lifted_at, lifted_by, offline = row[9:]
    try:
        _check_ban_columns(row)
        ban_state = _enum(BanState, state)
        details = _json_object("evidence", evidence)
    except ValueError as exc:
        about = address if isinstance(address, str) else ""
        raise DamagedRowError("bans", ban_id, str(exc), about=about, live=state in _LIVE) from None
    return BanRecord(
        ban_id, address, prefix, created, expires, ban_state, reason, rule,
        MappingProxyType(details), offence, lifted_at, lifted_by, bool(offline),
    )  # fmt: skip


def action_from_row(row: tuple[Any, ...], row_id: object = None) -> ActionRecord:
    """A ``ban_actions`` row (``ACTION_COLS``; ``row_id`` its id, for naming it) as a record;
    DamagedRowError when it cannot be one."""
    ban_id, backend, detail, state, attempts, last_error, updated = row
    try:
        if not isinstance(backend, str):
            raise ValueError(f"backend is {_shown(backend)}, not a name")
        action_state = _enum(ActionState, state)
        details = _json_object("detail", detail)
        _integer("attempts", attempts, low=0)
        _text("last_error", last_error, optional=True)
        _number("updated", updated)
    except ValueError as exc:
        about = f"ban {ban_id}, {backend}"
        raise DamagedRowError("ban_actions", "?" if row_id is None else row_id, str(exc),
                         about=about) from None  # fmt: skip
    return ActionRecord(
        ban_id, backend, MappingProxyType(details), action_state, attempts, last_error, updated
    )


_LIVE: Final = frozenset({BanState.PENDING.value, BanState.ACTIVE.value})
_E = TypeVar("_E", bound=StrEnum)


def _check_ban_columns(row: tuple[Any, ...]) -> None:
    """ValueError saying what is wrong with a ban row's plain columns, if anything is (its
    state and evidence are read by ``ban_from_row``)."""
    _, address, prefix, created, expires, _, reason, rule, _ = row[:9]
    offence, lifted_at, lifted_by, offline = row[9:]
    _integer("prefix", prefix, low=0, high=128)
    _address(address, prefix)
    _number("created", created)
    _number("expires", expires, optional=True)
    _text("reason", reason)
    _text("rule", rule, optional=True)
    _integer("offence", offence, low=1)
    _number("lifted_at", lifted_at, optional=True)
    _text("lifted_by", lifted_by, optional=True)
    if offline not in (0, 1) or isinstance(offline, float):
        raise ValueError(f"offline is {_shown(offline)}, not 0 or 1")


def _shown(value: Any) -> str:
    if value is None:
        return "NULL"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:60]}..."


def _enum(kind: type[_E], value: Any) -> _E:
    try:
        return kind(value)
    except ValueError:
        names = ", ".join(member.value for member in kind)
        raise ValueError(f"state {_shown(value)} is not one of {names}") from None


def _json_object(column: str, text: Any) -> dict[str, Any]:
    if not isinstance(text, str):
        raise ValueError(f"{column} is {_shown(text)}, not JSON text")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{column} is not JSON ({exc}): {_shown(text)}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{column} is {_shown(text)}, not a JSON object")
    return value


def _integer(column: str, value: Any, *, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{column} is {_shown(value)}, not a whole number")
    if value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"{low} to {high}"
        raise ValueError(f"{column} is {value}, not {bounds}")


def _number(column: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{column} is {_shown(value)}, not a time")


def _text(column: str, value: Any, *, optional: bool = False) -> None:
    if not (isinstance(value, str) or (value is None and optional)):
        raise ValueError(f"{column} is {_shown(value)}, not text")


def _address(address: Any, prefix: int) -> None:
    """The network a ban row names: an address of its family with ``prefix``, host bits
    clear (how ``parse_network`` writes it)."""
    if not isinstance(address, str):
        raise ValueError(f"address is {_shown(address)}, not text")
    if prefix == 32 and canonical_ipv4(address):
        return  # the common cases, without ipaddress's parse (5-20x slower)
    if prefix == 128 and ":" in address:
        with contextlib.suppress(OSError):
            socket.inet_pton(socket.AF_INET6, address)
            return
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"address {_shown(address)} is not an IP address") from None
    try:
        ipaddress.ip_network((address, prefix))
    except ValueError as exc:
        raise ValueError(f"address {address} with prefix {prefix}: {exc}") from None


def _not_json(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# ``json.dumps(value, separators=(",", ":"), sort_keys=True)``, with the C encoder made once:
# ``JSONEncoder.encode`` makes it anew per call, more than half of its cost, and a burst of
# bans writes two documents each. (Without the C module, the same output from the encoder.)
_C_ENCODER: Any = getattr(json.encoder, "c_make_encoder", None)
_ENCODE: Any = None
if _C_ENCODER is not None:
    _ENCODE = _C_ENCODER(
        None, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",", True, False, True
    )
_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True, check_circular=False)


def to_json(value: Mapping[str, Any]) -> str:
    """A JSON object as the store keeps it: compact, keys sorted."""
    document = value if type(value) is dict else dict(value)
    if _ENCODE is not None:
        return "".join(_ENCODE(document, 0))
    return _ENCODER.encode(document)  # pragma: no cover - CPython has the C encoder
