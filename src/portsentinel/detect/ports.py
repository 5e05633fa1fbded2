"""Which ports a mode watches, as 64 KiB lookup tables: one index per packet, no hashing.

Bound modes (tcp/udp) own their ports through listeners, stealth modes (stcp/sudp) watch the
listed ports through the capture, and the advanced modes (atcp/audp) watch every port below a
limit minus an exclusion list ("inverse binding"). Ports in use are not part of these tables:
that view changes while running, so the detector asks it per probe.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from portsentinel.model import Mode

PORT_SPACE: Final = 65536


def _check_port(port: int) -> int:
    if not 0 <= port < PORT_SPACE:
        raise ValueError(f"port {port} is outside 0-65535")
    return port


def mode_ports(
    mode: Mode | None, listed: Iterable[int], limit: int, exclude: Iterable[int]
) -> list[int]:
    """The ports a mode watches before the in-use check, in ascending order.

    ``listed`` is TCP_PORTS/UDP_PORTS (bound and stealth modes); ``limit`` and ``exclude``
    are ADVANCED_PORTS_x and ADVANCED_EXCLUDE_x (advanced modes: ports ``0 <= p < limit``).
    A limit above 65536 means every port. No mode watches nothing.
    """
    if mode is None:
        return []
    if mode.advanced:
        top, skip = _advanced(limit, exclude)
        return [p for p in range(top) if p not in skip]
    return sorted({_check_port(p) for p in listed})


def _advanced(limit: int, exclude: Iterable[int]) -> tuple[int, set[int]]:
    """An advanced mode's ports: ``0 <= p < top``, but ``skip``."""
    return min(max(limit, 0), PORT_SPACE), {_check_port(p) for p in exclude}


def port_table(ports: Iterable[int]) -> bytearray:
    """A table with a 1 at every given port: ``table[port]`` is the membership test."""
    table = bytearray(PORT_SPACE)
    for port in ports:
        table[_check_port(port)] = 1
    return table


def stealth_table(
    mode: Mode | None, listed: Iterable[int], limit: int, exclude: Iterable[int]
) -> bytearray:
    """The table raw packets are checked against: empty unless the mode is a stealth one.

    Bound modes see their probes through listeners (``Detector.feed_connect``); a raw packet
    to one of their ports is not theirs to judge.
    """
    if mode is None or mode.bound:
        return bytearray(PORT_SPACE)
    if mode.advanced:  # in slices: a port at a time costs ~12 ms for every port (replay's start)
        top, skip = _advanced(limit, exclude)
        table = bytearray(b"\x01") * top + bytearray(PORT_SPACE - top)
        for port in skip:
            table[port] = 0
        return table
    return port_table(mode_ports(mode, listed, limit, exclude))


def bound_table(mode: Mode | None, listed: Iterable[int]) -> bytearray:
    """The table connects are checked against: the listed ports, for bound modes only."""
    if mode is None or not mode.bound:
        return bytearray(PORT_SPACE)
    return port_table(listed)
