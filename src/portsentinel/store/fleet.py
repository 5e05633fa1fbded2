"""The fleet's rows (schema version 6): what waits to go to CrowdSec's Local API, what became of
each local ban there, and the fleet's decisions this host knows.

- ``fleet_outbox``: one row per message not yet accepted by LAPI (a ban's alert, the deletion
  of a ban's decisions, a weak-evidence report). ``ref`` is unique (``ban:ID``, ``unban:ID``,
  ``report:ADDR:SLOT``), so queueing twice queues once. Bounded by the caller's cap: reports
  make room first, then bans; a deletion always finds room (it undoes a ban already out). A
  row stays until LAPI accepted it (or it is moot), so restarts and outages lose nothing.
- ``fleet_bans``: per local ban the fleet link has looked at: its end when first seen (a ban
  cut shorter since is not pushed), and its state: ``seen`` (waiting for its decoy window),
  ``queued``, ``pushed``, ``withheld`` (lifted or shortened before it went out), ``withdrawn``
  (its fleet decisions deleted), ``ended`` (pushed, and ended here in a way that stays local:
  expiry, ``allow``, ``unblock --local``).
- ``fleet_decisions``: the fleet's decisions (LAPI's ids), with what this host does with each:
  ``applied`` (in the fleet sets), ``own`` (this host's own ban covers it), ``refused`` (the
  never-block set holds it), ``dismissed`` (``unblock --local``: not applied here again).
- ``fleet_link``: the link's last facts (connected, last push and pull), for ``status``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final

V6: Final[tuple[str, ...]] = (
    """CREATE TABLE fleet_outbox (
        id INTEGER PRIMARY KEY,
        ref TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL CHECK (kind IN ('ban', 'unban', 'report')),
        address TEXT NOT NULL,
        ban_id INTEGER,
        body TEXT NOT NULL DEFAULT '{}',
        created REAL NOT NULL,
        due REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    )""",
    "CREATE INDEX fleet_outbox_due ON fleet_outbox (due)",
    """CREATE TABLE fleet_bans (
        ban_id INTEGER PRIMARY KEY,
        address TEXT NOT NULL,
        first_expires REAL,
        state TEXT NOT NULL CHECK (state IN
            ('seen', 'queued', 'pushed', 'withheld', 'withdrawn', 'ended')),
        updated REAL NOT NULL
    )""",
    "CREATE INDEX fleet_bans_live ON fleet_bans (state) WHERE state IN ('seen', 'queued', "
    "'pushed')",
    """CREATE TABLE fleet_decisions (
        id INTEGER PRIMARY KEY,
        address TEXT NOT NULL,
        origin TEXT NOT NULL,
        scenario TEXT NOT NULL,
        until REAL NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('applied', 'own', 'refused', 'dismissed')),
        note TEXT NOT NULL DEFAULT '',
        seen REAL NOT NULL
    )""",
    "CREATE INDEX fleet_decisions_address ON fleet_decisions (address)",
    "CREATE TABLE fleet_link (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
)

KINDS: Final = ("ban", "unban", "report")
DECISION_STATES: Final = ("applied", "own", "refused", "dismissed")


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One message for LAPI. ``body``: what the sender needs beyond the ban record."""

    ref: str
    kind: str
    address: str
    ban_id: int | None
    body: dict[str, Any]
    created: float
    due: float
    attempts: int = 0
    last_error: str | None = None
    id: int = 0


@dataclass(frozen=True, slots=True)
class FleetDecision:
    """One of the fleet's decisions as this host knows it (``until``: epoch seconds)."""

    id: int
    address: str
    origin: str
    scenario: str
    until: float
    state: str = "applied"
    note: str = ""
    seen: float = 0.0


_OUTBOX_COLS: Final = "ref, kind, address, ban_id, body, created, due, attempts, last_error, id"
_DECISION_COLS: Final = "id, address, origin, scenario, until, state, note, seen"


def _item(row: Sequence[Any]) -> OutboxItem:
    body = json.loads(row[4]) if row[4] else {}
    return OutboxItem(row[0], row[1], row[2], row[3], body if isinstance(body, dict) else {},
                      row[5], row[6], row[7], row[8], row[9])  # fmt: skip


