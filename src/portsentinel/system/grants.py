"""What the service's user may touch beyond its own directories, as the configuration asks.

The service runs as the system user ``portsentinel`` (``service_files.SYSUSERS``). It reads
the configuration (root:portsentinel 0640) and writes only its state directory and
/var/log/portsentinel, which systemd hands to it. A configuration may write elsewhere:

* KILL_HOSTS_DENY (with a BLOCK level of 1) writes HOSTS_DENY_FILE: that file alone is made
  writable, in the sandbox (a ``ReadWritePaths=`` line of the files drop-in) and for the
  group portsentinel (g+w); the daemon then rewrites it in place (block/hostsdeny.py);
* HISTORY_FILE and BLOCKED_FILE outside the state directory (``portsentinel migrate`` keeps
  PortSentry's /var/lib/portsentry/portsentry.history, which fail2ban reads): their
  directory, handed to the user portsentinel (owner), like systemd's StateDirectory;
* COMMANDS_AS_ROOT="1": the root drop-in (``User=root``).

``install`` writes the drop-ins from ``needs`` and, on a live system, creates the user
(systemd-sysusers) and carries out ``grant``. Uninstall gives nothing back: the user and
the ownership stay, harmless without the service.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from portsentinel import paths
from portsentinel.block.runner import Runner
from portsentinel.config.load import parse_config
from portsentinel.config.types import BlockLevel
from portsentinel.system.service_files import USER


@dataclass(frozen=True, slots=True)
class Needs:
    """What a configuration needs beyond the unit: see the module docstring."""

    hosts_deny: str | None = None  # the file KILL_HOSTS_DENY writes
    owned_dirs: tuple[str, ...] = ()  # PortSentry's file directories outside the state dir
    as_root: bool = False

    @property
    def writable(self) -> list[str]:
        """The ``ReadWritePaths=`` of the files drop-in."""
        return [*([self.hosts_deny] if self.hosts_deny else []), *self.owned_dirs]


def needs(config_text: str) -> Needs:
    """What ``config_text`` needs; a configuration that does not load needs nothing (no guess:
    ``config check`` says what is wrong with it)."""
    found = parse_config(config_text, paths.CONFIG_FILE)
    if found.config is None:
        return Needs()
    s = found.config.settings
    blocking = BlockLevel.BLOCK in (s.block_tcp, s.block_udp)
    deny = s.hosts_deny_file if s.kill_hosts_deny and blocking else ""
    dirs: list[str] = []
    for path in (s.history_file, s.blocked_file):
        directory = os.path.dirname(path)
        if path.startswith("/") and directory not in (paths.STATE_DIR, *dirs):
            dirs.append(directory)
    return Needs(deny if deny.startswith("/") else None, tuple(dirs), s.commands_as_root)


def user_ids(root: Path) -> tuple[int, int] | None:
    """The user portsentinel's uid and gid in ``root``'s /etc/passwd, or None."""
    try:
        lines = (root / "etc/passwd").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in lines.splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[0] == USER and fields[2].isdigit() and fields[3].isdigit():
            return int(fields[2]), int(fields[3])
    return None


def ensure_user(sysusers_file: Path, out: TextIO) -> str:
    """Create the user on this system with systemd-sysusers; "" or why it could not."""
    tool = shutil.which("systemd-sysusers")
    if tool is None:
        return f"systemd-sysusers is absent: create the system user {USER} yourself"
    done = Runner(timeout=60).run([tool, str(sysusers_file)])
    if not done.ok:
        return f"systemd-sysusers failed: {done.describe()}"
    out.write(f"{'user':<16} {USER} (systemd-sysusers {sysusers_file})\n")
    return ""


def grant(root: Path, config_files: list[Path], wanted: Needs, out: TextIO) -> str:
    """Let the user read ``config_files`` and write what ``wanted`` names; "" or why not."""
    ids = user_ids(root)
    if ids is None:
        return f"no user {USER} in {root / 'etc/passwd'}: the service cannot start"
    uid, gid = ids
    for path in config_files:
        if path.is_file() and not path.is_symlink():
            _set(path, -1, gid, stat.S_IMODE(path.stat().st_mode) | 0o040, out)
    if wanted.hosts_deny:
        deny = root / wanted.hosts_deny.lstrip("/")
        if not deny.exists() and deny.parent.is_dir():
            deny.touch(mode=0o644)
        if deny.is_file() and not deny.is_symlink():
            _set(deny, -1, gid, stat.S_IMODE(deny.stat().st_mode) | 0o020, out)
    for target in wanted.owned_dirs:
        directory = root / target.lstrip("/")
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        if directory.is_symlink():
            continue
        _set(directory, uid, gid, stat.S_IMODE(directory.stat().st_mode), out)
        for path in sorted(directory.iterdir()):
            if path.is_file() and not path.is_symlink():
                _set(path, uid, gid, stat.S_IMODE(path.stat().st_mode), out)
    return ""


def _set(path: Path, uid: int, gid: int, mode: int, out: TextIO) -> None:
    info = path.lstat()
    if (uid in (-1, info.st_uid)) and gid == info.st_gid and mode == stat.S_IMODE(info.st_mode):
        return
    os.chown(path, uid, gid, follow_symlinks=False)
    os.chmod(path, mode)
    owner = "group" if uid == -1 else "owner"
    out.write(f"{'grant':<16} {path}  ({owner} {USER}, mode {mode:04o})\n")
