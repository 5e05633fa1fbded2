"""The store's schema: the DDL of each version, the ordered migrations, how addresses are kept.

``PRAGMA user_version`` holds the schema version. ``MIGRATIONS[i]`` turns a version ``i`` file
into a version ``i + 1`` file; the store runs each step in its own transaction, so a crash in
the middle of an upgrade leaves the file at the last completed version. Steps are append-only:
once released, a step's statements never change (a test keeps version 1 frozen), and a change
of schema is a new step at the end.

Version 1 holds what the ban lifecycle needs (issue 4): events, bans, the actions that applied
each ban, the never-block set. Version 2 adds what reports and prefix bans need (issue 5): a
sortable binary source key so that "events from this /64" is one index range, the event keys
``flags`` and ``ip_options``, and indexes for the ban timeline. Version 3 lets an action be
``uncertain`` (issue 15: a command the process died running may or may not have run).
Version 4 adds the report's rollups (issue 13, ``store/rollup.py``), empty: the events of an
upgraded store are folded into them afterwards, a chunk per transaction. Version 5 adds the
events' TRW score, contacts and scanner tool. Version 6 adds the fleet's rows (issue 12,
``store/fleet.py``): the outbox to CrowdSec's LAPI and its decisions; version 7 a ban's later
changes (a ban cut to DECOY_BAN_DURATION, ``store/changes.py``) and the decoy group of an
event's source. Version 8 lets a ban's row hold its first action (issue 14: one row per
ban in a burst, not a ban row and an action row; ``store/held.py``).

Addresses are stored as normalised text (``ipaddress``'s ``str``; an IPv4-mapped IPv6 host is
kept as its IPv4 address, as events print it). Events also keep ``src_key``: the source as
16 bytes, IPv4 as IPv4-mapped IPv6, so that every prefix of either family is one contiguous
range of keys.
"""

from __future__ import annotations

import ipaddress
import socket
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from portsentinel import __version__
from portsentinel.errors import StoreError
from portsentinel.networks import canonical_ipv4, canonical_ipv6
from portsentinel.store.fleet import V6
from portsentinel.store.rollup import V4

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_V4_MAPPED: Final = b"\x00" * 10 + b"\xff\xff"

# States in which a ban holds (or is about to hold) firewall rules. The partial indexes below
# repeat this list word for word: SQLite uses a partial index only when the query's WHERE
# clause contains the index's condition as written.
LIVE_SQL: Final = "state IN ('pending', 'active')"
# Actions that still have something in the kernel or in a file to undo.
OPEN_ACTION_SQL: Final = "state IN ('applied', 'undo_failed')"


# --- Addresses -----------------------------------------------------------------------------


def parse_network(text: str, prefix: int | None = None) -> Network:
    """A host (``prefix`` None: /32 or /128) or a network from ``ADDR``, ``ADDR/LEN`` or both.

    Host bits below the prefix are cleared (``2001:db8::5/64`` is ``2001:db8::/64``). An
    IPv4-mapped IPv6 host becomes its IPv4 address. Raises ValueError for anything else.
    """
    text = text.strip()
    if "/" in text:
        if prefix is not None:
            raise ValueError(f"{text!r}: prefix given twice")
        return ipaddress.ip_network(text, strict=False)
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and prefix in (None, 128):
        mapped = address.ipv4_mapped
        if mapped is not None:
            address, prefix = mapped, None
    length = address.max_prefixlen if prefix is None else prefix
    if isinstance(length, bool) or not 0 <= length <= address.max_prefixlen:
        raise ValueError(f"{text!r}: prefix {prefix!r} out of range")
    return ipaddress.ip_network((address, length), strict=False)


def covering_network(host: str, prefix: int) -> str:
    """The network address text of ``host``'s network of length ``prefix`` (a shorter one
    than the host's width), as ``parse_network(host).supernet(new_prefix=prefix)`` writes it,
    at a fraction of its cost: a burst's every host is asked about every live prefix length."""
    v6 = ":" in host
    width = 128 if v6 else 32
    packed = socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, host)
    value = int.from_bytes(packed, "big") >> (width - prefix) << (width - prefix)
    if not v6:
        return socket.inet_ntoa(value.to_bytes(4, "big"))
    text = socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))
    return text if "." not in text else str(ipaddress.IPv6Address(value))  # an IPv4 tail


