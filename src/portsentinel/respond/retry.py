"""The store refusing a write: the step is retried, the outage reported, never fatal unless
the store is damaged.

Bans are never dropped while the store refuses writes (locked by another process, the disk
full, an I/O error): their nftables elements are in the kernel already (``first_ban``), and the
worker retries the step, backing off, until the store takes it; the outage is said when it
begins, every ``OUTAGE_NOTICE_EVERY`` while it lasts, and when it ends, and ``status`` and
the metrics show it. A damaged store is different: retrying cannot help, a restart may
(start-up sets a damaged file aside), so that error is raised.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from portsentinel.errors import StoreError

RETRY_FIRST = 0.1  # seconds before a step the store refused is tried again, doubling ...
RETRY_MAX = 5.0  # ... up to this
OUTAGE_NOTICE_EVERY = 60.0  # an outage that goes on is said again this often
# What SQLite says when the store is damaged: retrying cannot help, a restart may (start-up
# sets a damaged file aside). Anything else (locked, busy, disk full, I/O) may pass.
_DAMAGED = ("malformed", "not a database", "not a usable")


class StoreRetry:
    """Runs the worker's store steps; ``outage`` is (since, why) while the store refuses."""

    def __init__(self, log: Callable[[str], None], in_kernel: Callable[[], bool]) -> None:
        """``in_kernel()``: do bans reach the kernel ahead of the store (said in the notice)."""
        self._log = log
        self._in_kernel = in_kernel
        self.closing = threading.Event()  # set at the stop: retries give up
        self.outage: tuple[float, str] | None = None
        self._said = 0.0

    def until_stored(self, step: Callable[[], object], what: str) -> None:
        """Run ``step`` until the store takes it, backing off; given up only at the stop (what
        did not reach the store then is in the kernel, and start-up adopts it)."""
        delay = RETRY_FIRST
        while not self.once(step, what):
            if self.closing.wait(delay):
                self._log(f"adminalert: ERROR: {what} not stored before the stop")
                return
            delay = min(delay * 2, RETRY_MAX)

    def once(self, step: Callable[[], object], what: str) -> bool:
        """Run ``step``; False when the store refused it for a reason that may pass."""
        try:
            step()
        except StoreError as exc:
            if any(word in str(exc) for word in _DAMAGED):
                raise
            self._refused(str(exc), what)
            return False
        if self.outage is not None:
            since = self.outage[0]
            self.outage = None
            self._log(
                f"adminalert: the state store takes writes again after {time.time() - since:.1f}s"
            )
        return True

    def _refused(self, why: str, what: str) -> None:
        now = time.time()
        outage = self.outage
        if outage is None or now - self._said >= OUTAGE_NOTICE_EVERY:
            self._said = now
            nft = "their nftables elements are in the kernel; " if self._in_kernel() else ""
            self._log(
                f"adminalert: ERROR: the state store refuses writes ({why}); {what} wait and are "
                f"retried; {nft}bans in force stay in force"
            )
        if outage is None:
            self.outage = (now, why)