class FleetRows:
    """Mixed into ``Store``; see the module docstring."""

    _conn: sqlite3.Connection

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _guard(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    # --- the outbox ---------------------------------------------------------------------------
    def outbox_put(self, items: Iterable[OutboxItem], cap: int) -> list[OutboxItem]:
        """Queue ``items`` (one already queued under its ``ref`` is left as it is), keeping at
        most ``cap`` rows: reports make room first, then the oldest bans; a deletion always
        gets in. Returns the items that found no room (and the ones pushed out for them)."""
        refused: list[OutboxItem] = []
        with self._write() as conn:
            for item in items:
                (depth,) = conn.execute("SELECT count(*) FROM fleet_outbox").fetchone()
                if depth >= cap:
                    victims: tuple[str, ...] = {"unban": ("report", "ban"), "ban": ("report",)}.get(
                        item.kind, ()
                    )
                    marks = ", ".join("?" * len(victims))
                    row = conn.execute(
                        f"SELECT {_OUTBOX_COLS} FROM fleet_outbox WHERE kind IN ({marks}) "
                        "ORDER BY created, id LIMIT 1", victims,
                    ).fetchone() if victims else None  # fmt: skip
                    if row is None:
                        refused.append(item)
                        continue
                    conn.execute("DELETE FROM fleet_outbox WHERE id = ?", (row[9],))
                    refused.append(_item(row))
                conn.execute(
                    "INSERT OR IGNORE INTO fleet_outbox (ref, kind, address, ban_id, body, "
                    "created, due, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
                    (item.ref, item.kind, item.address, item.ban_id, json.dumps(item.body),
                     item.created, item.due),
                )  # fmt: skip
        return refused

    def outbox_due(self, now: float, limit: int) -> list[OutboxItem]:
        """Up to ``limit`` messages whose time has come, oldest first."""
        with self._guard():
            rows = self._conn.execute(
                f"SELECT {_OUTBOX_COLS} FROM fleet_outbox WHERE due <= ? ORDER BY due, id LIMIT ?",
                (now, limit),
            ).fetchall()
        return [_item(row) for row in rows]

    def outbox_done(self, ids: Iterable[int]) -> None:
        with self._write() as conn:
            conn.executemany("DELETE FROM fleet_outbox WHERE id = ?", [(i,) for i in ids])

    def outbox_retry(self, ids: Iterable[int], due: float, error: str) -> None:
        """Try these again at ``due``; the error is kept for ``status``."""
        with self._write() as conn:
            conn.executemany(
                "UPDATE fleet_outbox SET due = ?, attempts = attempts + 1, last_error = ? "
                "WHERE id = ?",
                [(due, error[:500], i) for i in ids],
            )

    def outbox_wake(self, now: float) -> int:
        """Every message waiting out a back-off is due ``now`` (LAPI answers again); how many."""
        with self._write() as conn:
            done = conn.execute("UPDATE fleet_outbox SET due = ? WHERE due > ?", (now, now))
            return done.rowcount

    def outbox_mark(self, item_id: int, body: dict[str, Any]) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE fleet_outbox SET body = ? WHERE id = ?", (json.dumps(body), item_id)
            )

    def outbox_depth(self) -> dict[str, int]:
        """Messages waiting, per kind."""
        with self._guard():
            rows = self._conn.execute("SELECT kind, count(*) FROM fleet_outbox GROUP BY kind")
            return {kind: int(n) for kind, n in rows}

    def outbox_oldest(self) -> OutboxItem | None:
        with self._guard():
            row = self._conn.execute(
                f"SELECT {_OUTBOX_COLS} FROM fleet_outbox ORDER BY created, id LIMIT 1"
            ).fetchone()
        return _item(row) if row else None

    # --- what became of each local ban --------------------------------------------------------
    def fleet_ban_states(self, ban_ids: Iterable[int]) -> dict[int, tuple[str, float | None]]:
        """(state, end when first seen) of each of ``ban_ids`` the link has looked at."""
        ids = list(ban_ids)
        out: dict[int, tuple[str, float | None]] = {}
        with self._guard():
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows = self._conn.execute(
                    "SELECT ban_id, state, first_expires FROM fleet_bans WHERE ban_id IN "
                    f"({', '.join('?' * len(chunk))})",
                    chunk,
                )
                out.update({int(i): (s, e) for i, s, e in rows})
        return out

    def fleet_bans_in(self, *states: str) -> list[tuple[int, str, str]]:
        """(ban id, address, state) of the bans in ``states``."""
        marks = ", ".join("?" * len(states))
        with self._guard():
            rows = self._conn.execute(
                f"SELECT ban_id, address, state FROM fleet_bans WHERE state IN ({marks}) "
                "ORDER BY ban_id",
                states,
            ).fetchall()
        return [(int(i), a, s) for i, a, s in rows]

    def fleet_note_bans(
        self, rows: Iterable[tuple[int, str, float | None, str]], at: float
    ) -> None:
        """Record (ban id, address, end, state) of bans seen for the first time, or set the
        state of known ones (their first end stays)."""
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO fleet_bans (ban_id, address, first_expires, state, updated) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (ban_id) DO UPDATE SET "
                "state = excluded.state, updated = excluded.updated",
                [(i, a, e, s, at) for i, a, e, s in rows],
            )

    # --- the fleet's decisions ----------------------------------------------------------------
    def fleet_decisions(self, *, address: str | None = None) -> list[FleetDecision]:
        with self._guard():
            if address is None:
                rows = self._conn.execute(
                    f"SELECT {_DECISION_COLS} FROM fleet_decisions ORDER BY until, id"
                ).fetchall()
            else:
                rows = self._conn.execute(
                    f"SELECT {_DECISION_COLS} FROM fleet_decisions WHERE address = ? "
                    "ORDER BY until, id",
                    (address,),
                ).fetchall()
        return [FleetDecision(*row) for row in rows]

    def fleet_decisions_merge(
        self,
        new: Iterable[FleetDecision],
        deleted: Iterable[int],
        *,
        now: float,
        complete: bool = False,
    ) -> None:
        """Add or refresh ``new`` (a dismissed one stays dismissed), drop ``deleted`` and the
        expired; ``complete``: ``new`` is everything LAPI has, so drop the rest too."""
        items = list(new)
        with self._write() as conn:
            if complete:
                keep = [d.id for d in items]
                conn.execute("CREATE TEMP TABLE IF NOT EXISTS fleet_keep (id INTEGER PRIMARY KEY)")
                conn.execute("DELETE FROM fleet_keep")
                conn.executemany(
                    "INSERT OR IGNORE INTO fleet_keep VALUES (?)", [(i,) for i in keep]
                )
                conn.execute(
                    "DELETE FROM fleet_decisions WHERE id NOT IN (SELECT id FROM fleet_keep)"
                )
            conn.executemany("DELETE FROM fleet_decisions WHERE id = ?", [(i,) for i in deleted])
            conn.execute("DELETE FROM fleet_decisions WHERE until <= ?", (now,))
            conn.executemany(
                f"INSERT INTO fleet_decisions ({_DECISION_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET until = excluded.until",
                [(d.id, d.address, d.origin, d.scenario, d.until, d.state, d.note, now)
                 for d in items],
            )  # fmt: skip

    def fleet_decisions_mark(self, changes: Iterable[tuple[int, str, str]]) -> None:
        """(id, state, note) for decisions whose treatment here changed."""
        with self._write() as conn:
            conn.executemany(
                "UPDATE fleet_decisions SET state = ?, note = ? WHERE id = ? "
                "AND state <> 'dismissed'",
                [(state, note, i) for i, state, note in changes],
            )

    def fleet_dismiss(self, address: str) -> int:
        """``unblock --local``: the fleet's decisions on ``address`` are not applied here again
        (new ones are); how many."""
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE fleet_decisions SET state = 'dismissed', note = 'unblock --local' "
                "WHERE address = ?",
                (address,),
            )
        return cursor.rowcount

    # --- the link's facts -----------------------------------------------------------------
    def fleet_link_set(self, facts: dict[str, Any]) -> None:
        with self._write() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO fleet_link (key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in facts.items()],
            )

    def fleet_link(self) -> dict[str, Any]:
        with self._guard():
            rows = self._conn.execute("SELECT key, value FROM fleet_link").fetchall()
        return {k: json.loads(v) for k, v in rows}