def address_key(address: Address) -> bytes:
    """The 16-byte sort key of an address: IPv4 as IPv4-mapped IPv6."""
    if isinstance(address, ipaddress.IPv4Address):
        return _V4_MAPPED + address.packed
    return address.packed


def key_range(network: Network) -> tuple[bytes, bytes]:
    """First and last ``src_key`` inside a network, for ``src_key BETWEEN ? AND ?``."""
    return address_key(network.network_address), address_key(network.broadcast_address)


@lru_cache(maxsize=8192)  # scans repeat one source thousands of times: parse it once
def host_text_key(text: str) -> tuple[str, bytes]:
    """The normalised text and sort key of one host address; ValueError if it is not one."""
    if canonical_ipv4(text):
        return text, _V4_MAPPED + socket.inet_aton(text)
    if canonical_ipv6(text):
        return text, socket.inet_pton(socket.AF_INET6, text)
    network = parse_network(text)
    if network.prefixlen != network.max_prefixlen:  # pragma: no cover - parse_network(host)
        raise ValueError(f"{text!r} is not a host address")
    address = network.network_address
    return str(address), address_key(address)


# --- Migrations ----------------------------------------------------------------------------

Step = Callable[[sqlite3.Connection], None]


@dataclass(frozen=True, slots=True)
class Migration:
    """One step: ``apply`` turns a version ``version - 1`` file into a version ``version`` one."""

    version: int
    summary: str
    apply: Step


def _run_all(statements: tuple[str, ...]) -> Step:
    """A step made of plain statements (``executescript`` would commit; these must not)."""

    def step(conn: sqlite3.Connection) -> None:
        for statement in statements:
            conn.execute(statement)

    return step


V1: Final[tuple[str, ...]] = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        src TEXT NOT NULL,
        dst TEXT NOT NULL,
        proto TEXT NOT NULL CHECK (proto IN ('tcp', 'udp')),
        port INTEGER NOT NULL CHECK (port BETWEEN 0 AND 65535),
        kind TEXT NOT NULL,
        action TEXT NOT NULL,
        reason TEXT NOT NULL,
        mode TEXT,
        rule TEXT,
        hits INTEGER NOT NULL DEFAULT 0,
        ports_seen INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX events_time ON events (time)",
    "CREATE INDEX events_src_time ON events (src, time)",
    """CREATE TABLE bans (
        id INTEGER PRIMARY KEY,
        address TEXT NOT NULL,
        prefix INTEGER NOT NULL CHECK (prefix BETWEEN 0 AND 128),
        created REAL NOT NULL,
        expires REAL CHECK (expires IS NULL OR expires >= created),
        state TEXT NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'active', 'lifted', 'expired', 'failed')),
        reason TEXT NOT NULL,
        rule TEXT,
        evidence TEXT NOT NULL DEFAULT '{}',
        offence INTEGER NOT NULL DEFAULT 1 CHECK (offence >= 1),
        lifted_at REAL,
        lifted_by TEXT,
        offline INTEGER NOT NULL DEFAULT 0 CHECK (offline IN (0, 1))
    )""",
    # At most one live ban per network: a second one is a bug or a race, never two rules.
    f"CREATE UNIQUE INDEX bans_live ON bans (address, prefix) WHERE {LIVE_SQL}",
    f"CREATE INDEX bans_live_expires ON bans (expires) WHERE {LIVE_SQL}",
    "CREATE INDEX bans_address_created ON bans (address, created)",
    """CREATE TABLE ban_actions (
        id INTEGER PRIMARY KEY,
        ban_id INTEGER NOT NULL REFERENCES bans (id) ON DELETE CASCADE,
        backend TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '{}',
        state TEXT NOT NULL CHECK (state IN ('applied', 'failed', 'undone', 'undo_failed')),
        attempts INTEGER NOT NULL DEFAULT 1,
        last_error TEXT,
        updated REAL NOT NULL,
        UNIQUE (ban_id, backend)
    )""",
    f"CREATE INDEX ban_actions_open ON ban_actions (ban_id) WHERE {OPEN_ACTION_SQL}",
    """CREATE TABLE allowed (
        address TEXT NOT NULL,
        prefix INTEGER NOT NULL CHECK (prefix BETWEEN 0 AND 128),
        added REAL NOT NULL,
        comment TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (address, prefix)
    ) WITHOUT ROWID""",
)

