"""A ban's actions, and the one its own row may hold (schema version 7).

A burst of first bans is one nftables element each, sent by the detection loop before the
store hears of it. Written as a ban row and an action row, that is two inserts into two
indexed tables per ban (and a foreign key checked); so a ban's row may hold its first action
itself (``bans.held`` names the backend) with that action's detail less the ban's own fields
(``bans.held_detail``): the part a batch shares (the table, the set, the timeout), one text
for the whole batch rather than a JSON document per ban. Its outcome is ``applied``, one
attempt, at the ban's ``created`` time, with no error.

The action's detail, as ``actions`` gives it back, is that shared part with the ban's own
fields put in from the row (``address``, ``prefix``, ``key``: the target) and from its
evidence (``port``, ``proto``, ``mode``), which is what the backends' ``ban_fields`` write.

The first time anything else is recorded for that backend and ban (undone, failed to undo,
applied again at a restart), the action moves to ``ban_actions`` in the same transaction,
with its detail in full, and ``held_detail`` is cleared; ``held`` stays, so the action still
comes first (``actions`` lists a ban's actions in the order they were applied). Mixed into
``Store``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from types import MappingProxyType
from typing import Any, Final

from portsentinel.store.bulk import insert_many
from portsentinel.store.records import (
    ACTION_COLS,
    BAN_COLS,
    ActionRecord,
    ActionState,
    DamagedRowError,
    action_from_row,
    to_json,
)
from portsentinel.store.schema import HELD_OPEN_SQL, LIVE_SQL, OPEN_ACTION_SQL

# (ban id, backend, detail or None to keep the recorded one, state, error): ``record_actions``.
ActionRow = tuple[int, str, Mapping[str, Any] | None, ActionState, str | None]
CHUNK: Final = 500  # ids per ``IN (...)``: far below SQLite's variable limit
OWN_FROM_EVIDENCE: Final = ("port", "proto", "mode")

SQL_HELD: Final = (
    "SELECT held, held_detail, address, prefix, created, evidence FROM bans WHERE id = ?"
)
SQL_ACTIONS: Final = f"SELECT {ACTION_COLS}, id FROM ban_actions WHERE ban_id = ? ORDER BY id"
SQL_HELD_MANY: Final = (
    "SELECT id, held, held_detail, address, prefix, created, evidence FROM bans "
    "WHERE held_detail IS NOT NULL AND id IN ({marks})"
)
SQL_UNCERTAIN: Final = (
    "SELECT address, prefix, backend FROM ban_actions JOIN bans ON bans.id = ban_id "
    f"WHERE ban_actions.state = 'uncertain' AND bans.{LIVE_SQL} ORDER BY bans.id, backend"
)
# Ended bans with something still applied: an action row, or the action their row holds.
SQL_BANS_TO_UNDO: Final = (
    f"SELECT {BAN_COLS} FROM bans WHERE id IN (SELECT ban_id FROM ban_actions WHERE "
    f"{OPEN_ACTION_SQL} UNION SELECT id FROM bans WHERE {HELD_OPEN_SQL}) AND NOT ({LIVE_SQL}) "
    "ORDER BY id"
)
SQL_APPLIED_BY: Final = (
    "SELECT ban_id FROM ban_actions WHERE backend = :backend AND state = 'applied' "
    f"AND ban_id IN (SELECT id FROM bans WHERE {LIVE_SQL}) "
    f"UNION SELECT id FROM bans WHERE {LIVE_SQL} AND held = :backend AND held_detail IS NOT NULL"
)
_UPSERT: Final = (
    "INSERT INTO ban_actions (ban_id, backend, detail, state, last_error, updated) "
    "VALUES (:ban_id, :backend, coalesce(:detail, '{}'), :state, :error, :at) "
    "ON CONFLICT (ban_id, backend) DO UPDATE SET "
    "detail = coalesce(:detail, detail), "
    "attempts = CASE WHEN state = excluded.state THEN attempts + 1 ELSE 1 END, "
    "state = excluded.state, last_error = excluded.last_error, "
    "updated = excluded.updated"
)
_MOVE: Final = (
    "INSERT INTO ban_actions (ban_id, backend, detail, state, attempts, last_error, updated) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def held_detail(row: tuple[Any, ...]) -> dict[str, Any]:
    """The full detail of a held action from (held_detail, address, prefix, evidence) of its
    ban's row; ValueError when the texts are not JSON objects."""
    shared, address, prefix, evidence = row
    detail = _object("held_detail", shared)
    own = _object("evidence", evidence)
    width = 32 if "." in address else 128
    detail.update(
        address=address, prefix=prefix, key=address if prefix == width else f"{address}/{prefix}"
    )
    for name in OWN_FROM_EVIDENCE:
        if name in own:
            detail[name] = own[name]
    return detail


def _object(column: str, text: Any) -> dict[str, Any]:
    if not isinstance(text, str):
        raise ValueError(f"{column} is not JSON text")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{column} is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{column} is not a JSON object")
    return value


def _held_record(ban_id: int, row: tuple[Any, ...]) -> ActionRecord:
    """The action a ban's row holds (``SQL_HELD``'s columns) as a record."""
    backend, shared, address, prefix, created, evidence = row
    try:
        detail = held_detail((shared, address, prefix, evidence))
    except (ValueError, TypeError) as exc:
        raise DamagedRowError(
            "bans", ban_id, f"its held action: {exc}", about=str(address)
        ) from None
    return ActionRecord(
        ban_id, backend, MappingProxyType(detail), ActionState.APPLIED, 1, None, created
    )


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


