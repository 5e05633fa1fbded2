"""PortSentry 1.2's history and blocked files (and 2.0's binary blocked file, read only).

Both get the same line, in local time::

    1403884279 - 06/27/2014 17:51:19 Host: 192.168.56.1/192.168.56.1 Port: 1 TCP Blocked

fail2ban's stock ``portsentry`` filter reads the history file (``\\/<HOST> Port\\: [0-9]+
(TCP|UDP) Blocked$`` with an epoch date at the start of the line), so the format is a contract.
1.2 checks "already blocked" with a substring search (``1.2.3.4`` matches ``11.2.3.4``); we
compare the exact address.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from functools import lru_cache
from typing import Literal

from portsentinel.model import Mode, Proto

_LINE = re.compile(
    r"^(?P<epoch>\d+) - \d{2}/\d{2}/\d{4} \d{2}:\d{2}:\d{2} "
    r"Host: (?P<name>.*)/(?P<ip>[0-9A-Fa-f.:]+) Port: (?P<port>\d+) (?P<proto>TCP|UDP) Blocked$"
)


def history_line(epoch: float, name: str, ip: str, port: int, proto: Proto) -> str:
    """One history/blocked line, without newline; ``name`` is the address when not resolved."""
    seconds = int(epoch)
    return f"{seconds} - {_stamp(seconds)} Host: {name}/{ip} Port: {port} {_LABELS[proto]} Blocked"


@lru_cache(maxsize=16)  # a burst's thousands of lines share a few seconds
def _stamp(seconds: int) -> str:
    return time.strftime("%m/%d/%Y %H:%M:%S", time.localtime(seconds))


_LABELS = {proto: proto.label for proto in Proto}


def blocked_file_path(base: str, mode: Mode) -> str:
    """1.2 keeps one blocked file per mode: ``BLOCKED_FILE`` + ``.`` + mode."""
    return f"{base}.{mode.value}"


def parse_line(line: str) -> tuple[int, str, int, Proto] | None:
    """(epoch, ip, port, proto) of a history/blocked line, or None for any other line."""
    match = _LINE.match(line.rstrip("\r\n"))
    if match is None:
        return None
    try:
        ip = str(ipaddress.ip_address(match["ip"]))
    except ValueError:
        return None
    proto = Proto.TCP if match["proto"] == "TCP" else Proto.UDP
    return int(match["epoch"]), ip, int(match["port"]), proto


def blocked_addresses(lines: Iterable[str]) -> frozenset[str]:
    """Every address listed in a blocked file, normalised, for an exact "already blocked" test."""
    found = set()
    for line in lines:
        parsed = parse_line(line)
        if parsed is not None:
            found.add(parsed[1])
    return frozenset(found)


# PortSentry 2.0's blocked file is binary: per address its sa_family_t in host byte order
# (2 bytes on Linux: AF_INET 2, AF_INET6 10), then the 4 or 16 address bytes as on the wire.
_FAMILIES_2_0 = {2: 4, 10: 16}


def read_blocked_2_0(
    data: bytes, byteorder: Literal["little", "big"] = sys.byteorder
) -> tuple[list[str], int]:
    """The addresses of a PortSentry 2.0 blocked file (in order, each once) and how many bytes
    at its end were not a whole record (2.0 rewrites such a tail away at its start; here it is
    left out and counted). Reading stops at the first record of an unknown family."""
    found: dict[str, None] = {}
    at = 0
    while at + 2 <= len(data):
        size = _FAMILIES_2_0.get(int.from_bytes(data[at : at + 2], byteorder))
        if size is None or at + 2 + size > len(data):
            break
        packed = data[at + 2 : at + 2 + size]
        found[str(ipaddress.ip_address(packed))] = None
        at += 2 + size
    return list(found), len(data) - at


class PortSentryFiles:
    """Writes HISTORY_FILE and the per-mode BLOCKED_FILE the way 1.2 does, but bounded.

    Each line is appended with a fresh open (so logrotate may move the file at any time). A
    file that grows past ``max_bytes`` is renamed to ``FILE.1`` (replacing an older one) and
    started anew, so neither grows without bound. Lifting a ban removes its lines from the
    blocked files (rewritten through a temporary file and a rename); the history keeps them.
    """

    def __init__(self, history: str, blocked_base: str, *, max_bytes: int = 16 << 20) -> None:
        self.history = history
        self.blocked_base = blocked_base
        self.max_bytes = max_bytes

    def record(
        self, epoch: float, name: str, ip: str, port: int, proto: Proto, *, mode: Mode | None
    ) -> None:
        self.record_many([(epoch, name, ip, port, proto, mode)])

    def record_many(
        self, entries: Iterable[tuple[float, str, str, int, Proto, Mode | None]]
    ) -> None:
        """``record`` for many bans: one append per file for all their lines."""
        history: list[str] = []
        blocked: dict[Mode, list[str]] = {}
        for epoch, name, ip, port, proto, mode in entries:
            line = history_line(epoch, name, ip, port, proto) + "\n"
            history.append(line)
            if mode is not None:
                blocked.setdefault(mode, []).append(line)
        if self.history and history:
            self._append(self.history, "".join(history))
        if self.blocked_base:
            for mode, lines in blocked.items():
                self._append(blocked_file_path(self.blocked_base, mode), "".join(lines))

    def append_history(self, text: str) -> None:
        """Whole lines (each ending in a newline) to HISTORY_FILE as they are, rotated past
        the size like the others: PortSentry 2.0's ``Scan from:`` lines."""
        if self.history and text:
            self._append(self.history, text)

    def remove_blocked(self, ip: str) -> None:
        """Drop every line for ``ip`` (exact address) from the blocked files of all modes."""
        if not self.blocked_base:
            return
        for mode in Mode:
            path = blocked_file_path(self.blocked_base, mode)
            try:
                with open(path, encoding="utf-8", errors="replace") as fh:
                    lines = fh.readlines()
            except FileNotFoundError:
                continue
            kept = [line for line in lines if (parse_line(line) or (0, ""))[1] != ip]
            if len(kept) != len(lines):
                _rewrite(path, kept)

    def _append(self, path: str, line: str) -> None:
        try:
            if os.path.getsize(path) + len(line) > self.max_bytes:
                os.replace(path, path + ".1")
        except FileNotFoundError:
            pass
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o640)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(line)


def _rewrite(path: str, lines: list[str]) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".portsentinel-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.writelines(lines)
        shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
