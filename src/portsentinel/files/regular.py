"""Read a file the program is given, by the admin or by the host, only if it is a regular file
and only up to a cap.

Why: ``open()`` of a FIFO waits for a writer for ever, and reading ``/dev/zero`` (or a file
that grows faster than it is read) never ends; a symlink loop fails with ELOOP, which
``os.path.exists`` reports as "no such file". A configuration, an ignore list, a defaults file,
resolv.conf or a capture named by mistake must be refused at once, with what it is.

The path is looked at before it is opened (opening a device can have effects of its own), then
opened without blocking and looked at again through the descriptor, so that a file swapped in
between is caught too. Symlinks are followed: /etc/resolv.conf is one on most systems.

Errors are ``OSError``: a missing file is ``FileNotFoundError`` as ``open()`` raises it (each
caller decides what a missing file means), and a file refused here is ``FileRefused``, whose
``strerror`` says what it is ("a FIFO (named pipe), not a regular file", "a symlink loop ...",
"larger than 1 MiB, the limit for a configuration file") and whose ``str`` names the path.
Callers turn both into their room's error (a config error naming file and key, a capture
error, a warning).
"""

from __future__ import annotations

import errno
import os
import stat

KIB = 1024
MIB = 1024 * KIB
_CHUNK = 64 * KIB
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

# What a path is when it is not a regular file, in the words of the messages.
_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISSOCK, "a socket"),
)


class FileRefused(OSError):  # noqa: N818 - an OSError, as open() raises; named for the refusal
    """A path that is not a regular file, is a symlink loop, or is larger than its cap."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def describe(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words ("a FIFO (named pipe)" ...)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    for test, words in _KINDS:
        if test(mode):
            return words
    return "not a file of a known type"


def open_regular(path: str) -> int:
    """A read-only descriptor of the regular file at ``path`` (the caller closes it).

    Raises ``FileNotFoundError`` when nothing is there (a dangling symlink included),
    ``FileRefused`` for anything that is not a regular file, and ``OSError`` as ``open()``
    does otherwise (no permission ...).
    """
    _refuse_unless_regular(path, _stat(path).st_mode)
    try:
        fd = os.open(path, _FLAGS)
    except OSError as exc:
        raise _located(exc, path) from None
    try:
        _refuse_unless_regular(path, os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_regular(path: str) -> None:
    """Raise as ``open_regular`` does unless ``path`` can be opened as a regular file; for
    readers that open the file themselves (a capture is mapped, not read)."""
    os.close(open_regular(path))


def read_regular(path: str, limit: int, what: str = "this kind of file") -> bytes:
    """The content of the regular file at ``path``: at most ``limit`` bytes, or
    ``FileRefused`` naming the limit and ``what`` the file is for ("a configuration file").

    Raises as ``open_regular`` does. A file whose size the kernel does not report (those of
    /proc say 0) is bounded while it is read.
    """
    fd = open_regular(path)
    try:
        if os.fstat(fd).st_size > limit:
            raise _too_large(path, limit, what)
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, min(_CHUNK, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise _too_large(path, limit, what)
        return b"".join(chunks)
    finally:
        os.close(fd)


def absent(path: str) -> bool:
    """True when nothing is at ``path`` (a dangling symlink included), so that a caller may
    treat the file as not given; False when something is there, even something that cannot
    be read (a symlink loop, no permission): reading it then says what is wrong."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except (OSError, ValueError):
        return False
    return False


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as exc:
        raise _located(exc, path) from None


def _located(exc: OSError, path: str) -> OSError:
    """``exc`` with the path in it; ELOOP in words a reader recognises."""
    if exc.errno == errno.ELOOP:
        return FileRefused(errno.ELOOP, "a symlink loop (too many levels of symbolic links)", path)
    if exc.filename is None:
        exc.filename = path
    return exc


def _refuse_unless_regular(path: str, mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise FileRefused(errno.EINVAL, f"{describe(mode)}, not a regular file", path)


def _too_large(path: str, limit: int, what: str) -> FileRefused:
    return FileRefused(errno.EFBIG, f"larger than {size_text(limit)}, the limit for {what}", path)


def size_text(size: int) -> str:
    """``1 MiB``, ``64 KiB``, ``512 bytes``: a limit as the messages write it."""
    for unit, name in ((MIB, "MiB"), (KIB, "KiB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} bytes"
