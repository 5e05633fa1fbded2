"""Sinks write every record at once and in order."""

from __future__ import annotations

import io
import json
import os
import sys
import syslog
from pathlib import Path

import pytest

from portsentinel.alert.sinks import EventSink, LogSink
from portsentinel.model import Action, Decision, Proto, Reason, ScanKind


def decision(port: int) -> Decision:
    return Decision(
        0.0,
        "198.18.0.2",
        "198.18.0.1",
        Proto.TCP,
        port,
        ScanKind.SYN,
        Action.ALERT,
        Reason.TRIGGERED,
    )


def test_log_sink_writes_lines() -> None:
    stream = io.StringIO()
    sink = LogSink(stream)
    sink.line("adminalert: one")
    sink.line("attackalert: two")
    sink.close()
    assert stream.getvalue() == "adminalert: one\nattackalert: two\n"


def test_log_sink_to_syslog_alone_writes_nothing_to_its_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[tuple[int, str]] = []
    monkeypatch.setattr(syslog, "openlog", lambda *a: None)
    monkeypatch.setattr(syslog, "syslog", lambda level, msg: sent.append((level, msg)))
    monkeypatch.setattr(syslog, "closelog", lambda: None)
    stream = io.StringIO()
    sink = LogSink(stream, syslog_ident="portsentry", echo=False)
    sink.line("Portsentry is now active and listening.")
    sink.batch(True)
    sink.line("two")
    sink.close()
    assert stream.getvalue() == ""
    assert sent == [(syslog.LOG_NOTICE, "Portsentry is now active and listening."),
                    (syslog.LOG_NOTICE, "two")]  # fmt: skip
    kept = io.StringIO()
    quiet = LogSink(kept, echo=False)  # without syslog the lines stay on the stream
    quiet.line("kept")
    assert kept.getvalue() == "kept\n"


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def test_log_sink_in_batches_writes_once_per_flush_and_in_order() -> None:
    stream = CountingStream()
    sink = LogSink(stream)
    sink.line("before")
    sink.batch(True)
    for i in range(3):
        sink.line(f"line {i}")
    assert stream.getvalue() == "before\n"  # held until the flush
    sink.flush()
    assert stream.getvalue() == "before\nline 0\nline 1\nline 2\n"
    assert stream.writes == 2
    for i in range(300):  # a full batch is written without waiting for the flush
        sink.line(f"more {i}")
    assert stream.getvalue().count("more") == 256
    sink.batch(False)  # leaving batches writes what is held
    assert stream.getvalue().count("more") == 300
    sink.line("after")
    assert stream.getvalue().endswith("more 299\nafter\n")


def test_event_sink_appends_to_a_file_readable_before_close(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"earlier":true}\n')
    sink = EventSink(str(path))
    sink.event(decision(1), 1764106000.0)
    sink.event(decision(2), 1764106001.0)
    sink.flush()
    lines = path.read_text().splitlines()  # a follower sees them before close
    assert len(lines) == 3
    assert [json.loads(line).get("port") for line in lines[1:]] == [1, 2]
    sink.close()


def test_event_sink_creates_private_files(tmp_path: Path) -> None:
    path = tmp_path / "new.jsonl"
    sink = EventSink(str(path))
    sink.close()
    assert os.stat(path).st_mode & 0o007 == 0  # no access for others


def test_an_event_sink_that_cannot_write_counts_what_it_lost_and_goes_on() -> None:
    """/dev/full refuses every write with ENOSPC, as a full disk does."""
    sink = EventSink("/dev/full")
    sink.event(decision(1), 1764106000.0)
    sink.event(decision(2), 1764106001.0)
    sink.flush()
    assert (sink.lost, sink.error) == (2, "No space left on device")
    sink.event(decision(3), 1764106002.0)
    sink.close()  # the last flush fails the same way, and closing does not raise
    assert sink.lost == 3


def test_an_event_sink_whose_reader_went_away_counts_and_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reader, writer = os.pipe()
    os.close(reader)
    monkeypatch.setattr(sys, "stdout", os.fdopen(writer, "w"))
    sink = EventSink("-")
    sink.event(decision(1), 1764106000.0)
    sink.flush()  # EPIPE (SIGPIPE is ignored by Python), not an exception
    assert sink.lost == 1
    assert sink.error == "Broken pipe"
