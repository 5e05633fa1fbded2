"""Rows read back as records, and the rows that cannot be: skipped, kept, reported once.

A store file can hold a row no record can be made of (edited by hand, a disk that flipped a
bit, a tool that ignored the CHECK constraints). One such row must neither stop the daemon
from starting nor end its worker, and must not pass unnoticed either: ``records`` skips it
and keeps its ``DamagedRowError`` (table, row, what is wrong); ``damaged`` hands each one
out once, for the daemon's log; ``set_aside`` ends a live ban whose row is damaged. Mixed
into ``Store``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from portsentinel.store.records import DamagedRowError
from portsentinel.store.schema import LIVE_SQL

R = TypeVar("R")


class RowReader:
    """See the module docstring."""

    # Every damaged row found (table, row id), and those not yet handed out by ``damaged``;
    # made empty by the store's constructor.
    _seen: set[tuple[str, object]]
    _damaged: list[DamagedRowError]

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def records(
        self, rows: Iterable[tuple[Any, ...]], read: Callable[[tuple[Any, ...]], R]
    ) -> list[R]:
        """``read`` of every row that can be read; a damaged one is skipped and kept."""
        found = []
        for row in rows:
            try:
                found.append(read(row))
            except DamagedRowError as exc:
                self.note(exc)
        return found

    def note(self, exc: DamagedRowError) -> None:
        """Keep a damaged row found by a reader of its own (``bulk``), for ``damaged``."""
        if exc.key not in self._seen:
            self._seen.add(exc.key)
            self._damaged.append(exc)

    def damaged(self) -> list[DamagedRowError]:
        """The rows skipped since the last call, each one only the first time: a row read
        every second is reported once for this connection's life."""
        new, self._damaged = self._damaged, []
        return new

    def set_aside(self, ban_id: int, at: float) -> bool:
        """End a live ban whose row cannot be read (lifted by ``damaged``): it could never be
        applied, expired or lifted, and would hold its network's one live ban for ever.
        False if it was not live."""
        with self._write() as conn:
            # The damage may break a CHECK constraint, which SQLite checks again on UPDATE.
            conn.execute("PRAGMA ignore_check_constraints = ON")
            try:
                cursor = conn.execute(
                    "UPDATE bans SET state = 'lifted', lifted_at = ?, lifted_by = 'damaged' "
                    f"WHERE id = ? AND {LIVE_SQL}",
                    (at, ban_id),
                )
            finally:
                conn.execute("PRAGMA ignore_check_constraints = OFF")
        return cursor.rowcount == 1
