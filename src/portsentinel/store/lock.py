"""One daemon per state directory: an advisory lock, so two never fight over the firewall."""

from __future__ import annotations

import fcntl
import os

from portsentinel import paths
from portsentinel.errors import PortSentinelError


class AlreadyRunningError(PortSentinelError):
    """Another daemon holds the state directory's lock."""


class StateLock:
    """Holds ``DIR/portsentinel.lock`` (flock) for the daemon's life; the file keeps its pid.

    The kernel drops the lock when the process dies, even after ``kill -9``, so a stale file
    never blocks a restart.
    """

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, paths.LOCK_NAME)
        self._fd: int | None = None

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o750, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunningError(
                f"another portsentinel (pid {holder}) is running on {os.path.dirname(self.path)}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def running_pid(state_dir: str) -> int | None:
    """The pid of the daemon running on ``state_dir``, or None.

    The lock file names the pid; it is believed only while that process holds the lock
    (checked through /proc/locks, without taking the lock) and is a portsentinel process.
    """
    path = os.path.join(state_dir, paths.LOCK_NAME)
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            text = fh.read().strip()
        inode = os.stat(path).st_ino
    except OSError:
        return None
    if not text.isdigit():
        return None
    pid = int(text)
    try:
        with open("/proc/locks", encoding="ascii") as locks:
            held = any(_holds(line, pid, inode) for line in locks)
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            ours = b"portsentinel" in cmdline.read()
    except OSError:
        return None
    return pid if held and ours else None


def _holds(line: str, pid: int, inode: int) -> bool:
    # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" — pid, then major:minor:inode.
    fields = line.split()
    return (
        len(fields) >= 6
        and fields[1] == "FLOCK"
        and fields[4] == str(pid)
        and fields[5].rsplit(":", 1)[-1] == str(inode)
    )
