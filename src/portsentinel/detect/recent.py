"""Ports that had a socket lately (RECENTLY_IN_USE), so a service restarting is not a target.

The host view tells the detector, at each of its refreshes, which ports are in use now; this
table remembers when each was last seen in use and forgets it ``window`` seconds later. While
a web server restarts, its port is closed for a few seconds: a client retrying it then sends
SYNs to a port no socket uses, which without this table are probes. Pure: the time is an
argument, and expiry happens when the host view reports (so it is as exact as its period).
"""

from __future__ import annotations

from collections.abc import Iterable


class RecentPorts:
    """Port -> when it was last reported in use; ``port in table.seen`` is the hot-path test."""

    __slots__ = ("seen", "window")

    def __init__(self, window: float) -> None:
        if window < 0:
            raise ValueError("window must not be negative")
        self.window = window
        self.seen: dict[int, float] = {}  # kept as one object: the detector holds it

    def note(self, ports: Iterable[int], now: float) -> None:
        """The ports in use at ``now``; those last in use longer than ``window`` ago go."""
        seen = self.seen
        if self.window <= 0:
            seen.clear()
            return
        seen.update(dict.fromkeys(ports, now))
        oldest = now - self.window
        for port in [p for p, t in seen.items() if t < oldest]:
            del seen[port]
