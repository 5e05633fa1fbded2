"""PortSentry 1.2's history and blocked files.

Both get the same line, in local time::

    1403884279 - 06/27/2014 17:51:19 Host: 192.168.56.1/192.168.56.1 Port: 1 TCP Blocked

fail2ban's stock ``portsentry`` filter reads the history file (``\\/<HOST> Port\\: [0-9]+
(TCP|UDP) Blocked$`` with an epoch date at the start of the line), so the format is a contract.
1.2 checks "already blocked" with a substring search (``1.2.3.4`` matches ``11.2.3.4``); we
compare the exact address.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterable

from portsentinel.model import Mode, Proto

_LINE = re.compile(
    r"^(?P<epoch>\d+) - \d{2}/\d{2}/\d{4} \d{2}:\d{2}:\d{2} "
    r"Host: (?P<name>.*)/(?P<ip>[0-9A-Fa-f.:]+) Port: (?P<port>\d+) (?P<proto>TCP|UDP) Blocked$"
)


def history_line(epoch: float, name: str, ip: str, port: int, proto: Proto) -> str:
    """One history/blocked line, without newline; ``name`` is the address when not resolved."""
    seconds = int(epoch)
    stamp = time.strftime("%m/%d/%Y %H:%M:%S", time.localtime(seconds))
    return f"{seconds} - {stamp} Host: {name}/{ip} Port: {port} {proto.label} Blocked"


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
