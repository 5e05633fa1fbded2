"""KILL_HOSTS_DENY: a TCP Wrappers line per ban in HOSTS_DENY_FILE.

The line is the configured template (PortSentry's ``ALL: $TARGET$ : DENY`` by default) with the
macros replaced: ``$TARGET$`` is the address as hosts_access(5) reads it (``[fd00::2]`` for
IPv6, ``n.n.n.n/m.m.m.m`` and ``[net]/len`` for prefix bans), ``$PORT$`` and ``$MODE$`` as for
commands. As in PortSentry 2.0, and unlike 1.2:

* a line already in the file is not added again;
* a symbolic link, something that is not a regular file, or a world-writable file is refused
  (BackendError): a daemon running as root must not be steered into writing elsewhere;
* the file is rewritten whole: a temporary file in the same directory, with the original's
  mode and owner, synced, then renamed over it (``os.replace``), so a reader (tcpd, sshd)
  sees the old file or the new one, never half of one;
* where the directory is not ours to write (the service runs as the user portsentinel and
  may write /etc/hosts.deny, not /etc: ``portsentinel install`` grants exactly that), the
  file is rewritten in place instead: what is unchanged at its start is left as it is, the
  rest written after it, then the file cut to its new length and synced. Adding a line (a
  ban) is then an append, which a reader sees whole or not at all in practice; removing
  one (an unblock) leaves a reader a moment in which a later line may be cut.

``unblock`` removes every line equal to the recorded one (an administrator's identical line
included: it denies the same thing). Nothing here expires by itself.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import re
import stat
import tempfile
from collections.abc import Sequence

from portsentinel.block.base import (
    ActionDetail,
    BackendBase,
    BanSpec,
    CheckResult,
    ban_fields,
    detail_ban,
)
from portsentinel.block.command import MacroValues, substitute, validate_mode, validate_port
from portsentinel.errors import BackendError

log = logging.getLogger(__name__)

DEFAULT_LINE = "ALL: $TARGET$ : DENY"
NEW_FILE_MODE = 0o644
_TARGET_PATTERN = r"(?P<target>[0-9A-Fa-f:.\[\]/]+)"


class HostsDenyBackend(BackendBase):
    """See the module docstring. ``path`` is the HOSTS_DENY_FILE setting."""

    name = "hosts_deny"

    def __init__(self, path: str, line: str = DEFAULT_LINE) -> None:
        super().__init__()
        if "\n" in line or "\r" in line:
            raise BackendError("hosts_deny: KILL_HOSTS_DENY must be a single line")
        if "$TARGET$" not in line:
            raise BackendError("hosts_deny: KILL_HOSTS_DENY has no $TARGET$ macro")
        self.path = path
        self._template = line.strip()
        self._pattern = _line_pattern(self._template)

    def render(self, ban: BanSpec) -> str:
        """The line for ``ban``."""
        values = MacroValues(hosts_target(ban), validate_port(ban.port), validate_mode(ban.mode))
        return substitute(self._template, values)

    def start(self) -> None:
        """Refuse an unsafe file now rather than at the first ban."""
        try:
            self._read()
        except BackendError as exc:
            raise self._fail(str(exc)) from None
        self._ok()

    def block(self, ban: BanSpec) -> ActionDetail:
        outcome = self.block_many([ban])[0]
        if isinstance(outcome, BackendError):
            raise outcome
        return outcome

    def block_many(self, bans: Sequence[BanSpec]) -> list[ActionDetail | BackendError]:
        """Every ban's line in one rewrite of the file (one read, one fsync): a rewrite per
        ban made a burst of thousands quadratic (220 bans/s at 20,000)."""
        wanted = [self.render(ban) for ban in bans]
        try:
            lines, info = self._read()
            present = {existing.strip() for existing in lines}
            new = list(dict.fromkeys(line for line in wanted if line not in present))
            if new:
                self._write([*lines, *new], info)
        except (BackendError, OSError) as exc:
            what = repr(wanted[0]) if len(wanted) == 1 else f"{len(wanted)} lines"
            error = self._fail(f"cannot add {what} to {self.path}: {exc}")
            return [error for _ in bans]
        self._ok()
        results: list[ActionDetail | BackendError] = []
        for ban, line in zip(bans, wanted, strict=True):
            detail = ban_fields(ban, self.name)
            detail.update(path=self.path, line=line)
            results.append(detail)
        return results

    def unblock(self, detail: ActionDetail) -> None:
        """Remove the line this ban put there (rendered again from the validated ban)."""
        ban = detail_ban(detail, self.name)
        recorded = detail.get("line")
        line = self.render(ban)
        if isinstance(recorded, str) and parse_line(self._pattern, recorded) == ban.key:
            line = recorded  # the $PORT$/$MODE$ it was made with, or an older rendering
        try:
            lines, info = self._read()
            kept = [existing for existing in lines if existing.strip() != line]
            if len(kept) != len(lines):
                self._write(kept, info)
        except (BackendError, OSError) as exc:
            raise self._fail(f"cannot remove {line!r} from {self.path}: {exc}") from None
        self._ok()

    def check(self) -> CheckResult:
        try:
            lines, _ = self._read()
        except (BackendError, OSError) as exc:
            return CheckResult(False, (str(exc),))
        present: dict[str, float | None] = {}
        for line in lines:
            key = parse_line(self._pattern, line.strip())
            if key is not None:
                present[key] = None
        return CheckResult(True, (), present)

    # --- the file --------------------------------------------------------------------------------
    def _read(self) -> tuple[list[str], os.stat_result | None]:
        """The file's lines (without line ends) and its status; no file: no lines."""
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return [], None
        _refuse_unsafe(self.path, info)
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with open(fd, encoding="utf-8", errors="surrogateescape") as handle:
            opened = os.fstat(handle.fileno())
            if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                raise BackendError(f"{self.path} changed while being opened")
            return handle.read().splitlines(), info

    def _write(self, lines: list[str], info: os.stat_result | None) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        base = os.path.basename(self.path)
        try:
            fd, temp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
        except OSError as exc:
            if info is None or exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            self._write_in_place(lines, info)
            return
        try:
            with open(fd, "w", encoding="utf-8", errors="surrogateescape") as handle:
                handle.write("".join(f"{line}\n" for line in lines))
                handle.flush()
                os.fchmod(handle.fileno(), stat.S_IMODE(info.st_mode) if info else NEW_FILE_MODE)
                if info is not None and os.geteuid() == 0:
                    os.fchown(handle.fileno(), info.st_uid, info.st_gid)
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise

    def _write_in_place(self, lines: list[str], info: os.stat_result) -> None:
        """The file rewritten through its own descriptor (see the module docstring)."""
        data = "".join(f"{line}\n" for line in lines).encode("utf-8", "surrogateescape")
        fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                raise BackendError(f"{self.path} changed while being opened")
            old = os.pread(fd, max(opened.st_size, 0) + 1, 0)
            same = _common_start(old, data)
            os.pwrite(fd, data[same:], same)
            os.ftruncate(fd, len(data))
            os.fsync(fd)
        finally:
            os.close(fd)


