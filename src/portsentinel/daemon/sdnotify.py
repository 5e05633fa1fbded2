"""The service manager's notification socket (sd_notify(3)), standard library only.

systemd starts a ``Type=notify`` service with ``$NOTIFY_SOCKET`` (a path, or ``@name`` for
the abstract namespace) and, with ``WatchdogSec=``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID``.
The daemon says ``READY=1`` once it watches the ports, ``WATCHDOG=1`` from its loop (a timer
of ``pipeline.Pipeline``: a loop that is stuck stops feeding it and systemd kills and restarts
the service, "never fail open"), ``RELOADING=1``/``READY=1`` around a reload and
``STOPPING=1`` at the stop. Without ``$NOTIFY_SOCKET`` (run by hand, the tests) every call
does nothing. A message that cannot be sent is counted, never raised: the manager going away
must not stop the detector.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

# The watchdog is fed at this fraction of WatchdogSec (sd_watchdog_enabled(3) advises half).
FEED_FRACTION = 0.5


class ServiceManager:
    """One datagram socket to ``$NOTIFY_SOCKET``; see the module docstring."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self.failures = 0
        self.sent = 0
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ServiceManager:
        """The notifier systemd's variables describe. They are taken out of ``os.environ``
        (when reading it) so that the commands the daemon starts do not inherit them."""
        env: Mapping[str, str] = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        watchdog = _watchdog_usec(env)
        if environ is None:
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(name, None)
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def feed_every(self) -> float | None:
        """Seconds between two WATCHDOG=1, or None when systemd watches nothing."""
        if self._sock is None or not self.watchdog_usec:
            return None
        return self.watchdog_usec / 1e6 * FEED_FRACTION

    def send(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"`` ...) as one message; False when it was not sent."""
        if self._sock is None or self.address is None:
            return False
        target = self.address
        if target.startswith("@"):  # the abstract namespace: a leading NUL byte
            target = "\0" + target[1:]
        try:
            self._sock.sendto("\n".join(fields).encode("utf-8"), target)
        except OSError:
            self.failures += 1
            return False
        self.sent += 1
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *((f"STATUS={status}",) if status else ()))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    """``$WATCHDOG_USEC`` when it is meant for this process (``$WATCHDOG_PID`` unset or ours)."""
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None
