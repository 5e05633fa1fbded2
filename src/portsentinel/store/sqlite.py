"""The state store: events and bans in one SQLite file, ``STATE_DIR/portsentinel.db``
(``paths.STORE_NAME``; opened by ``store/connect.py``).

The daemon holds one connection for its life; the CLI opens its own, at the same time. Every
change is one transaction, taken with ``BEGIN IMMEDIATE`` so that a writer waits for the other
side's write lock (``busy_timeout``) instead of failing half-way.

The order of writes is what makes ``kill -9`` harmless:

- block: ``begin_ban`` (committed, state ``pending``) BEFORE any backend runs, then one
  ``record_action`` per backend, then ``activate``. A kill anywhere leaves a pending or active
  ban that start-up re-applies with idempotent backends, never a rule the store does not know.
  Batches (``respond/bans.py``) commit idempotent backends' outcomes with the next step. The
  loop's nftables element (``first_ban``) goes first, adopted at start if unknown; a ban whose
  whole plan it is gets written ``active`` with that action held in its own row, one insert
  (``store/held.py``).
- unblock, allow, expiry: ``lift`` (committed) first, then undo each action of ``actions``
  (in reverse order) and record it ``undone``. A kill in between leaves an ended ban with
  actions still ``applied``: ``bans_to_undo`` finds it at start-up.
- start-up: ``due_for_expiry`` -> lift and undo; ``bans_to_undo`` -> undo; ``active_bans`` ->
  re-apply (missing ones restored); anything of ours in the kernel that no live ban explains
  is stale and removed.

Every time is an epoch float from the caller (the store reads no clock but SQLite's own).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, Final

from portsentinel.store import rollup, schema
from portsentinel.store.bulk import SQL_BAN_FOR, BulkBans, NewBan
from portsentinel.store.changes import BanChanges
from portsentinel.store.connect import (
    CACHE_KIB,
    DEFAULT_BUSY_TIMEOUT,
    DuplicateBanError,
    connect,
    sqlite_errors,
)
from portsentinel.store.fleet import FleetRows
from portsentinel.store.held import SQL_ACTIONS, SQL_BANS_TO_UNDO, SQL_UNCERTAIN, HeldActions
from portsentinel.store.records import (
    BAN_COLS,
    EVENT_COLS,
    ActionRecord,
    ActionState,
    AllowRecord,
    BanRecord,
    BanState,
    DamagedRowError,
    EventRow,
    LiftedBy,
    ban_from_row,
    event_from_row,
    to_json,
)
from portsentinel.store.rollup_read import RollupReader
from portsentinel.store.rows import RowReader
from portsentinel.store.schema import LIVE_SQL, host_text_key, parse_network

__all__ = [
    "SQL_ACTIONS",
    "SQL_BANS_TO_UNDO",
    "SQL_BAN_FOR",
    "SQL_UNCERTAIN",
    "ActionRecord",
    "ActionState",
    "AllowRecord",
    "BanRecord",
    "BanState",
    "DamagedRowError",
    "DuplicateBanError",
    "EventRow",
    "LiftedBy",
    "NewBan",
    "Store",
]

PURGE_BATCH: Final = 10_000  # events deleted per transaction, so the daemon's flush never waits


# --- Queries that must stay indexed (a test reads their query plans) -----------------------
# A unary ``+`` keeps a column's index out of the planner's choice where a partial index
# (live bans, lifted bans) is the small one: without ANALYZE statistics SQLite would rather
# walk all of ``bans_created`` to save a sort.

SQL_ACTIVE_BANS: Final = (
    f"SELECT {BAN_COLS} FROM bans WHERE {LIVE_SQL} AND (expires IS NULL OR expires > ?) "
    "ORDER BY +created, id"
)
SQL_DUE_FOR_EXPIRY: Final = (
    f"SELECT {BAN_COLS} FROM bans WHERE {LIVE_SQL} AND expires <= ? ORDER BY expires, id"
)
SQL_OFFENCES: Final = (
    "SELECT count(*) FROM bans WHERE address = ? AND prefix = ? AND created >= ? "
    "AND coalesce(lifted_by, '') <> 'allow'"
)
SQL_BANS_BETWEEN: Final = (  # three disjoint parts, each through its own index
    f"SELECT {BAN_COLS} FROM bans WHERE id IN ("
    "SELECT id FROM bans WHERE created >= :start AND created < :end "
    "UNION ALL SELECT id FROM bans WHERE lifted_at >= :start AND +created < :start "
    f"UNION ALL SELECT id FROM bans WHERE {LIVE_SQL} AND +created < :start"
    ") ORDER BY created, id"
)
SQL_EVENTS_BETWEEN: Final = (
    f"SELECT {EVENT_COLS} FROM events WHERE time >= ? AND time < ? ORDER BY time, id"
)
SQL_EVENTS_FROM: Final = (
    f"SELECT {EVENT_COLS}, id FROM events WHERE src_key BETWEEN :lo AND :hi AND time >= :since"
)
SQL_LIVE_PREFIXES: Final = f"SELECT DISTINCT prefix FROM bans INDEXED BY bans_live WHERE {LIVE_SQL}"


class Store(BanChanges, BulkBans, RowReader, HeldActions, FleetRows):
    """One connection to the store. Build it with ``Store.open``; close it (or use ``with``).
    Its readers skip a row that is no record and keep it for ``damaged`` (``store/rows.py``)."""

    def __init__(self, conn: sqlite3.Connection, path: str, offline: bool) -> None:
        self._conn = conn
        self.path = path
        self.offline = offline
        self._batched = 0  # inside ``batch``: writes and reads join its transaction
        self._seen, self._damaged = set(), []  # rows that are no record (``store/rows.py``)

    # --- Opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        state_dir: str,
        *,
        offline: bool | None = False,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> Store:
        """Open (creating if missing, upgrading if older) ``state_dir/portsentinel.db``.

        ``offline`` says which store the caller needs: False a live one (daemon, block,
        unblock, allow), True a replay's, whose bans are records only; None either (readers).
        A new file is made the kind asked for; a file of the other kind is refused, so a
        replay never writes into live history and a daemon never runs on a replay's records.

        Durability: WAL with ``synchronous=NORMAL``. A commit is written to the WAL file
        without an fsync; the fsync happens at checkpoints. The operating system keeps written
        pages when the process dies, so ``kill -9`` at any moment loses no committed
        transaction and never corrupts the file. Only a power loss or kernel crash may lose
        the last few commits (never the file's consistency) - which also takes the kernel's
        firewall rules with it, and start-up rebuilds them from what the store has. That is
        a fair price for not paying an fsync on every ban and every event flush.
        """
        return cls(*connect(state_dir, busy_timeout, offline))

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def schema_version(self) -> int:
        with self._guard():
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def meta(self) -> dict[str, str]:
        """``created_at``, ``offline`` ('0'/'1'), ``program_version`` (that made or upgraded it)."""
        with self._guard():
            return dict(self._conn.execute("SELECT key, value FROM meta"))

    def data_version(self) -> int:
        """Changes whenever ANOTHER connection commits: a cheap poll for the CLI's changes."""
        with self._guard():
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    # --- Events ----------------------------------------------------------------------------

    def add_events(self, rows: Iterable[EventRow]) -> int:
        """Insert a batch in one transaction (the daemon's flush); returns how many."""
        values = [_event_values(row) for row in rows]  # ValueError here: nothing written
        if not values:
            return 0
        with self._write() as conn:
            conn.executemany(
                f"INSERT INTO events ({EVENT_COLS}, src_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
        return len(values)

    def purge_events(self, before: float, *, batch: int = PURGE_BATCH) -> int:
        """Delete events older than ``before``, oldest first, ``batch`` rows per transaction
        (their sums leave the rollups in the same one); how many."""
        total = 0
        while True:
            with self._write() as conn:
                deleted = rollup.purge_batch(conn, before, batch)
            total += deleted
            if deleted < batch:
                return total

    def roll_up(self, chunks: int | None = None) -> int:
        """Fold waiting events into the rollups, one transaction per ``ROLL_CHUNK`` events,
        at most ``chunks`` of them (None: until up to date); how many were folded."""
        done = folded = 0
        with self._guard():
            self._conn.execute(f"PRAGMA cache_size = -{rollup.ROLL_CACHE_KIB}")
        try:
            while chunks is None or done < chunks:
                with self._write() as conn:
                    count = rollup.fold_chunk(conn)
                if not count:
                    break
                done, folded = done + 1, folded + count
        finally:
            with self._guard():
                self._conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        return folded

    @contextmanager
    def rollup_reader(self) -> Iterator[RollupReader]:
        """Fold what waits, then the report's queries on one snapshot (``rollup_read.py``)."""
        self.roll_up()
        with self._read():
            yield RollupReader(self._conn, rollup.watermark(self._conn))

    def events_for(
        self, address: str, since: float | None = None, limit: int | None = None
    ) -> list[EventRow]:
        """Events from a host or a prefix, oldest first; ``limit`` keeps the newest ones."""
        lo, hi = schema.key_range(parse_network(address))
        sql = SQL_EVENTS_FROM
        if limit is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY time DESC, id DESC LIMIT :limit)"
        sql += " ORDER BY time, id"
        params = {"lo": lo, "hi": hi, "since": -1e300 if since is None else since, "limit": limit}
        with self._guard():
            return [event_from_row(row[:18]) for row in self._conn.execute(sql, params)]

    def events_between(self, start: float, end: float) -> list[EventRow]:
        """Events with ``start <= time < end``, oldest first."""
        with self._guard():
            return [
                event_from_row(row) for row in self._conn.execute(SQL_EVENTS_BETWEEN, (start, end))
            ]

    # --- Bans: the lifecycle ---------------------------------------------------------------

    def begin_ban(
        self,
        address: str,
        prefix: int | None,
        *,
        created: float,
        expires: float | None,
        reason: str,
        rule: str | None,
        evidence: Mapping[str, Any],
        offence: int,
    ) -> BanRecord:
        """Write a ``pending`` ban, committed BEFORE any backend runs.

        ``prefix`` None bans the host. Raises DuplicateBanError if the network already has a
        live ban, ValueError for a bad address.
        """
        network = parse_network(address, prefix)
        values = (
            str(network.network_address), network.prefixlen, created, expires, reason, rule,
            to_json(evidence), offence, int(self.offline),
        )  # fmt: skip
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO bans (address, prefix, created, expires, reason, rule, evidence, "
                "offence, offline) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
        ban_id = cursor.lastrowid
        assert ban_id is not None
        return BanRecord(
            ban_id, values[0], values[1], created, expires, BanState.PENDING, reason, rule,
            MappingProxyType(json.loads(values[6])), offence, None, None, self.offline,
        )  # fmt: skip

    def record_action(
        self,
        ban_id: int,
        backend: str,
        detail: Mapping[str, Any] | None,
        state: ActionState | str,
        error: str | None = None,
        *,
        at: float,
    ) -> None:
        """Record what one backend did for a ban (one row per ban and backend, updated).

        ``detail`` None keeps the stored one (recording an undo keeps what was applied).
        """
        self.record_actions([(ban_id, backend, detail, ActionState(state), error)], at=at)

    def activate(self, ban_id: int) -> bool:
        """Mark a ban applied. False if it ended meanwhile: undo what was just applied."""
        return self._update_ban(
            f"UPDATE bans SET state = 'active' WHERE id = ? AND {LIVE_SQL}", (ban_id,)
        )

    def fail(self, ban_id: int, at: float) -> bool:
        """A pending ban no backend could apply; False if it was not pending."""
        return self._update_ban(
            "UPDATE bans SET state = 'failed', lifted_at = ? WHERE id = ? AND state = 'pending'",
            (at, ban_id),
        )

    def lift(self, ban_id: int, at: float, by: LiftedBy | str) -> bool:
        """End a live ban (``expired`` if ``by`` is expiry, else ``lifted``), BEFORE undoing it.

        False if it had already ended: the daemon's expiry and the CLI's unblock may race.
        """
        reason = LiftedBy(by)
        state = BanState.EXPIRED if reason is LiftedBy.EXPIRY else BanState.LIFTED
        return self._update_ban(
            f"UPDATE bans SET state = ?, lifted_at = ?, lifted_by = ? WHERE id = ? AND {LIVE_SQL}",
            (state.value, at, reason.value, ban_id),
        )

    # --- Bans: queries ---------------------------------------------------------------------

    def ban(self, ban_id: int) -> BanRecord | None:
        with self._guard():
            row = self._conn.execute(
                f"SELECT {BAN_COLS} FROM bans WHERE id = ?", (ban_id,)
            ).fetchone()
        return next(iter(self.records([row], ban_from_row)), None) if row else None

    def active_bans(self, now: float) -> list[BanRecord]:
        """Live bans (pending or active) not yet expired at ``now``: what start-up re-applies."""
        return self._bans(SQL_ACTIVE_BANS, (now,))

    def due_for_expiry(self, now: float) -> list[BanRecord]:
        """Live bans whose expiry time has come, soonest first."""
        return self._bans(SQL_DUE_FOR_EXPIRY, (now,))

    def bans_to_undo(self) -> list[BanRecord]:
        """Ended bans with an action still applied (a crash between lift and undo)."""
        return self._bans(SQL_BANS_TO_UNDO, ())

    def ban_for(self, address: str) -> BanRecord | None:
        """The live ban covering a host or network: the most specific one, or None.

        Only the prefix lengths that live bans use are tried (usually one or two), not all 129.
        """
        network = parse_network(address)
        with self._read():
            lengths = [p for (p,) in self._conn.execute(SQL_LIVE_PREFIXES)]
            covering = {
                (str(network.supernet(new_prefix=p).network_address), p)
                for p in lengths
                if p <= network.prefixlen
            }
            texts = sorted({text for text, _ in covering})
            sql = SQL_BAN_FOR.format(marks=", ".join("?" * len(texts)))
            rows = self.records(self._conn.execute(sql, texts), ban_from_row) if texts else []
        found = [ban for ban in rows if (ban.address, ban.prefix) in covering]
        return max(found, key=lambda ban: ban.prefix, default=None)

    def offences(self, address: str, since: float) -> int:
        """Bans of this exact host or network created at or after ``since``.

        Bans lifted by ``allow`` do not count: the admin declared them mistakes.
        """
        network = parse_network(address)
        params = (str(network.network_address), network.prefixlen, since)
        with self._guard():
            return int(self._conn.execute(SQL_OFFENCES, params).fetchone()[0])

    def bans_between(self, start: float, end: float) -> list[BanRecord]:
        """Bans whose life (created to lifted_at, or still live) overlaps ``[start, end)``."""
        return self._bans(SQL_BANS_BETWEEN, {"start": start, "end": end})

    # --- The never-block set ---------------------------------------------------------------

    def allow(self, address_or_prefix: str, at: float, comment: str = "") -> str:
        """Add to the never-block set (a repeat keeps the first ``added``); the 'ADDR/LEN'."""
        network = parse_network(address_or_prefix)
        with self._write() as conn:
            conn.execute(
                "INSERT INTO allowed (address, prefix, added, comment) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (address, prefix) DO UPDATE SET comment = excluded.comment",
                (str(network.network_address), network.prefixlen, at, comment),
            )
        return str(network)

    def disallow(self, address_or_prefix: str) -> bool:
        """Remove an exact entry from the never-block set; False if it was not there."""
        network = parse_network(address_or_prefix)
        with self._write() as conn:
            cursor = conn.execute(
                "DELETE FROM allowed WHERE address = ? AND prefix = ?",
                (str(network.network_address), network.prefixlen),
            )
        return cursor.rowcount > 0

    def allowed(self) -> list[str]:
        """The never-block set as 'ADDR/LEN' texts, oldest first."""
        return [entry.network for entry in self.allowed_entries()]

    def allowed_entries(self) -> list[AllowRecord]:
        with self._guard():
            rows = self._conn.execute(
                "SELECT address, prefix, added, comment FROM allowed ORDER BY added, address"
            ).fetchall()
        return [AllowRecord(f"{a}/{p}", added, comment) for a, p, added, comment in rows]

    # --- Plumbing --------------------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction for every change made inside (many bans at once: one commit, not
        one per step); all or nothing. Nests: only the outermost commits."""
        if self._batched:
            self._batched += 1
            try:
                yield
            finally:
                self._batched -= 1
            return
        with sqlite_errors(self.path), schema.transaction(self._conn):
            self._batched = 1
            try:
                yield
            finally:
                self._batched = 0

    def _bans(self, sql: str, params: Any) -> list[BanRecord]:
        with self._guard():
            return self.records(self._conn.execute(sql, params), ban_from_row)

    def _update_ban(self, sql: str, params: tuple[Any, ...]) -> bool:
        with self._write() as conn:
            return conn.execute(sql, params).rowcount == 1

    @contextmanager
    def _guard(self) -> Iterator[None]:
        with sqlite_errors(self.path):
            yield

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self._batched:
            with sqlite_errors(self.path):
                yield self._conn
            return
        with sqlite_errors(self.path), schema.transaction(self._conn):
            yield self._conn

    @contextmanager
    def _read(self) -> Iterator[None]:
        """Several reads from one snapshot (inside ``batch``: its transaction)."""
        if self._batched:
            with sqlite_errors(self.path):
                yield
            return
        with sqlite_errors(self.path), schema.transaction(self._conn, write=False):
            yield


def _event_values(row: EventRow) -> tuple[Any, ...]:
    src, key = host_text_key(row.src)
    dst = host_text_key(row.dst)[0]
    return (
        row.time, src, dst, row.proto, row.port, row.kind, row.action, row.reason, row.mode,
        row.rule, row.hits, row.ports_seen, row.flags, int(row.ip_options), row.score,
        row.contacts, row.scanner, row.group, key,
    )  # fmt: skip
