"""End to end: the ban path fails closed. Another process holds the state store's write lock
far longer than the daemon waits for it (an admin's open ``sqlite3`` session, a VACUUM): a
scanner's ban still reaches the kernel at once, ``status`` and the log say the store refuses
writes, and once the lock goes the waiting bans are stored and banning goes on.

(Before: the response worker ended with "database is locked"; detection went on, nothing was
banned any more, and the process never exited.)

Root, iproute2, nft (see ``banlab.py``); the forged SYNs stay inside the lab.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import netns
import pytest
from banlab import banned, burst, nft_elements, unavailable, wait_until
from daemon import PORTSENTINEL, Daemon

pytestmark = [pytest.mark.e2e]
_REASON = unavailable(("nft",))
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

SETTINGS = {"BAN_STRONG_PORTS": "1", "BLOCK_UDP": "0"}
FIRST, SECOND = "198.18.0.101", "198.18.0.102"

# Holds the store's write lock until its stdin closes (at most 120 s).
HOLDER = r"""
import sqlite3, sys, select
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
select.select([sys.stdin], [], [], 120)
conn.execute("ROLLBACK")
"""


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    with netns.Lab.create("pfc") as built:
        yield built


def status(lab: netns.Lab, daemon: Daemon) -> str:
    argv = [*PORTSENTINEL, "status", "--state-dir", str(daemon.directory)]
    done = lab.run(lab.target, ["timeout", "30", *argv], check=False, timeout=40)
    assert done.returncode == 0, done.stderr
    return done.stdout


def send(lab: netns.Lab, source: str) -> None:
    out, _ = burst(lab, [source], [80]).communicate(timeout=40)
    assert out.strip() == "1"


def test_a_locked_store_delays_the_record_never_the_ban(lab: netns.Lab, tmp_path: Path) -> None:
    daemon = Daemon.start(lab, tmp_path, settings=SETTINGS)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "portsentinel.db")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        send(lab, FIRST)
        wait_until(lambda: FIRST in (nft_elements(lab, 4) or {}) or None, "the ban in the kernel")
        daemon.wait_for_line("the state store refuses writes", deadline=60)
        assert "the state store refuses writes since" in status(lab, daemon)
        assert daemon.proc.poll() is None
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(30)
    try:
        daemon.wait_for_line("the state store takes writes again", deadline=60)
        wait_until(lambda: FIRST in banned(lab, daemon) or None, "the ban in the store")
        send(lab, SECOND)  # the worker is alive: the next scanner is banned and stored too
        wait_until(lambda: SECOND in banned(lab, daemon) or None, "the next ban in the store")
        assert SECOND in (nft_elements(lab, 4) or {})
        assert "refuses writes" not in status(lab, daemon)
    finally:
        code, stderr = daemon.stop()
    assert code == 0, stderr
    assert "response worker stopped" not in stderr


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs for the daemon's state, unmounted at the end."""
    mount = tmp_path / "state"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Take every free byte of the file system: a file written until ENOSPC."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):  # large writes first, then what is left
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_delays_the_record_never_the_ban(lab: netns.Lab, small_disk: Path) -> None:
    daemon = Daemon.start(lab, small_disk, settings=SETTINGS)
    filler = fill(small_disk)
    try:
        send(lab, FIRST)
        wait_until(lambda: FIRST in (nft_elements(lab, 4) or {}) or None, "the ban in the kernel")
        daemon.wait_for_line("the state store refuses writes", deadline=60)
        assert "disk is full" in status(lab, daemon)
        daemon.wait_for_line("events could not be written (No space left on device)", 30)
        assert daemon.proc.poll() is None
    finally:
        filler.unlink()
    try:
        daemon.wait_for_line("the state store takes writes again", deadline=60)
        wait_until(lambda: FIRST in banned(lab, daemon) or None, "the ban in the store")
        send(lab, SECOND)
        wait_until(lambda: SECOND in banned(lab, daemon) or None, "the next ban in the store")
    finally:
        code, stderr = daemon.stop()
    assert code == 0, stderr
    assert "Traceback" not in stderr