def _common_start(a: bytes, b: bytes) -> int:
    """How many bytes ``a`` and ``b`` share from their start."""
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return min(len(a), len(b))


def _refuse_unsafe(path: str, info: os.stat_result) -> None:
    if stat.S_ISLNK(info.st_mode):
        raise BackendError(f"{path} is a symbolic link; refusing to write through it")
    if not stat.S_ISREG(info.st_mode):
        raise BackendError(f"{path} is not a regular file")
    if info.st_mode & stat.S_IWOTH:
        raise BackendError(f"{path} is world-writable; refusing to use it")


def hosts_target(ban: BanSpec) -> str:
    """The address as hosts_access(5) writes it."""
    if ban.is_host:  # its address is normalised text already: no parse (a burst has thousands)
        return f"[{ban.address}]" if ban.version == 6 else ban.address
    net = ban.network
    if isinstance(net, ipaddress.IPv6Network):
        address = f"[{net.network_address}]"
        return address if ban.is_host else f"{address}/{net.prefixlen}"
    return str(net.network_address) if ban.is_host else f"{net.network_address}/{net.netmask}"


def _line_pattern(template: str) -> re.Pattern[str]:
    """A regex that matches the template's lines and captures the target."""
    parts = re.split(r"(\$TARGET\$|\$PORT\$|\$MODE\$)", template)
    out = []
    seen_target = False
    for part in parts:
        if part == "$TARGET$":
            out.append("(?P=target)" if seen_target else _TARGET_PATTERN)
            seen_target = True
        elif part == "$PORT$":
            out.append(r"\d{1,5}")
        elif part == "$MODE$":
            out.append("[a-z]+")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out))


def parse_line(pattern: re.Pattern[str], line: str) -> str | None:
    """The ban key of a line the template made, or None."""
    found = pattern.fullmatch(line)
    if found is None:
        return None
    target = found.group("target").replace("[", "").replace("]", "")
    try:
        net = ipaddress.ip_network(target, strict=True)
    except ValueError:
        return None
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
