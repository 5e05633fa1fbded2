"""RESOLVE_HOST: reverse DNS for PortSentry's history lines only, never on the ban path.

A lookup is asked for and goes on beside the caller: ``lookup`` returns at once a future for
the name. A few threads of their own do the lookups, from a bounded queue (more are refused,
and counted), and remember the answers in a bounded, expiring cache. The threads are daemon
threads: ``gethostbyaddr`` cannot be interrupted (a server that never answers holds it 15 s
with glibc's defaults), and such a lookup must hold up no stop.

A name is only ever written into the history file's ``name/ip`` field and log lines, and only
after ``sanitise``: a PTR record is attacker-controlled text (it could carry spaces, newlines
or terminal escapes to forge log lines). Names never reach a command.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_NAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*")

Lookup = Callable[[str], str]
Name = Future[str | None]  # the sanitised name; None when there is none

MAX_WAITING = 256  # lookups queued beyond the running ones; more are refused
WORKERS = 4  # lookups at once (each may wait on a server that never answers)


def sanitise(name: str) -> str | None:
    """A host name fit for a log line, or None when the PTR answer is not a plain name."""
    name = name.rstrip(".")
    return name if name and _NAME.fullmatch(name) else None


def _reverse(address: str) -> str:
    return socket.gethostbyaddr(address)[0]


def _known(name: str | None) -> Name:
    future: Name = Future()
    future.set_result(name)
    return future


class Resolver:
    """Reverse lookups beside the caller: a bounded queue, a bounded and expiring cache."""

    def __init__(
        self,
        *,
        ttl: float = 3600.0,
        max_entries: int = 4096,
        max_waiting: int = MAX_WAITING,
        workers: int = WORKERS,
        lookup: Lookup = _reverse,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._max_waiting = max_waiting
        self._lookup = lookup
        self._clock = clock
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._cache: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        self._waiting: OrderedDict[str, Name] = OrderedDict()  # queued, oldest first
        self._running: dict[str, Name] = {}
        self._closed = False
        self.refused = 0  # lookups not made: the queue was full (or the resolver closed)
        self._threads = [
            threading.Thread(target=self._serve, name=f"resolve-{n}", daemon=True)
            for n in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def cached(self, address: str) -> str | None:
        """The cached name, if any, without waiting."""
        with self._lock:
            entry = self._cache.get(address)
        if entry is None or entry[0] < self._clock():
            return None
        return entry[1]

    def lookup(self, address: str) -> Name | None:
        """A future for the name of ``address``, at once: done when the cache knows it, shared
        with a lookup already asked for; None (counted) when MAX_WAITING lookups wait already.
        Cancelling a future that waits takes its lookup out of the queue."""
        with self._lock:
            entry = self._cache.get(address)
            if entry is not None and entry[0] >= self._clock():
                self._cache.move_to_end(address)
                return _known(entry[1])
            future = self._running.get(address) or self._waiting.get(address)
            if future is not None:
                return future
            if self._closed or len(self._waiting) >= self._max_waiting:
                self.refused += 1
                return None
            future = self._waiting[address] = Future()
            self._work.notify()
        future.add_done_callback(partial(self._cancelled, address))
        return future

    def close(self) -> None:
        """No more lookups: those waiting are cancelled; one under way ends on its own."""
        with self._lock:
            self._closed = True
            waiting = list(self._waiting.values())
            self._work.notify_all()
        for future in waiting:
            future.cancel()

    # --- the lookup threads -------------------------------------------------------------------

    def _cancelled(self, address: str, future: Name) -> None:
        if future.cancelled():
            with self._lock:
                if self._waiting.get(address) is future:
                    del self._waiting[address]

    def _serve(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._work.wait()
                if self._closed:
                    return
                address, future = self._waiting.popitem(last=False)
                if not future.set_running_or_notify_cancel():
                    continue
                self._running[address] = future
            name = self._name_of(address)
            with self._lock:
                self._cache[address] = (self._clock() + self._ttl, name)
                self._cache.move_to_end(address)
                while len(self._cache) > self._max:
                    self._cache.popitem(last=False)
                del self._running[address]
            future.set_result(name)  # outside the lock: callbacks take locks of their own

    def _name_of(self, address: str) -> str | None:
        try:
            return sanitise(self._lookup(address))
        except Exception:  # whatever went wrong, there is no name, and the thread goes on
            return None
