"""Opening the store's SQLite file: the file and its modes, WAL, pragmas, migrations, meta;
and SQLite's errors turned into the project's, naming the file.

``Store.open`` (``store/sqlite.py``) says what the caller may expect of an open store; this
module is how the file gets there, the same for the daemon and for every CLI connection.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from portsentinel import paths
from portsentinel.errors import StoreError
from portsentinel.store import schema

DEFAULT_BUSY_TIMEOUT: Final = 5.0  # seconds a writer waits for the other side's transaction
CACHE_KIB: Final = 512  # page cache per connection (SQLite's default: 2 MiB)


class DuplicateBanError(StoreError):
    """The network already has a live ban: a second one would mean a second rule."""


def connect(
    state_dir: str, busy_timeout: float, offline: bool | None
) -> tuple[sqlite3.Connection, str, bool]:
    """Open ``state_dir``'s store file, made if missing and upgraded if older: the connection,
    the file's path and whether it is an offline store (see ``Store.open`` for ``offline``)."""
    path = os.path.join(state_dir, paths.STORE_NAME)
    _create_file(state_dir, path)
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open the store: {exc}") from exc
    try:
        file_offline = _prepare(conn, path, busy_timeout, offline)
    except BaseException:
        conn.close()
        raise
    return conn, path, file_offline


@contextmanager
def sqlite_errors(path: str) -> Iterator[None]:
    """SQLite errors become StoreErrors naming the file; a live duplicate is its own kind."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        if "bans.address" in str(exc):
            raise DuplicateBanError(f"{path}: this network already has a live ban") from exc
        raise StoreError(f"{path}: {exc}") from exc
    except sqlite3.OperationalError as exc:  # locked past busy_timeout, disk full, read-only
        raise StoreError(f"{path}: {exc}") from exc
    except sqlite3.DatabaseError as exc:  # not a database, or corrupt
        raise StoreError(f"{path}: not a usable PortSentinel store ({exc})") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: {exc}") from exc


def _create_file(state_dir: str, path: str) -> None:
    """Make the directory (0750) and an empty file (0640) if missing, whatever the umask."""
    if not os.path.isdir(state_dir):
        try:
            os.makedirs(state_dir, mode=0o750)
            os.chmod(state_dir, 0o750)
        except FileExistsError:
            pass  # made at the same moment by the other side
        except OSError as exc:
            raise StoreError(f"{state_dir}: cannot create the state directory: {exc}") from exc
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"{path}: cannot create the store: {exc}") from exc
    try:
        os.fchmod(fd, 0o640)
    finally:
        os.close(fd)


def _use_wal(conn: sqlite3.Connection, busy_timeout: float) -> str:
    """Switch the file to WAL (kept in the file: usually already done); returns the mode.

    The switch needs the file to itself, and SQLite answers "locked" at once, without its
    busy handler, while another process opens or switches the same file: so it is retried
    here until ``busy_timeout`` has passed, like every other wait for the other side.
    """
    deadline = time.monotonic() + busy_timeout
    pause = 0.001
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            return str(mode).lower()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _prepare(
    conn: sqlite3.Connection, path: str, busy_timeout: float, offline: bool | None
) -> bool:
    """Pragmas, migrations and meta; returns whether the file is an offline store."""
    with sqlite_errors(path):
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        mode = _use_wal(conn, busy_timeout)
        if mode != "wal":
            raise StoreError(f"{path}: cannot use WAL journaling here (got {mode!r})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        # The daemon's page cache: 512 KiB instead of SQLite's 2 MiB. Writes are appends
        # and look-ups by key; a bigger cache only raises the daemon's resident memory.
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        migrated = schema.migrate(conn, path, version)
        meta = schema.ensure_meta(conn, offline=bool(offline), migrated=migrated)
    file_offline = meta.get("offline") == "1"
    if offline is not None and offline != file_offline:
        kind = "an offline (replay) store" if file_offline else "a live store"
        use = "replay records go elsewhere" if offline else "a live daemon cannot use it"
        raise StoreError(f"{path}: this is {kind}; {use}")
    return file_offline
