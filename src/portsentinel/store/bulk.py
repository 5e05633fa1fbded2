"""Many bans at once: the questions and steps of ``Store``'s ban lifecycle for a whole batch.

A distributed scan or a fleet's decisions bring thousands of bans together. Asked one by one,
"is it banned already?" reads every live prefix length each time (O(n) per ban, O(n^2) in
all) and each step is its own statement; here each question is one query per few hundred
addresses and each step a few statements (rows inserted ROWS_PER_INSERT to a statement,
``insert_many``). The order of steps and so the ``kill -9`` safety are ``Store``'s
(``sqlite.py``): pending before any backend, actions, then active. Call these inside
``Store.batch`` so that a batch's steps share one transaction (and a large batch inside
``Store.burst``, for its page cache).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import lru_cache
from itertools import chain
from types import MappingProxyType
from typing import Any, Final, NamedTuple

from portsentinel.networks import canonical_ipv4, canonical_ipv6
from portsentinel.store.connect import CACHE_KIB
from portsentinel.store.records import (
    BAN_COLS,
    BanRecord,
    BanState,
    ban_from_row,
    to_json,
)
from portsentinel.store.schema import LIVE_SQL, covering_network, host_text_key, parse_network

CHUNK: Final = 500  # addresses per ``IN (...)``: far below SQLite's variable limit
# Named: with the columns of version 7 the planner would rather take ``bans_address_created``,
# which walks every ban an address ever had, not only its live one.
SQL_BAN_FOR: Final = (
    f"SELECT {BAN_COLS} FROM bans INDEXED BY bans_live WHERE {LIVE_SQL} AND address IN ({{marks}})"
)
# Each live ban's index entry once (the index holds both columns), not its row; the planner
# would rather walk ``bans_live_expires`` and read every live row (three times the cost).
SQL_LIVE_LENGTHS: Final = (
    "SELECT DISTINCT prefix, instr(address, ':') > 0 FROM bans INDEXED BY bans_live "
    f"WHERE {LIVE_SQL}"
)
BURST_MIN: Final = 512  # bans written at once that raise the page cache (``burst``)
BURST_CACHE_KIB: Final = 16_384
_STATES: Final = {False: BanState.PENDING.value, True: BanState.ACTIVE.value}


class NewBan(NamedTuple):
    """One ban for ``begin_bans``: what ``Store.begin_ban`` takes (a tuple: a burst makes
    thousands, and a frozen dataclass costs several times as much to build)."""

    address: str
    prefix: int | None
    created: float
    expires: float | None
    reason: str
    rule: str | None
    evidence: Mapping[str, Any]
    offence: int
    # Every planned action is applied already (an nftables element the detection loop sent,
    # recorded in the same transaction): written ``active``, not ``pending``.
    active: bool = False
    # The action the ban's row holds (``store/held.py``): its backend and its detail less the
    # ban's own fields, as JSON text (the same text for a whole batch).
    held: str | None = None
    held_detail: str | None = None


_INSERT_BANS: Final = (
    "INSERT INTO bans (id, address, prefix, created, expires, state, reason, rule, evidence, "
    "offence, offline, held, held_detail) VALUES "
)
# Rows per multi-row INSERT: 64 rows of 13 values stay under the 999 variables of old SQLite
# builds. ``executemany`` steps once per row and gives the GIL back and takes it again each
# time: beside the busy detection loop each row waits for it. One step per 64 rows does the
# same inserts with a fraction of that, and a quarter less CPU.
ROWS_PER_INSERT: Final = 64


@lru_cache(maxsize=16)
def _values(width: int, rows: int) -> str:
    row = f"({', '.join('?' * width)})"
    return ", ".join([row] * rows)


def insert_many(conn: sqlite3.Connection, head: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """``head`` (``INSERT INTO t (cols) VALUES ``) for every row of ``rows`` (each as wide as
    the columns), ROWS_PER_INSERT rows per statement."""
    if not rows:
        return
    width = len(rows[0])
    full = len(rows) - len(rows) % ROWS_PER_INSERT
    if full:
        sql = head + _values(width, ROWS_PER_INSERT)
        for start in range(0, full, ROWS_PER_INSERT):
            conn.execute(sql, list(chain.from_iterable(rows[start : start + ROWS_PER_INSERT])))
    if full < len(rows):
        conn.executemany(head + _values(width, 1), rows[full:])


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _marks(count: int) -> str:
    return ", ".join("?" * count)


class BulkBans:
    """Mixed into ``Store``; see the module docstring."""

    _conn: sqlite3.Connection
    offline: bool

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _guard(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    @contextmanager
    def burst(self, size: int) -> Iterator[None]:
        """``size`` bans written inside: from BURST_MIN of them on, the page cache is
        BURST_CACHE_KIB meanwhile (then the connection's own again, as ``roll_up`` does). Each
        ban inserts into ``bans_address_created`` at a random place: once a store holds a
        history of bans, the connection's own cache keeps reading those pages back."""
        if size < BURST_MIN:
            yield
            return
        with self._guard():
            self._conn.execute(f"PRAGMA cache_size = -{BURST_CACHE_KIB}")
        try:
            yield
        finally:
            with self._guard():
                self._conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")

    def _read(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    def live_bans_for(self, hosts: Iterable[str]) -> dict[str, BanRecord]:
        """host address text (as given) -> the most specific live ban covering it; hosts
        without one are left out. ValueError for a text that is not a host address."""
        with self._read():
            # The prefix lengths live bans use, per family (IPv4 ones only cover IPv4 hosts).
            lengths: dict[bool, list[int]] = {False: [], True: []}
            for prefix, v6 in self._conn.execute(SQL_LIVE_LENGTHS):
                lengths[bool(v6)].append(prefix)
            if not lengths[False] and not lengths[True]:  # a burst on a quiet store
                for text in hosts:
                    host_text_key(text)  # still refused when it is not a host address
                return {}
            wanted = {text: host_text_key(text)[0] for text in hosts}
            covering: dict[str, list[tuple[str, int]]] = {}
            for v6, width in ((False, 32), (True, 128)):
                exact = width in lengths[v6]
                shorter = [p for p in lengths[v6] if p < width]  # prefix bans: what covers
                for text, host in wanted.items():
                    if (":" in host) is v6:
                        pairs = [(host, width)] if exact else []
                        if shorter:
                            pairs += [(covering_network(host, p), p) for p in shorter]
                        covering[text] = pairs
            texts = sorted({t for pairs in covering.values() for t, _ in pairs})
            found: dict[tuple[str, int], BanRecord] = {}
            for part in _chunks(texts):
                marks = _marks(len(part))
                sql = SQL_BAN_FOR.format(marks=marks)
                for row in self._conn.execute(sql, part):
                    ban = ban_from_row(row)
                    found[(ban.address, ban.prefix)] = ban
        out = {}
        for text, pairs in covering.items():
            bans = [found[pair] for pair in pairs if pair in found]
            if bans:
                out[text] = max(bans, key=lambda ban: ban.prefix)
        return out

    def offences_many(self, hosts: Iterable[str], since: float) -> dict[str, int]:
        """``Store.offences`` for many hosts: host text (as given) -> bans since ``since``."""
        wanted = {text: host_text_key(text)[0] for text in hosts}
        texts = sorted(set(wanted.values()))
        counts: dict[tuple[str, int], int] = {}
        with self._read():
            for part in _chunks(texts):
                sql = (
                    "SELECT address, prefix, count(*) FROM bans WHERE address IN "
                    f"({_marks(len(part))}) AND created >= ? "
                    "AND coalesce(lifted_by, '') <> 'allow' GROUP BY address, prefix"
                )
                for address, prefix, n in self._conn.execute(sql, (*part, since)):
                    counts[(address, prefix)] = n
        return {
            text: counts.get((host, 128 if ":" in host else 32), 0) for text, host in wanted.items()
        }

    def begin_bans(self, bans: Sequence[NewBan]) -> list[BanRecord]:
        """``Store.begin_ban`` for many: every one ``pending`` (``active`` where ``NewBan``
        says so) in one statement, records in the order given. Raises DuplicateBanError
        (nothing written) if one already has a live ban."""
        if not bans:
            return []
        offline = int(self.offline)
        values = []
        with self._write() as conn:
            # The ids are given, not read back: inside the write lock nobody else inserts.
            (last,) = conn.execute("SELECT coalesce(max(id), 0) FROM bans").fetchone()
            for ban_id, ban in enumerate(bans, last + 1):
                if ban.prefix in (None, 32) and canonical_ipv4(ban.address):
                    address, prefix = ban.address, 32
                elif ban.prefix in (None, 128) and canonical_ipv6(ban.address):
                    address, prefix = ban.address, 128
                else:
                    network = parse_network(ban.address, ban.prefix)
                    address, prefix = str(network.network_address), network.prefixlen
                values.append((
                    ban_id, address, prefix, ban.created, ban.expires, _STATES[ban.active],
                    ban.reason, ban.rule, to_json(ban.evidence), ban.offence, offline,
                    ban.held, ban.held_detail,
                ))  # fmt: skip
            insert_many(conn, _INSERT_BANS, values)
        state = {False: BanState.PENDING, True: BanState.ACTIVE}
        return [
            BanRecord(v[0], v[1], v[2], v[3], v[4], state[ban.active], v[6], v[7],
                      MappingProxyType(dict(ban.evidence)), v[9], None, None, self.offline)
            for v, ban in zip(values, bans, strict=True)
        ]  # fmt: skip

    def activate_many(self, ban_ids: Sequence[int]) -> set[int]:
        """``Store.activate`` for many: the ids marked active (the others ended meanwhile)."""
        done: set[int] = set()
        with self._write() as conn:
            for part in _chunks(ban_ids):
                marks = _marks(len(part))
                sql = f"UPDATE bans SET state = 'active' WHERE id IN ({marks}) AND {LIVE_SQL}"
                if conn.execute(sql, part).rowcount == len(part):
                    done.update(part)  # the usual case: one step, not one per row returned
                    continue
                sql = f"SELECT id FROM bans WHERE id IN ({marks}) AND state = 'active'"
                done.update(ban_id for (ban_id,) in conn.execute(sql, part))
        return done

    def fail_many(self, ban_ids: Sequence[int], at: float) -> None:
        """``Store.fail`` for many pending bans that no backend could apply."""
        with self._write() as conn:
            for part in _chunks(ban_ids):
                conn.execute(
                    f"UPDATE bans SET state = 'failed', lifted_at = ? WHERE id IN "
                    f"({_marks(len(part))}) AND state = 'pending'",
                    (at, *part),
                )
