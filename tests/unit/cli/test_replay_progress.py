"""cli/replay_progress.py: the progress line's text, nothing off a terminal, and on one a line
that follows how far the reader has read and is cleared at the end."""

from __future__ import annotations

import io
import struct
import time
from pathlib import Path

import pytest

from portsentinel.capture.pcapfile import PROGRESS_EVERY, open_capture
from portsentinel.cli import replay_progress
from portsentinel.cli.replay_progress import Progress, line

FRAME = b"\x00" * 14 + b"\x45" + b"\x00" * 19  # the walk does not decode: any bytes do


def capture(path: Path, packets: int) -> Path:
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    record = struct.pack("<IIII", 1, 0, len(FRAME), len(FRAME)) + FRAME
    path.write_bytes(header + record * packets)
    return path


def test_the_line_says_share_packets_rate_and_time_left() -> None:
    assert line(250, 1000, 50_000, 2.0) == (
        "replay: reading  25% of the capture, 50,000 packets, 25,000 packets/s, about 6 s left"
    )
    assert line(0, 1000, 0, 0.0) == "replay: reading   0% of the capture, 0 packets, 0 packets/s"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_nothing_is_shown_off_a_terminal(tmp_path: Path) -> None:
    err = io.StringIO()
    progress = Progress(err)
    with open_capture(capture(tmp_path / "c.pcap", 10)) as reader:
        progress.watch(reader)
        assert sum(1 for _ in reader) == 10
    progress.close()
    assert err.getvalue() == ""


def test_on_a_terminal_the_line_follows_the_reader_and_is_cleared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay_progress, "QUIET_FOR", 0.0)
    monkeypatch.setattr(replay_progress, "EVERY", 0.01)
    packets = 2 * PROGRESS_EVERY + 5
    err = Terminal()
    progress = Progress(err)
    with open_capture(capture(tmp_path / "c.pcap", packets)) as reader:
        progress.watch(reader)
        for count, _ in enumerate(reader, 1):
            if count == PROGRESS_EVERY + 1:  # a note was taken: let the thread show it
                deadline = time.monotonic() + 10
                while f"{PROGRESS_EVERY:,} packets" not in err.getvalue():
                    assert time.monotonic() < deadline, err.getvalue()
                    time.sleep(0.01)
        record = 16 + len(FRAME)
        assert reader.progress == (24 + 2 * PROGRESS_EVERY * record, 2 * PROGRESS_EVERY)
    progress.close()
    shown = err.getvalue()
    assert shown.startswith("\rreplay: reading ")
    assert shown.endswith("\r\x1b[K")  # cleared: the summary line comes next