_V2_COLUMNS: Final[tuple[str, ...]] = (
    "ALTER TABLE events ADD COLUMN src_key BLOB NOT NULL DEFAULT x''",
    "ALTER TABLE events ADD COLUMN flags TEXT",
    "ALTER TABLE events ADD COLUMN ip_options INTEGER NOT NULL DEFAULT 0",
)
_V2_INDEXES: Final[tuple[str, ...]] = (
    "DROP INDEX events_src_time",
    # Serves one host (src_key = ?) and one prefix (src_key BETWEEN ? AND ?) alike.
    "CREATE INDEX events_src_key_time ON events (src_key, time)",
    "CREATE INDEX bans_created ON bans (created)",
    "CREATE INDEX bans_lifted ON bans (lifted_at) WHERE lifted_at IS NOT NULL",
)


def _backfill_src_key(conn: sqlite3.Connection) -> None:
    """Give version 1 events their key: one UPDATE per distinct source, via the old index."""
    sources = [row[0] for row in conn.execute("SELECT DISTINCT src FROM events")]
    for src in sources:
        try:
            key = host_text_key(src)[1]
        except ValueError:
            continue  # not written by us; keeps the empty key and stays out of prefix ranges
        conn.execute("UPDATE events SET src_key = ? WHERE src = ?", (key, src))


def _v2(conn: sqlite3.Connection) -> None:
    _run_all(_V2_COLUMNS)(conn)
    _backfill_src_key(conn)
    _run_all(_V2_INDEXES)(conn)


# SQLite cannot change a CHECK constraint: the table is rebuilt under its name, rows and ids
# kept. A row that broke the old constraints (a file edited by hand) is carried as it is, for
# the readers to name and skip (``store/rows.py``), rather than failing the upgrade or being
# dropped unsaid; only rows of bans that no longer exist (deleted by hand with foreign keys
# off), which nothing could ever read, are left behind.
_V3_TABLE: Final = """CREATE TABLE ban_actions (
        id INTEGER PRIMARY KEY,
        ban_id INTEGER NOT NULL REFERENCES bans (id) ON DELETE CASCADE,
        backend TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '{}',
        state TEXT NOT NULL
            CHECK (state IN ('applied', 'failed', 'undone', 'undo_failed', 'uncertain')),
        attempts INTEGER NOT NULL DEFAULT 1,
        last_error TEXT,
        updated REAL NOT NULL,
        UNIQUE (ban_id, backend)
    )"""
_ACTION_COLUMNS: Final = "id, ban_id, backend, detail, state, attempts, last_error, updated"
_V3_INDEXES: Final[tuple[str, ...]] = (
    f"CREATE INDEX ban_actions_open ON ban_actions (ban_id) WHERE {OPEN_ACTION_SQL}",
    "CREATE INDEX ban_actions_uncertain ON ban_actions (ban_id) WHERE state = 'uncertain'",
)


