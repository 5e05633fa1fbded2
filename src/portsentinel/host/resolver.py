"""RESOLVE_HOST: reverse DNS for log lines only, never on the detection path.

Lookups run in a small thread pool with a deadline and a bounded cache. A name is only ever
written into log lines and the history file's ``name/ip`` field, and only after
``sanitise``: a PTR record is attacker-controlled text (it could carry spaces, newlines or
terminal escapes to forge log lines). Names never reach a command.
"""

from __future__ import annotations

import re
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_NAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*")

Lookup = Callable[[str], str]


def sanitise(name: str) -> str | None:
    """A host name fit for a log line, or None when the PTR answer is not a plain name."""
    name = name.rstrip(".")
    return name if name and _NAME.fullmatch(name) else None


def _reverse(address: str) -> str:
    return socket.gethostbyaddr(address)[0]


class Resolver:
    """Asynchronous reverse lookups with a timeout and a bounded, expiring cache."""

    def __init__(
        self,
        *,
        timeout: float = 2.0,
        ttl: float = 3600.0,
        max_entries: int = 4096,
        workers: int = 2,
        lookup: Lookup = _reverse,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._timeout = timeout
        self._ttl = ttl
        self._max = max_entries
        self._lookup = lookup
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        self._pending: dict[str, Future[str | None]] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="resolve")

    def cached(self, address: str) -> str | None:
        """The cached name, if any, without waiting (for the detection path)."""
        entry = self._cache.get(address)
        if entry is None or entry[0] < self._clock():
            return None
        return entry[1]

    def resolve(self, address: str) -> str | None:
        """The sanitised name, waiting at most ``timeout``; None when there is none (yet).

        Call it off the detection path (the response worker does). A slow lookup goes on in
        the background and fills the cache for next time.
        """
        entry = self._cache.get(address)
        if entry is not None and entry[0] >= self._clock():
            self._cache.move_to_end(address)
            return entry[1]
        future = self._pending.get(address)
        if future is None:
            future = self._pending[address] = self._pool.submit(self._work, address)
        try:
            return future.result(self._timeout)
        except FutureTimeout:
            return None

    def _work(self, address: str) -> str | None:
        try:
            name = sanitise(self._lookup(address))
        except (OSError, UnicodeError):
            name = None
        self._cache[address] = (self._clock() + self._ttl, name)
        self._cache.move_to_end(address)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        self._pending.pop(address, None)
        return name

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
