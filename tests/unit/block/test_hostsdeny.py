"""KILL_HOSTS_DENY on temporary files: the line, dedupe, safety refusals, atomic rewrite, undo."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

import pytest

from portsentinel.block.base import BanSpec
from portsentinel.block.hostsdeny import HostsDenyBackend, hosts_target
from portsentinel.errors import BackendError
from portsentinel.model import Mode, Proto


@pytest.fixture
def deny(tmp_path: Path) -> Path:
    path = tmp_path / "hosts.deny"
    path.write_text("# /etc/hosts.deny\nsshd: 203.0.113.7\n")
    path.chmod(0o640)
    return path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_appends_portsentrys_line(deny: Path) -> None:
    backend = HostsDenyBackend(str(deny))
    detail = backend.block(BanSpec.create("198.18.0.2"))
    assert lines(deny) == ["# /etc/hosts.deny", "sshd: 203.0.113.7", "ALL: 198.18.0.2 : DENY"]
    assert detail["line"] == "ALL: 198.18.0.2 : DENY"
    assert detail["path"] == str(deny)


def test_ipv6_and_prefix_targets_in_hosts_access_form() -> None:
    assert hosts_target(BanSpec.create("fd00:5e::2")) == "[fd00:5e::2]"
    assert hosts_target(BanSpec.create("fd00:5e::", prefix=64)) == "[fd00:5e::]/64"
    assert hosts_target(BanSpec.create("198.18.0.0", prefix=24)) == "198.18.0.0/255.255.255.0"
    assert hosts_target(BanSpec.create("198.18.0.2")) == "198.18.0.2"


def test_all_macros_in_portsentrys_order(deny: Path) -> None:
    backend = HostsDenyBackend(str(deny), "ALL: $TARGET$ : spawn (echo $PORT$ $MODE$ $TARGET$)")
    ban = BanSpec.create("fd00:5e::2", port=143, proto=Proto.UDP, mode=Mode.SUDP)
    backend.block(ban)
    assert lines(deny)[-1] == "ALL: [fd00:5e::2] : spawn (echo 143 sudp [fd00:5e::2])"
    assert dict(backend.check().present) == {"fd00:5e::2": None}


def test_never_appends_a_line_already_there(deny: Path) -> None:
    deny.write_text("ALL: 198.18.0.2 : DENY  \n")
    backend = HostsDenyBackend(str(deny))
    backend.block(BanSpec.create("198.18.0.2"))
    backend.block(BanSpec.create("198.18.0.2"))
    assert lines(deny) == ["ALL: 198.18.0.2 : DENY  "]


def test_file_without_final_newline(deny: Path) -> None:
    deny.write_text("sshd: 203.0.113.7")
    HostsDenyBackend(str(deny)).block(BanSpec.create("198.18.0.2"))
    assert deny.read_text() == "sshd: 203.0.113.7\nALL: 198.18.0.2 : DENY\n"


def test_missing_file_is_created(tmp_path: Path) -> None:
    path = tmp_path / "hosts.deny"
    HostsDenyBackend(str(path)).block(BanSpec.create("198.18.0.2"))
    assert path.read_text() == "ALL: 198.18.0.2 : DENY\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_rewrite_keeps_the_mode_and_leaves_no_temporary_file(deny: Path) -> None:
    before = deny.stat().st_ino
    HostsDenyBackend(str(deny)).block(BanSpec.create("198.18.0.2"))
    assert stat.S_IMODE(deny.stat().st_mode) == 0o640
    assert deny.stat().st_ino != before  # replaced, not written in place
    assert sorted(p.name for p in deny.parent.iterdir()) == ["hosts.deny"]


def test_refuses_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "shadow"
    real.write_text("root:x:0:0\n")
    link = tmp_path / "hosts.deny"
    link.symlink_to(real)
    backend = HostsDenyBackend(str(link))
    with pytest.raises(BackendError, match="symbolic link"):
        backend.block(BanSpec.create("198.18.0.2"))
    assert real.read_text() == "root:x:0:0\n"
    assert link.is_symlink()
    assert backend.degraded is not None
    with pytest.raises(BackendError, match="symbolic link"):
        backend.start()
    assert not backend.check().intact


def test_refuses_a_world_writable_file(deny: Path) -> None:
    deny.chmod(0o666)
    with pytest.raises(BackendError, match="world-writable"):
        HostsDenyBackend(str(deny)).block(BanSpec.create("198.18.0.2"))
    assert "198.18.0.2" not in deny.read_text()


def test_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="not a regular file"):
        HostsDenyBackend(str(tmp_path)).block(BanSpec.create("198.18.0.2"))


def test_unblock_removes_exactly_that_line(deny: Path) -> None:
    backend = HostsDenyBackend(str(deny))
    first = backend.block(BanSpec.create("198.18.0.2"))
    backend.block(BanSpec.create("198.18.0.20"))
    backend.unblock(first)
    assert lines(deny) == ["# /etc/hosts.deny", "sshd: 203.0.113.7", "ALL: 198.18.0.20 : DENY"]
    backend.unblock(first)  # idempotent
    assert len(lines(deny)) == 3


def test_unblock_finds_the_line_made_with_the_recorded_port_and_mode(deny: Path) -> None:
    backend = HostsDenyBackend(str(deny), "ALL: $TARGET$ : DENY # $MODE$ $PORT$")
    detail = backend.block(BanSpec.create("198.18.0.2", port=31337, mode=Mode.ATCP))
    assert lines(deny)[-1] == "ALL: 198.18.0.2 : DENY # atcp 31337"
    backend.unblock(detail)
    assert lines(deny) == ["# /etc/hosts.deny", "sshd: 203.0.113.7"]


def test_a_tampered_recorded_line_removes_nothing_else(deny: Path) -> None:
    backend = HostsDenyBackend(str(deny))
    detail = backend.block(BanSpec.create("198.18.0.2"))
    detail["line"] = "sshd: 203.0.113.7"
    backend.unblock(detail)
    assert lines(deny) == ["# /etc/hosts.deny", "sshd: 203.0.113.7"]


def test_check_lists_the_bans_the_template_made(deny: Path) -> None:
    deny.write_text(
        "ALL: 198.18.0.2 : DENY\nALL: [fd00:5e::]/64 : DENY\n"
        "ALL: 198.18.1.0/255.255.255.0 : DENY\nALL: somehost : DENY\nsshd: 203.0.113.7\n"
    )
    result = HostsDenyBackend(str(deny)).check()
    assert result.intact
    assert dict(result.present) == {
        "198.18.0.2": None,
        "fd00:5e::/64": None,
        "198.18.1.0/24": None,
    }


def test_check_of_a_missing_file_is_fine(tmp_path: Path) -> None:
    result = HostsDenyBackend(str(tmp_path / "none")).check()
    assert result.intact
    assert dict(result.present) == {}


@pytest.mark.parametrize("line", ["ALL: DENY", "ALL: $TARGET$\nsshd: ALL", ""])
def test_bad_templates_are_refused(line: str) -> None:
    with pytest.raises(BackendError):
        HostsDenyBackend("/nonexistent", line)


def test_missing_directory_fails_cleanly(tmp_path: Path) -> None:
    backend = HostsDenyBackend(str(tmp_path / "nowhere" / "hosts.deny"))
    with pytest.raises(BackendError, match="cannot add"):
        backend.block(BanSpec.create("198.18.0.2"))
    assert backend.degraded is not None


def test_many_bans_in_one_rewrite(deny: Path) -> None:
    """A burst's lines go in with one rewrite (one new inode), each once, in order; a line
    already in the file or twice in the burst is not added again."""
    deny.write_text("ALL: 198.18.0.3 : DENY\n")
    before = deny.stat().st_ino
    backend = HostsDenyBackend(str(deny))
    bans = [BanSpec.create(a) for a in ("198.18.0.2", "198.18.0.3", "fd00:5e::2", "198.18.0.2")]
    details = backend.block_many(bans)
    assert lines(deny) == [
        "ALL: 198.18.0.3 : DENY",
        "ALL: 198.18.0.2 : DENY",
        "ALL: [fd00:5e::2] : DENY",
    ]
    assert deny.stat().st_ino != before  # rewritten, then renamed over it
    assert [d["line"] for d in details if not isinstance(d, BackendError)] == [
        "ALL: 198.18.0.2 : DENY", "ALL: 198.18.0.3 : DENY", "ALL: [fd00:5e::2] : DENY",
        "ALL: 198.18.0.2 : DENY",
    ]  # fmt: skip
    renamed = deny.stat().st_ino
    backend.block_many(bans)  # nothing new: the file is left alone
    assert deny.stat().st_ino == renamed


def test_many_bans_refused_together_by_an_unsafe_file(deny: Path) -> None:
    deny.chmod(0o646)
    backend = HostsDenyBackend(str(deny))
    outcomes = backend.block_many([BanSpec.create("198.18.0.2"), BanSpec.create("198.18.0.4")])
    assert all(isinstance(o, BackendError) for o in outcomes)
    assert "cannot add 2 lines" in str(outcomes[0])
    assert "world-writable" in str(outcomes[0])
    assert lines(deny) == ["# /etc/hosts.deny", "sshd: 203.0.113.7"]


def _directory_not_writable(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """The service's view of /etc: the file may be written, its directory not (root's own
    permission checks would let every test write it, so the refusal is the kernel's errno)."""

    def refused(*_args: object, **_kwargs: object) -> tuple[int, str]:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", refused)


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_a_directory_it_may_not_write_gets_the_file_rewritten_in_place(
    deny: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    inode = deny.stat().st_ino
    _directory_not_writable(monkeypatch, code)
    backend = HostsDenyBackend(str(deny))
    first = backend.block(BanSpec.create("198.18.0.2"))
    backend.block(BanSpec.create("198.18.0.20"))
    assert lines(deny)[2:] == ["ALL: 198.18.0.2 : DENY", "ALL: 198.18.0.20 : DENY"]
    backend.unblock(first)  # the file gets shorter: cut to its new length
    assert lines(deny) == ["# /etc/hosts.deny", "sshd: 203.0.113.7", "ALL: 198.18.0.20 : DENY"]
    assert deny.stat().st_ino == inode  # the same file, never replaced
    assert stat.S_IMODE(deny.stat().st_mode) == 0o640


def test_a_missing_file_in_a_directory_it_may_not_write_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _directory_not_writable(monkeypatch, errno.EACCES)
    backend = HostsDenyBackend(str(tmp_path / "hosts.deny"))
    with pytest.raises(BackendError, match="Permission denied"):
        backend.block(BanSpec.create("198.18.0.2"))
    assert backend.degraded is not None
