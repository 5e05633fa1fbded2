"""Opening the store's file (store/connect.py), through ``Store.open`` and on its own: the
file's modes, WAL, refusals, several openers at once, SQLite errors named by file."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from portsentinel import __version__, paths
from portsentinel.errors import StoreError
from portsentinel.store import schema
from portsentinel.store.connect import DuplicateBanError, connect, sqlite_errors
from portsentinel.store.records import EventRow
from portsentinel.store.sqlite import Store

T0 = 1_700_000_000.0


def event(t: float, port: int = 1) -> EventRow:
    return EventRow(t, "198.18.0.7", "198.18.0.1", "tcp", port, "SYN", "alert", "below trigger")


@pytest.fixture
def state_dir(tmp_path: Path) -> str:
    return str(tmp_path / "state")


def test_connect_names_the_file_after_paths_store_name(
    state_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(paths, "STORE_NAME", "other.db")  # read when a store is opened
    conn, path, offline = connect(state_dir, 1.0, None)
    conn.close()
    assert (path, offline) == (os.path.join(state_dir, "other.db"), False)
    assert os.path.exists(path)


def test_connect_refuses_a_state_dir_it_cannot_make(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot create the state directory"):
        connect(str(blocker / "state"), 1.0, None)


@pytest.mark.parametrize(
    ("raised", "kind", "text"),
    [
        (sqlite3.IntegrityError("UNIQUE constraint failed: bans.address"), DuplicateBanError,
         "already has a live ban"),
        (sqlite3.IntegrityError("CHECK constraint failed"), StoreError, "CHECK constraint"),
        (sqlite3.OperationalError("database is locked"), StoreError, "database is locked"),
        (sqlite3.DatabaseError("file is not a database"), StoreError, "not a usable"),
        (sqlite3.InterfaceError("bad parameter"), StoreError, "bad parameter"),
    ],
)  # fmt: skip
def test_sqlite_errors_become_store_errors_naming_the_file(
    raised: sqlite3.Error, kind: type[StoreError], text: str
) -> None:
    with (
        pytest.raises(kind, match=f"^/x/portsentinel.db: .*{text}") as caught,
        sqlite_errors("/x/portsentinel.db"),
    ):
        raise raised
    assert caught.value.__cause__ is raised


FILES = ("portsentinel.db", "portsentinel.db-wal", "portsentinel.db-shm")


def test_new_store_makes_private_files_at_the_current_version(state_dir: str) -> None:
    old = os.umask(0o077)  # the modes are set, not left to the umask
    try:
        with Store.open(state_dir) as store:
            assert store.schema_version() == schema.SCHEMA_VERSION
            assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
            assert store._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
            meta = store.meta()
            store.allow("198.18.0.1", T0)
            modes = {name: stat.S_IMODE(os.stat(Path(state_dir, name)).st_mode) for name in FILES}
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o750
    assert modes == dict.fromkeys(FILES, 0o640)  # SQLite gives -wal and -shm the file's mode
    assert meta["offline"] == "0"
    assert meta["program_version"] == __version__
    assert float(meta["created_at"]) > 1_600_000_000
    raw = sqlite3.connect(os.path.join(state_dir, "portsentinel.db"))
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


def test_reopening_keeps_data_and_meta(state_dir: str) -> None:
    with Store.open(state_dir) as store:
        store.add_events([event(T0)])
        created_at = store.meta()["created_at"]
    with Store.open(state_dir) as store:
        assert len(store.events_between(0, 2 * T0)) == 1
        assert store.meta()["created_at"] == created_at


def test_garbage_file_is_a_store_error_naming_the_file(state_dir: str) -> None:
    os.makedirs(state_dir)
    path = os.path.join(state_dir, "portsentinel.db")
    Path(path).write_bytes(b"this is not an SQLite database at all" * 200)
    with pytest.raises(StoreError, match=re.escape(path) + ": not a usable PortSentinel store"):
        Store.open(state_dir)


def test_damaged_pages_are_a_store_error_when_read(state_dir: str) -> None:
    with Store.open(state_dir) as store:
        store.add_events([event(float(i), port=i) for i in range(5000)])
    path = os.path.join(state_dir, "portsentinel.db")  # closed: the WAL is checkpointed in it
    with open(path, "r+b") as damaged:
        for offset in range(3 * 4096, os.path.getsize(path), 5 * 4096):
            damaged.seek(offset)
            damaged.write(b"\xde\xad\xbe\xef" * 256)
    with Store.open(state_dir) as store, pytest.raises(StoreError, match="malformed"):
        store.events_between(0, T0)


def test_foreign_sqlite_file_is_refused(state_dir: str) -> None:
    os.makedirs(state_dir)
    path = os.path.join(state_dir, "portsentinel.db")
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE notes (x)")
    other.commit()
    other.close()
    with pytest.raises(StoreError, match="not a PortSentinel store"):
        Store.open(state_dir)


def test_file_from_a_newer_program_is_refused(state_dir: str) -> None:
    Store.open(state_dir).close()
    raw = sqlite3.connect(os.path.join(state_dir, "portsentinel.db"))
    raw.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StoreError, match=rf"schema version {schema.SCHEMA_VERSION + 1} is newer"):
        Store.open(state_dir)


def test_offline_and_live_stores_are_not_mixed(tmp_path: Path) -> None:
    live, replay = str(tmp_path / "live"), str(tmp_path / "replay")
    Store.open(live).close()
    with Store.open(replay, offline=True) as store:
        assert store.offline
        record = store.begin_ban(
            "198.18.0.9", None, created=T0, expires=None, reason="scan", rule=None,
            evidence={}, offence=1,
        )  # fmt: skip
        assert record.offline
    with pytest.raises(StoreError, match="live store"):
        Store.open(live, offline=True)
    with pytest.raises(StoreError, match=r"offline \(replay\) store"):
        Store.open(replay)
    with Store.open(replay, offline=None) as reader:  # list, why, report read either kind
        assert reader.offline
        assert reader.ban_for("198.18.0.9") is not None


OPENER = """
import sys
from portsentinel.store.sqlite import Store
Store.open(sys.argv[1]).close()
"""


def test_processes_creating_the_store_at_once_all_succeed(state_dir: str) -> None:
    children = [
        subprocess.Popen([sys.executable, "-c", OPENER, state_dir], stderr=subprocess.PIPE)
        for _ in range(8)
    ]
    errors = [child.communicate(timeout=60)[1].decode() for child in children]
    assert [child.returncode for child in children] == [0] * 8, errors
    with Store.open(state_dir) as store:
        assert store.schema_version() == schema.SCHEMA_VERSION


def test_opening_waits_for_a_writer_of_a_file_not_yet_in_wal(state_dir: str) -> None:
    # Another process holds a write lock on the new file before anyone switched it to WAL:
    # SQLite answers the switch with "locked" at once (no busy handler), so the opener must
    # wait itself (seen in CI: eight processes creating the store at once, one failed).
    os.makedirs(state_dir)
    path = os.path.join(state_dir, "portsentinel.db")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    released = threading.Event()

    def release() -> None:
        time.sleep(0.3)
        released.set()  # before the commit: the opener cannot get past it earlier
        other.execute("COMMIT")

    threading.Thread(target=release, daemon=True).start()
    with Store.open(state_dir, busy_timeout=30.0) as store:
        assert released.is_set()
        assert store.schema_version() == schema.SCHEMA_VERSION
    other.close()
