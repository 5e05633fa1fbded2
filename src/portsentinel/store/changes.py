"""A ban's changes after it began: today one kind, a ban cut short as a decoy's.

A ban made on a source's first probe may turn out to be one of a decoy group's (``nmap -D``:
the scanner chose the address); it is then cut to DECOY_BAN_DURATION. ``cut_ban`` is one
transaction: the ban's end moves earlier and a ``ban_changes`` row says when, from what to
what, and why (the group, the evidence). The fleet (CrowdSec) withdraws what it pushed of a
ban that was cut: ``changes_since`` is what it polls, ``CUT_AS_DECOY`` the change it looks for.
Mixed into ``Store``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final

from portsentinel.store.records import BanRecord, _json_object, to_json
from portsentinel.store.schema import LIVE_SQL

CUT_AS_DECOY: Final = "cut as decoy"
_COLS: Final = "ban_id, at, change, expires_before, expires_after, detail"


@dataclass(frozen=True, slots=True)
class BanChange:
    """One change of a ban: when, what (``CUT_AS_DECOY``), its end before and after."""

    ban_id: int
    at: float
    change: str
    expires_before: float | None  # None: it was permanent
    expires_after: float | None
    detail: Mapping[str, Any]


class BanChanges:
    """See the module docstring."""

    _guard: Callable[[], AbstractContextManager[None]]
    _conn: sqlite3.Connection

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def ban(self, ban_id: int) -> BanRecord | None:
        raise NotImplementedError

    def cut_ban(
        self, ban_id: int, expires: float, *, at: float, detail: Mapping[str, Any]
    ) -> BanRecord | None:
        """End a live ban at ``expires`` instead of later (or never), recorded as cut as a
        decoy's; the ban as it is now. None when it ended already or ends by then anyway."""
        with self._write() as conn:
            row = conn.execute(
                f"SELECT expires FROM bans WHERE id = ? AND {LIVE_SQL} "
                "AND (expires IS NULL OR expires > ?) AND created <= ?",
                (ban_id, expires, expires),
            ).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE bans SET expires = ? WHERE id = ?", (expires, ban_id))
            conn.execute(
                f"INSERT INTO ban_changes ({_COLS}) VALUES (?, ?, ?, ?, ?, ?)",
                (ban_id, at, CUT_AS_DECOY, row[0], expires, to_json(detail)),
            )
        return self.ban(ban_id)

    def ban_changes(self, ban_id: int) -> list[BanChange]:
        """A ban's changes, oldest first."""
        with self._guard():
            rows = self._conn.execute(
                f"SELECT {_COLS} FROM ban_changes WHERE ban_id = ? ORDER BY at, id", (ban_id,)
            ).fetchall()
        return [_change(row) for row in rows]

    def changes_since(self, at: float) -> list[BanChange]:
        """Changes of any ban made at or after ``at``, oldest first (what the fleet polls)."""
        with self._guard():
            rows = self._conn.execute(
                f"SELECT {_COLS} FROM ban_changes WHERE at >= ? ORDER BY at, id", (at,)
            ).fetchall()
        return [_change(row) for row in rows]


def _change(row: tuple[Any, ...]) -> BanChange:
    ban_id, at, change, before, after, detail = row
    return BanChange(ban_id, at, change, before, after, _json_object("ban_changes.detail", detail))
