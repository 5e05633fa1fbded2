"""One daemon per state directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from portsentinel.store.lock import AlreadyRunningError, StateLock, running_pid


def test_second_holder_is_refused_and_told_the_pid(tmp_path: Path) -> None:
    first = StateLock(str(tmp_path / "state"))
    first.acquire()
    second = StateLock(str(tmp_path / "state"))
    with pytest.raises(AlreadyRunningError, match=r"pid \d+"):
        second.acquire()
    first.release()
    second.acquire()  # free again once released
    second.release()


def test_lock_file_holds_the_pid(tmp_path: Path) -> None:
    lock = StateLock(str(tmp_path))
    lock.acquire()
    assert (tmp_path / "portsentinel.lock").read_text().strip() == str(os.getpid())
    lock.release()


def test_running_pid_is_the_lock_holder_only(tmp_path: Path) -> None:
    assert running_pid(str(tmp_path)) is None  # no lock file
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        assert running_pid(str(tmp_path)) == holder.pid
    finally:
        holder.terminate()
        holder.wait(30)
    assert running_pid(str(tmp_path)) is None  # the file stays, the lock died with it


# A stand-in daemon: its command line names portsentinel, it holds the lock until killed.
HOLDER = """
import sys, time
from portsentinel.store.lock import StateLock
StateLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""
