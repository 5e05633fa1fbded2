"""RESOLVE_HOST beside the ban path: a history line waits for its name, a ban never does.

The response worker applies a ban, logs it with the address and hands its history/blocked
lines here, then goes on with the next ban. This thread writes each line once the name of its
source is known (``host.resolver``), or with the address when none came within ``NAME_WAIT``
seconds of the ban, when the lookup failed, or when the resolver's queue was full (not looked
up at all). Lines are written in the order of their bans, so none waits longer than
``NAME_WAIT`` after its own. Removing a lifted ban's blocked lines goes through the same
queue, after its lines: a line is never written back after its ban was lifted, and the files
have one writer. ``close`` writes at once what still waits, with the names known by then.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from portsentinel.host.resolver import Name, Resolver
from portsentinel.model import Mode, Proto
from portsentinel.store.portsentry_files import PortSentryFiles

NAME_WAIT = 2.0  # seconds a history line waits for its source's name
CLOSE_TIMEOUT = 10.0  # for the last lines to be written at the stop

# A line of ``PortSentryFiles.record_many``: (time, name, address, port, proto, mode).
Entry = tuple[float, str, str, int, Proto, Mode | None]
Log = Callable[[str], None]


@dataclass(eq=False)
class _Line:
    files: PortSentryFiles
    entry: Entry
    due: float  # monotonic: written with the address at the latest then
    name: Name | None  # None: no name to wait for


@dataclass(eq=False)
class _Removal:
    files: PortSentryFiles
    address: str


_Job = _Line | _Removal


class Names:
    """The writer of PortSentry's files while RESOLVE_HOST is on: its own thread, in order."""

    def __init__(self, resolver: Resolver, log: Log, *, wait: float = NAME_WAIT) -> None:
        self._resolver = resolver
        self._log = log
        self._wait = wait
        self._jobs: deque[_Job] = deque()
        self._ready = threading.Condition()
        self._closing = False
        self._stopped = False  # the thread is done: later jobs are written by their caller
        self.late = 0  # lines written with the address before their name came
        self._thread = threading.Thread(target=self._run, name="names", daemon=True)
        self._thread.start()

    @property
    def skipped(self) -> int:
        """Lines written with the address unlooked-up: the resolver's queue was full."""
        return self._resolver.refused

    # --- the response worker's side -----------------------------------------------------------

    def record(self, files: PortSentryFiles, entries: Sequence[Entry], *, resolve: bool) -> None:
        """Lines of bans in force (or alerts), their names looked up when ``resolve``; written
        within ``wait`` seconds from now. Never waits."""
        due = time.monotonic() + self._wait
        lookup = self._resolver.lookup
        lines = [_Line(files, e, due, lookup(e[2]) if resolve else None) for e in entries]
        self._put(lines)
        for line in lines:  # added outside the lock: a done future calls back at once
            if line.name is not None:
                line.name.add_done_callback(self._wake)

    def remove_blocked(self, files: PortSentryFiles, address: str) -> None:
        """A lifted ban: its blocked lines go, after any of its lines still waiting."""
        self._put([_Removal(files, address)])

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Write what waits now (the address where no name came) and stop."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        self._thread.join(timeout)

    def _put(self, jobs: Sequence[_Job]) -> None:
        with self._ready:
            if not self._stopped:
                self._jobs.extend(jobs)
                self._ready.notify()
                return
        self._write(jobs)  # after the stop, at once (nothing else writes then)

    def _wake(self, _name: Name) -> None:
        with self._ready:
            self._ready.notify()

    # --- the names thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except Exception as exc:  # said, never silent; the worker writes what comes next
            with self._ready:
                self._stopped = True
                left, self._jobs = list(self._jobs), deque()
            self._log(f"adminalert: ERROR: the history file writer stopped: {exc!r}")
            self._write(left)

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not (jobs := self._take()):
                    if self._closing:
                        self._stopped = True
                        return
                    head = self._jobs[0] if self._jobs else None
                    wait = head.due - time.monotonic() if isinstance(head, _Line) else None
                    self._ready.wait(wait)
            self._write(jobs)

    def _take(self) -> list[_Job]:
        """The jobs at the head that are ready: a removal, a line whose name is known (or not
        asked for), a line whose time is up; all of them at the stop."""
        now, out = time.monotonic(), []
        while self._jobs:
            job = self._jobs[0]
            if isinstance(job, _Line) and self._waits(job, now):
                break
            out.append(self._jobs.popleft())
        return out

    def _waits(self, line: _Line, now: float) -> bool:
        """Its name was asked for and may still come in time."""
        name = line.name
        return name is not None and not name.done() and line.due > now and not self._closing

    def _write(self, jobs: Sequence[_Job]) -> None:
        group: list[_Line] = []  # consecutive lines for the same files: one append
        for job in jobs:
            if isinstance(job, _Line) and (not group or job.files is group[0].files):
                group.append(job)
                continue
            if group:
                self._lines(group)
            group = [job] if isinstance(job, _Line) else []
            if isinstance(job, _Removal):
                self._remove(job)
        if group:
            self._lines(group)

    def _lines(self, lines: Sequence[_Line]) -> None:
        entries = []
        for line in lines:
            stamp, _address, address, port, proto, mode = line.entry
            name = self._name(line)
            entries.append((stamp, name or address, address, port, proto, mode))
            if name is not None:
                self._log(f"attackalert: Host {address} is {name} (reverse DNS)")
        try:
            lines[0].files.record_many(entries)
        except OSError as exc:
            self._log(f"adminalert: ERROR: cannot write the history/blocked file: {exc}")

    def _name(self, line: _Line) -> str | None:
        """The name that came in time; a lookup still waiting is given up (cancelled)."""
        future = line.name
        if future is None:
            return None
        if not future.done():
            self.late += 1
            future.cancel()  # out of the resolver's queue if it did not start yet
            return None
        return None if future.cancelled() else future.result()

    def _remove(self, job: _Removal) -> None:
        try:
            job.files.remove_blocked(job.address)
        except OSError as exc:
            self._log(f"adminalert: ERROR: cannot update the blocked file: {exc}")