class HeldActions:
    """See the module docstring; ``Store`` provides the connection and its guards."""

    _conn: sqlite3.Connection

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    def note(self, exc: DamagedRowError) -> None:
        raise NotImplementedError

    def actions(self, ban_id: int) -> list[ActionRecord]:
        """A ban's actions in the order they were first applied (undo in reverse)."""
        with self._read():
            held = self._conn.execute(SQL_HELD, (ban_id,)).fetchone()
            rows = self._conn.execute(SQL_ACTIONS, (ban_id,)).fetchall()
        found: list[ActionRecord] = []
        first: list[ActionRecord] = []
        if held is not None and held[1] is not None:
            try:
                first.append(_held_record(ban_id, held))
            except DamagedRowError as exc:
                self.note(exc)
        for row in rows:
            try:
                action = action_from_row(row[:-1], row_id=row[-1])
            except DamagedRowError as exc:
                self.note(exc)
                continue
            moved = held is not None and action.backend == held[0] and not first
            (first if moved else found).append(action)
        return first + found

    def uncertain(self) -> list[tuple[str, str]]:
        """(ban target, backend) of each command of a live ban that may or may not have run
        (``ActionState.UNCERTAIN``): what ``status`` warns about."""
        with self._read():
            rows = self._conn.execute(SQL_UNCERTAIN).fetchall()
        return [
            (f"{a}" if p == (32 if "." in f"{a}" else 128) else f"{a}/{p}", backend)
            for a, p, backend in rows
        ]

    def applied_by(self, backend: str) -> set[int]:
        """The live bans that ``backend`` applied (its action ``applied``), in one query: what
        the repair step compares with the firewall, without asking ban by ban."""
        with self._read():
            rows = self._conn.execute(SQL_APPLIED_BY, {"backend": backend}).fetchall()
        return {ban_id for (ban_id,) in rows}

    def hold_actions(self, rows: Sequence[tuple[str, str, int]]) -> None:
        """Applied actions of bans recorded in this batch, held in their rows: (backend, the
        detail's shared text, ban id). A ban whose row holds one already keeps it."""
        if not rows:
            return
        # A batch's rows share a few texts: one UPDATE per text and CHUNK ids, not one per ban.
        ids: dict[tuple[str, str], list[int]] = {}
        for backend, text, ban_id in rows:
            ids.setdefault((backend, text), []).append(ban_id)
        with self._write() as conn:
            for (backend, text), same in ids.items():
                for part in _chunks(same):
                    conn.execute(
                        "UPDATE bans SET held = ?, held_detail = ? WHERE held IS NULL AND id IN "
                        f"({', '.join('?' * len(part))})",
                        (backend, text, *part),
                    )

    def record_actions(
        self, rows: Sequence[ActionRow], *, at: float, first: bool = False,
    ) -> None:  # fmt: skip
        """``Store.record_action`` for many (ban id, backend, detail, state, error) rows.
        ``first``: no row of these bans and backends exists yet, nor does their row hold
        that backend's action (a plain insert)."""
        if not rows:
            return
        if first:  # plain inserts: positional parameters, cheaper than a dict per row
            with self._write() as conn:
                insert_many(
                    conn,
                    "INSERT INTO ban_actions (ban_id, backend, detail, state, last_error, "
                    "updated) VALUES ",
                    [
                        (ban_id, backend, "{}" if detail is None else to_json(detail),
                         str(state.value), error, at)
                        for ban_id, backend, detail, state, error in rows
                    ],
                )  # fmt: skip
            return
        with self._write() as conn:
            rest = self._move_held(conn, rows, at)
            conn.executemany(
                _UPSERT,
                [
                    {"ban_id": ban_id, "backend": backend, "state": ActionState(state).value,
                     "detail": None if detail is None else to_json(detail), "error": error,
                     "at": at}
                    for ban_id, backend, detail, state, error in rest
                ],
            )  # fmt: skip

    def _move_held(
        self, conn: sqlite3.Connection, rows: Sequence[ActionRow], at: float
    ) -> list[ActionRow]:
        """Rows for an action a ban's row holds: written to ``ban_actions`` in full (its
        detail kept unless a new one is given; a second ``applied`` is a second attempt) and
        the row's copy cleared. Returns the other rows, for the upsert."""
        ids = sorted({row[0] for row in rows})
        held: dict[tuple[int, str], tuple[Any, ...]] = {}
        for part in _chunks(ids):
            sql = SQL_HELD_MANY.format(marks=", ".join("?" * len(part)))
            for ban_id, backend, *rest in conn.execute(sql, part):
                held[(ban_id, backend)] = tuple(rest)
        if not held:
            return list(rows)
        rest_rows, moves, cleared = [], [], []
        for row in rows:
            ban_id, backend, detail, state, error = row
            found = held.pop((ban_id, backend), None)
            if found is None:
                rest_rows.append(row)
                continue
            shared, address, prefix, _created, evidence = found
            if detail is None:
                try:
                    detail = held_detail((shared, address, prefix, evidence))
                except (ValueError, TypeError):
                    detail = {}  # damaged: ``actions`` names it; the outcome is still kept
            value = ActionState(state).value
            attempts = 2 if value == ActionState.APPLIED.value else 1
            moves.append((ban_id, backend, to_json(detail), value, attempts, error, at))
            cleared.append(ban_id)
        conn.executemany(_MOVE, moves)
        for part in _chunks(cleared):
            conn.execute(
                f"UPDATE bans SET held_detail = NULL WHERE id IN ({', '.join('?' * len(part))})",
                part,
            )
        return rest_rows