def _v3(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE ban_actions RENAME TO ban_actions_v2")
    conn.execute(_V3_TABLE)
    conn.execute("PRAGMA ignore_check_constraints = ON")
    try:
        conn.execute(
            f"INSERT INTO ban_actions ({_ACTION_COLUMNS}) SELECT {_ACTION_COLUMNS} "
            "FROM ban_actions_v2 WHERE ban_id IN (SELECT id FROM bans)"
        )
    finally:
        conn.execute("PRAGMA ignore_check_constraints = OFF")
    conn.execute("DROP TABLE ban_actions_v2")
    _run_all(_V3_INDEXES)(conn)


_V5: Final[tuple[str, ...]] = (
    "ALTER TABLE events ADD COLUMN score REAL",
    "ALTER TABLE events ADD COLUMN contacts INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE events ADD COLUMN scanner TEXT",
)


# A ban's changes after it began (issue 11: a ban cut to DECOY_BAN_DURATION once its source
# showed in a decoy group), one row each, for ``why`` and for the fleet, which withdraws what
# it pushed of a ban that was cut; and the decoy group an event's source was in.
_V7: Final[tuple[str, ...]] = (
    """CREATE TABLE ban_changes (
        id INTEGER PRIMARY KEY,
        ban_id INTEGER NOT NULL REFERENCES bans (id) ON DELETE CASCADE,
        at REAL NOT NULL,
        change TEXT NOT NULL,
        expires_before REAL,
        expires_after REAL,
        detail TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX ban_changes_ban ON ban_changes (ban_id)",
    "CREATE INDEX ban_changes_at ON ban_changes (at)",
    "ALTER TABLE events ADD COLUMN decoy_group TEXT",
)


# The action a ban's row holds (``store/held.py``): ``held`` names its backend, for good;
# ``held_detail`` is its detail less the ban's own fields while the row holds it, NULL once its
# outcome moved to ``ban_actions``. The index holds the ended bans whose held action is still
# applied, which start-up undoes; a ban written live does not enter it.
HELD_OPEN_SQL: Final = f"held_detail IS NOT NULL AND NOT ({LIVE_SQL})"
_V8: Final[tuple[str, ...]] = (
    "ALTER TABLE bans ADD COLUMN held TEXT",
    "ALTER TABLE bans ADD COLUMN held_detail TEXT CHECK (held_detail IS NULL OR held IS NOT NULL)",
    f"CREATE INDEX bans_held_open ON bans (id) WHERE {HELD_OPEN_SQL}",
)


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "events, bans, ban actions, never-block set", _run_all(V1)),
    Migration(2, "source keys for prefix queries, event flags, ban timeline indexes", _v2),
    Migration(3, "an action may be uncertain (a command the process died running)", _v3),
    Migration(4, "rollups for the report (filled by Store.roll_up, chunk by chunk)", _run_all(V4)),
    Migration(5, "event score, contacts (SCAN_RULE trw) and scanner tool", _run_all(_V5)),
    Migration(6, "the fleet: outbox, local bans' fate there, its decisions", _run_all(V6)),
    Migration(7, "ban changes (a ban cut as a decoy's) and events' decoy group", _run_all(_V7)),
    Migration(8, "a ban's row may hold its first action (one row per ban)", _run_all(_V8)),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)


# --- Running them --------------------------------------------------------------------------


@contextmanager
def transaction(conn: sqlite3.Connection, *, write: bool = True) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` .. ``COMMIT`` on an autocommit connection; ROLLBACK on any error.

    IMMEDIATE takes the write lock at the start, so a writer waits (``busy_timeout``) for the
    other side's transaction instead of failing when a read would turn into a write. A read
    (``write=False``) only needs one snapshot for several statements: a plain BEGIN.
    """
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def migrate(conn: sqlite3.Connection, path: str, version: int) -> bool:
    """Bring a file at ``version`` to ``SCHEMA_VERSION``, one transaction per step.

    Returns whether a step ran. Refuses a file from a newer program, and an SQLite file that
    is not ours (version 0 with tables in it).
    """
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: schema version {version} is newer than this program's "
            f"({SCHEMA_VERSION}): it was written by a newer portsentinel"
        )
    ran = False
    for step in MIGRATIONS[version:]:
        with transaction(conn):
            # The other side (daemon or CLI) may have run this step while we waited.
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            if current != step.version - 1:
                continue
            if current == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise StoreError(f"{path}: an SQLite file, but not a PortSentinel store")
            step.apply(conn)
            conn.execute(f"PRAGMA user_version = {step.version}")
            ran = True
    return ran


def ensure_meta(conn: sqlite3.Connection, *, offline: bool, migrated: bool) -> dict[str, str]:
    """The meta rows, written if missing; ``program_version`` follows the last upgrade.

    ``created_at`` is the one time the store does not get from its caller: SQLite stamps it.
    """
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    if not migrated and "offline" in meta:
        return meta  # the common case: no write lock taken
    with transaction(conn):
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('created_at', "
            "printf('%.6f', (julianday('now') - 2440587.5) * 86400.0)), ('offline', ?)",
            ("1" if offline else "0",),
        )
        verb = "INSERT OR REPLACE" if migrated else "INSERT OR IGNORE"
        conn.execute(f"{verb} INTO meta (key, value) VALUES ('program_version', ?)", (__version__,))
        return dict(conn.execute("SELECT key, value FROM meta"))
