"""What the service's user is given beyond its own directories: read from the configuration,
then carried out on files of a temporary root whose /etc/passwd names the user portsentinel
with this test's own uid (so that chown works without root)."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from portsentinel.system import grants

HOSTS_DENY = 'KILL_HOSTS_DENY="ALL: $TARGET$ : DENY"\nBLOCK_TCP="1"\n'
MIGRATED = 'HISTORY_FILE="/var/lib/portsentry/portsentry.history"\n'


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("", grants.Needs()),
        (HOSTS_DENY, grants.Needs(hosts_deny="/etc/hosts.deny")),
        (HOSTS_DENY + 'HOSTS_DENY_FILE="/srv/tcpd/deny"\n', grants.Needs("/srv/tcpd/deny")),
        ('KILL_HOSTS_DENY="ALL: $TARGET$"\nBLOCK_TCP="2"\nBLOCK_UDP="0"\n', grants.Needs()),
        (MIGRATED, grants.Needs(owned_dirs=("/var/lib/portsentry",))),
        (
            MIGRATED + 'BLOCKED_FILE="/var/lib/portsentry/portsentry.blocked"\n',
            grants.Needs(owned_dirs=("/var/lib/portsentry",)),
        ),
        ('HISTORY_FILE="/var/lib/portsentinel/portsentry.history"\n', grants.Needs()),
        ('COMMANDS_AS_ROOT="1"\n', grants.Needs(as_root=True)),
        ('BLOCK_TCP="9"\n' + HOSTS_DENY, grants.Needs()),  # a broken config: no guess
    ],
)
def test_needs(config: str, expected: grants.Needs) -> None:
    assert grants.needs(config) == expected


def test_writable_lists_the_file_then_the_directories() -> None:
    wanted = grants.Needs("/etc/hosts.deny", ("/var/lib/portsentry",))
    assert wanted.writable == ["/etc/hosts.deny", "/var/lib/portsentry"]


def fake_root(tmp_path: Path) -> tuple[Path, int]:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    gid = os.getgid()
    (root / "etc/passwd").write_text(
        f"root:x:0:0::/root:/bin/sh\nportsentinel:x:{os.getuid()}:{gid}::/var/lib:/x\n"
    )
    return root, gid


def test_the_user_is_read_from_the_roots_passwd(tmp_path: Path) -> None:
    assert grants.user_ids(tmp_path) is None
    root, gid = fake_root(tmp_path)
    assert grants.user_ids(root) == (os.getuid(), gid)


def test_grant_lets_the_user_read_the_config_and_write_what_it_names(tmp_path: Path) -> None:
    root, _gid = fake_root(tmp_path)
    config = root / "etc/portsentinel/portsentinel.conf"
    config.parent.mkdir()
    config.write_text("")
    config.chmod(0o600)
    old = root / "var/lib/portsentry"
    old.mkdir(parents=True)
    (old / "portsentry.history").write_text("1 - history\n")
    (old / "portsentry.history").chmod(0o600)
    out = io.StringIO()
    wanted = grants.Needs("/etc/hosts.deny", ("/var/lib/portsentry",))
    assert grants.grant(root, [config], wanted, out) == ""
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    deny = root / "etc/hosts.deny"
    assert stat.S_IMODE(deny.stat().st_mode) == 0o664  # created, group-writable
    assert (old / "portsentry.history").stat().st_uid == os.getuid()
    assert f"grant            {config}" in out.getvalue()
    again = io.StringIO()
    assert grants.grant(root, [config], wanted, again) == ""
    assert again.getvalue() == ""  # nothing left to change


def test_without_the_user_nothing_is_granted(tmp_path: Path) -> None:
    problem = grants.grant(tmp_path, [], grants.Needs("/etc/hosts.deny"), io.StringIO())
    assert "no user portsentinel" in problem
    assert not (tmp_path / "etc/hosts.deny").exists()
