"""files/regular.py: a regular file is read up to its cap; anything else is refused at once with
what it is, and never waited on (a FIFO) or read without end (/dev/zero)."""

from __future__ import annotations

import errno
import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from portsentinel.files import (
    KIB,
    MIB,
    FileRefused,
    absent,
    check_regular,
    open_regular,
    read_regular,
)
from portsentinel.files.regular import describe, size_text


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def _loop(tmp_path: Path) -> Path:
    path = tmp_path / "loop"
    path.symlink_to(path.name)
    return path


def _refusal(path: Path | str, limit: int = MIB) -> FileRefused:
    with pytest.raises(FileRefused) as caught:
        read_regular(str(path), limit, "a test file")
    return caught.value


def test_a_regular_file_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "conf"
    path.write_bytes(b'KEY="value"\n' * 1000)
    assert read_regular(str(path), MIB) == b'KEY="value"\n' * 1000


def test_a_symlink_to_a_regular_file_is_followed(tmp_path: Path) -> None:
    """/etc/resolv.conf is a symlink on most systems."""
    (tmp_path / "real").write_bytes(b"nameserver 192.0.2.1\n")
    (tmp_path / "link").symlink_to("real")
    assert read_regular(str(tmp_path / "link"), KIB) == b"nameserver 192.0.2.1\n"


def test_a_file_of_exactly_the_cap_is_read_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "conf"
    path.write_bytes(b"x" * 100)
    assert read_regular(str(path), 100) == b"x" * 100
    path.write_bytes(b"x" * 101)
    refused = _refusal(path, 100)
    assert refused.errno == errno.EFBIG
    assert str(refused) == f"{path}: larger than 100 bytes, the limit for a test file"


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = _fifo(tmp_path)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_regular(str(fifo), MIB)
        except BaseException as exc:  # handed to the test's thread
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # it waits for a writer: release it, then fail
        with open(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK), "wb"):
            pass
        pytest.fail("reading a FIFO waited for a writer")
    assert len(outcome) == 1
    assert isinstance(outcome[0], FileRefused)
    assert str(outcome[0]) == f"{fifo}: a FIFO (named pipe), not a regular file"


def test_dev_zero_is_refused_before_a_byte_is_read() -> None:
    refused = _refusal("/dev/zero")
    assert refused.strerror == "a character device, not a regular file"
    assert refused.filename == "/dev/zero"


def test_a_directory_is_refused(tmp_path: Path) -> None:
    assert _refusal(tmp_path).strerror == "a directory, not a regular file"


def test_a_unix_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        assert _refusal(path).strerror == "a socket, not a regular file"


def test_a_symlink_loop_is_named_as_one_not_as_missing(tmp_path: Path) -> None:
    loop = _loop(tmp_path)
    refused = _refusal(loop)
    assert refused.errno == errno.ELOOP
    assert "symlink loop" in str(refused)
    assert str(loop) in str(refused)
    assert not isinstance(refused, FileNotFoundError)
    assert not absent(str(loop))


def test_a_missing_file_is_file_not_found_as_open_says(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        read_regular(str(tmp_path / "nothing"), KIB)
    assert caught.value.filename == str(tmp_path / "nothing")
    (tmp_path / "dangling").symlink_to("nothing")
    with pytest.raises(FileNotFoundError):
        read_regular(str(tmp_path / "dangling"), KIB)
    assert absent(str(tmp_path / "nothing"))
    assert absent(str(tmp_path / "dangling"))
    assert absent(str(tmp_path / "nothing" / "below"))


def test_absent_is_false_for_anything_there(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    assert not absent(str(tmp_path / "file"))
    assert not absent(str(_fifo(tmp_path)))
    assert not absent(str(tmp_path))
    assert not absent("bad\0path")  # not "missing": reading it will say what is wrong


def test_a_file_without_a_size_is_bounded_while_it_is_read() -> None:
    """/proc files report size 0: the cap holds while reading."""
    text = read_regular("/proc/self/status", MIB)
    assert text.startswith(b"Name:")
    with pytest.raises(FileRefused, match="larger than 16 bytes"):
        read_regular("/proc/self/status", 16)


def test_a_file_swapped_between_the_look_and_the_open_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path is looked at, then opened; what was opened is looked at again."""
    real = tmp_path / "real"
    real.write_text("x")
    fifo = _fifo(tmp_path)
    opened = os.open

    def swapped(path: str, flags: int, *args: int) -> int:
        return opened(str(fifo), flags, *args)

    monkeypatch.setattr(os, "open", swapped)
    with pytest.raises(FileRefused, match="FIFO"):
        open_regular(str(real))


def test_check_regular_opens_and_closes(tmp_path: Path) -> None:
    path = tmp_path / "capture"
    path.write_bytes(b"\xd4\xc3\xb2\xa1")
    before = len(os.listdir("/proc/self/fd"))
    check_regular(str(path))
    assert len(os.listdir("/proc/self/fd")) == before
    with pytest.raises(FileRefused, match="FIFO"):
        check_regular(str(_fifo(tmp_path)))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_no_permission_is_the_oserror_open_raises(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("x")
    path.chmod(0)
    with pytest.raises(PermissionError):
        read_regular(str(path), KIB)


def test_every_kind_has_its_words() -> None:
    assert describe(stat.S_IFREG) == "a regular file"
    assert describe(stat.S_IFIFO) == "a FIFO (named pipe)"
    assert describe(stat.S_IFCHR) == "a character device"
    assert describe(stat.S_IFBLK) == "a block device"
    assert describe(stat.S_IFDIR) == "a directory"
    assert describe(stat.S_IFSOCK) == "a socket"
    assert describe(0) == "not a file of a known type"


def test_limits_are_written_in_their_unit() -> None:
    assert size_text(16 * MIB) == "16 MiB"
    assert size_text(64 * KIB) == "64 KiB"
    assert size_text(1000) == "1000 bytes"
    assert size_text(MIB + 1) == f"{MIB + 1} bytes"
