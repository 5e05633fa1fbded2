"""One daemon per state directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from portsentinel.daemon.lock import AlreadyRunningError, StateLock


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
