"""Where records go: PortSentry-style lines to standard error (and syslog), JSON events to a
file or standard output. Both are written as they happen, so a script can follow the daemon.
"""

from __future__ import annotations

import contextlib
import os
import sys
import syslog
from typing import TextIO

from portsentinel.alert.events import event_line
from portsentinel.model import Decision


class LogSink:
    """PortSentry's message lines: standard error (systemd keeps it in the journal; standard
    output for PortSentry 2.0's command line), syslog too when asked (facility daemon, level
    notice, with the pid, as 1.2 does), or syslog alone (``echo=False``).
    """

    _BATCH_LINES = 256  # a batch is written once it holds this many lines

    def __init__(
        self, stream: TextIO | None = None, syslog_ident: str | None = None, *, echo: bool = True
    ) -> None:
        # echo False: syslog only (PortSentry 2.0's ``-l syslog``); the stream stays for flush
        self._stream = stream if stream is not None else sys.stderr
        self._echo = echo or syslog_ident is None
        self._syslog = syslog_ident is not None
        self._pending: list[str] | None = None
        if syslog_ident is not None:
            syslog.openlog(syslog_ident, syslog.LOG_PID, syslog.LOG_DAEMON)

    def batch(self, on: bool) -> None:
        """In batches (the daemon's loop: one write per turn instead of one per line, which
        standard error, line-buffered or unbuffered, would otherwise do) or line by line."""
        self.flush()
        self._pending = [] if on else None

    def line(self, message: str) -> None:
        pending = self._pending
        if not self._echo:
            pass
        elif pending is None:
            self._stream.write(message + "\n")
        else:
            pending.append(message)
            if len(pending) >= self._BATCH_LINES:
                self._write_pending(pending)
        if self._syslog:
            syslog.syslog(syslog.LOG_NOTICE, message)

    def _write_pending(self, pending: list[str]) -> None:
        pending.append("")
        text = "\n".join(pending)
        pending.clear()
        self._stream.write(text)

    def flush(self) -> None:
        if self._pending:
            self._write_pending(self._pending)
        self._stream.flush()

    def close(self) -> None:
        self.flush()
        if self._syslog:
            syslog.closelog()


class EventSink:
    """JSON event lines to a path (appended, created 0640) or to standard output (``-``).

    Lines wait for ``flush`` (once a loop turn), then go out by plain writes of the file
    descriptor (no buffer of Python's to hold what failed). A write that fails (a full disk,
    a reader gone from the pipe) never stops the daemon: what it held is dropped and counted
    in ``lost``, ``error`` says why, and the next flush goes on with what came since.
    """

    def __init__(self, target: str) -> None:
        self._target = target
        self._own = target != "-"
        self._fd = self._open() if self._own else -1
        self._pending: list[str] = []
        self.lost = 0
        self.error: str | None = None  # why the last write failed (None: it did not)

    def _open(self) -> int:
        return os.open(self._target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def reopen(self) -> None:
        """After logrotate moved the file (SIGHUP): continue in a new file at the path."""
        if self._own:
            self.flush()
            os.close(self._fd)
            self._fd = self._open()

    def event(self, decision: Decision, wall: float) -> None:
        self._pending.append(event_line(decision, wall) + "\n")

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        blob = "".join(pending).encode()
        data = memoryview(blob)
        fd = self._fd if self._own else sys.stdout.fileno()
        try:
            if not self._own:
                sys.stdout.flush()  # whatever else went to standard output comes first
            while data:
                data = data[os.write(fd, data) :]
        except OSError as exc:
            # Every line not written whole is lost (each ends in a newline); a line cut in
            # the middle is ended, so that the next one starts on a line of its own.
            self.lost += bytes(data).count(b"\n")
            self.error = exc.strerror or str(exc)
            written = len(blob) - data.nbytes
            if written and blob[written - 1] != ord("\n"):
                with contextlib.suppress(OSError):
                    os.write(fd, b"\n")
        else:
            self.error = None

    def close(self) -> None:
        self.flush()
        if self._own:
            os.close(self._fd)
