"""What the host tells the detector about its ports: in use now, re-checked, in use lately.

A mix-in of ``Detector`` (its slots are the detector's); kept apart so the detector's module
stays about the packets.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from typing import Final

from portsentinel.detect.recent import RecentPorts
from portsentinel.model import Proto

_TCP: Final = int(Proto.TCP)
_UDP: Final = int(Proto.UDP)


class InUseViews:
    """Setters for the views of ports in use; the detector reads them on its hot path."""

    __slots__ = ("_in_use_tcp", "_in_use_udp", "_recent", "_recheck_tcp", "_recheck_udp")
    _in_use_tcp: Container[int]
    _in_use_udp: Container[int]
    _recheck_tcp: Callable[[int], bool] | None
    _recheck_udp: Callable[[int], bool] | None
    _recent: dict[int, RecentPorts]

    def set_in_use(self, proto: Proto, view: Container[int]) -> None:
        """Ports in use for ``proto``: probes to them are not probes (kept by reference)."""
        if proto == _TCP:
            self._in_use_tcp = view
        elif proto == _UDP:
            self._in_use_udp = view
        else:
            raise ValueError(f"unknown protocol {proto}")

    def note_in_use(self, proto: Proto, ports: Iterable[int], now: float) -> None:
        """The host view's ports in use at ``now``: a port no socket uses any more is still
        no target for RECENTLY_IN_USE seconds after it was last reported (a service
        restarting under clients that retry)."""
        self._recent[int(proto)].note(ports, now)

    def set_in_use_recheck(self, proto: Proto, recheck: Callable[[int], bool] | None) -> None:
        """A second opinion on a port the in-use view does not hold (a listener opened since
        the view was read): asked last, only for what would otherwise be a counted probe,
        since it may cost a kernel query. Never asked about a source that already got its
        response for the protocol: its probe is "already blocked" either way."""
        if proto == _TCP:
            self._recheck_tcp = recheck
        elif proto == _UDP:
            self._recheck_udp = recheck
        else:
            raise ValueError(f"unknown protocol {proto}")
