"""A progress line for ``replay`` on a terminal: how far the capture has been read, the rate,
the time left; nothing when standard error is not a terminal.

The reading pass walks the whole file (most of a replay's time); the reader notes how far it
got every ``PROGRESS_EVERY`` packets, and a thread of this module shows it twice a second, so
the walk itself pays one integer test per packet and no call. Nothing is shown for a replay
that ends within ``QUIET_FOR`` (a second): only a long one needs a sign of life.
"""

from __future__ import annotations

import threading
import time
from typing import TextIO

from portsentinel.capture.pcapfile import CaptureReader

QUIET_FOR = 1.0  # seconds before the first line
EVERY = 0.5  # seconds between two lines


def line(read: int, size: int, packets: int, seconds: float) -> str:
    """The progress text (pure): share of the file, packets, rate, time left."""
    share = read / size if size else 0.0
    rate = packets / seconds if seconds > 0 else 0.0
    left = seconds * (1 - share) / share if share > 0 else None
    remaining = f", about {left:.0f} s left" if left is not None else ""
    return (f"replay: reading {share:4.0%} of the capture, {packets:,} packets, "
            f"{rate:,.0f} packets/s{remaining}")  # fmt: skip


class Progress:
    """``watch`` is given to ``run_replay``; ``close`` ends the line. Shows nothing unless
    ``stream`` is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._on = stream.isatty()
        self._started = time.monotonic()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._shown = False

    def watch(self, reader: CaptureReader) -> None:
        if not self._on:
            return
        self._thread = threading.Thread(target=self._show, args=(reader,), daemon=True)
        self._thread.start()

    def _show(self, reader: CaptureReader) -> None:
        if self._done.wait(QUIET_FOR):
            return
        while True:
            read, packets = reader.progress
            text = line(read, reader.size, packets, time.monotonic() - self._started)
            self._stream.write(f"\r{text}\x1b[K")
            self._stream.flush()
            self._shown = True
            if self._done.wait(EVERY):
                return

    def close(self) -> None:
        """The reading is over: the line is cleared (the summary comes after it)."""
        self._done.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
