"""The ``report`` verb on real stores in temporary directories."""

from __future__ import annotations

import argparse
import io
import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from portsentinel import paths
from portsentinel.cli import report as report_verb
from portsentinel.cli.report import add_parsers, load_report, parse_since
from portsentinel.errors import ConfigError
from portsentinel.store.records import EventRow
from portsentinel.store.sqlite import Store

HOUR = 3600.0
OLD = 1_600_000_000.0  # 2020: an old capture's own times


def ev(t: float, src: str = "198.18.0.2", port: int = 22) -> EventRow:
    return EventRow(t, src, "198.18.0.1", "tcp", port, "SYN", "alert", "scan trigger reached")


def run(*argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="portsentinel")
    add_parsers(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(["report", *argv])
    out, err = io.StringIO(), io.StringIO()
    status = args.handler(args, out, err)
    return status, out.getvalue(), err.getvalue()


def test_parse_since() -> None:
    assert parse_since("24h") == 24 * HOUR
    assert parse_since("90s") == 90.0
    assert parse_since(" ALL ") is None
    for bad in ("0", "yesterday", "-5m"):
        with pytest.raises(ConfigError, match="--since"):
            parse_since(bad)


def test_html_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run("--state-dir", "/nonexistent")
    assert exit_info.value.code == 2
    assert "--html" in capsys.readouterr().err


def test_a_missing_store_fails_and_creates_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    page = tmp_path / "r.html"
    status, out, err = run("--html", str(page), "--state-dir", str(state))
    assert status == 1
    assert out == ""
    assert paths.STORE_NAME in err
    assert "no store" in err
    assert not state.exists()
    assert not page.exists()


def test_a_live_report_covers_the_period_back_from_now(tmp_path: Path) -> None:
    now = time.time()
    with Store.open(str(tmp_path)) as store:
        store.add_events([ev(now - 30 * HOUR, "198.18.0.9"), ev(now - 60), ev(now - 30)])
    page = tmp_path / "out" / "report.html"
    page.parent.mkdir()
    status, out, err = run("--html", str(page), "--state-dir", str(tmp_path))
    assert (status, err) == (0, "")
    assert out == f"report written to {page}: 2 probes from 1 source, 0 bans\n"
    text = page.read_text()
    assert "198.18.0.2" in text
    assert "198.18.0.9" not in text  # 30 h ago: before the 24 h
    assert os.listdir(page.parent) == ["report.html"]  # no temporary file left behind
    status, out, _ = run("--since", "all", "--html", str(page), "--state-dir", str(tmp_path))
    assert "3 probes from 2 sources" in out
    assert "198.18.0.9" in page.read_text()


def test_an_offline_report_follows_the_captures_own_times(tmp_path: Path) -> None:
    with Store.open(str(tmp_path), offline=True) as store:
        store.add_events([ev(OLD + i, port=i) for i in range(10)] + [ev(OLD - 2 * 86400)])
    report, path = load_report(str(tmp_path), 86400.0, time.time())
    assert path == str(tmp_path / paths.STORE_NAME)
    assert report.summary.offline
    assert report.summary.probes == 10  # the last day of the capture, not of the clock
    assert OLD + 9 < report.end < OLD + 10
    assert report.start == pytest.approx(OLD + 9 - 86400)


def test_events_after_the_windows_end_send_the_report_to_the_events(tmp_path: Path) -> None:
    # A clock that went back: a stored event lies after "now". The rollups' distinct counts
    # cannot leave it out, so the report reads the events, and port 23 is not counted.
    now = time.time()
    with Store.open(str(tmp_path)) as store:
        store.add_events([ev(now - 60, port=22), ev(now + HOUR, port=23)])
    report, _ = load_report(str(tmp_path), 86400.0, now)
    assert (report.summary.probes, report.summary.ports) == (1, 1)
    assert [(s.address, s.ports) for s in report.sources] == [("198.18.0.2", 1)]
    assert [(p.port, p.sources) for p in report.ports] == [(22, 1)]
    later, _ = load_report(str(tmp_path), 86400.0, now + 2 * HOUR)  # the rollups again
    assert (later.summary.probes, later.summary.ports, later.sources[0].ports) == (2, 2, 2)


def test_the_page_can_go_to_standard_output(tmp_path: Path) -> None:
    with Store.open(str(tmp_path)) as store:
        store.add_events([ev(time.time() - 5)])
    status, out, err = run("--html", "-", "--state-dir", str(tmp_path))
    assert status == 0
    assert out.startswith("<!DOCTYPE html>")
    assert err.startswith("report written to -: 1 probe from 1 source, 0 bans")


def test_an_unwritable_target_fails_cleanly(tmp_path: Path) -> None:
    with Store.open(str(tmp_path)):
        pass
    status, out, err = run(
        "--html", str(tmp_path / "missing" / "r.html"), "--state-dir", str(tmp_path)
    )
    assert status == 1
    assert out == ""
    assert "cannot write the report" in err


def test_tz_local_names_this_machines_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "IST-5:30")  # a POSIX rule: no tzdata needed on the host
    time.tzset()
    try:
        zone = report_verb.time_zone("local")
        assert zone.name == "IST"
        assert datetime.fromtimestamp(0, zone.tz).utcoffset() == timedelta(hours=5, minutes=30)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert report_verb.time_zone("UTC").name == "UTC"


def test_the_tz_option_reaches_the_page(tmp_path: Path) -> None:
    with Store.open(str(tmp_path)) as store:
        store.add_events([ev(time.time() - 5)])
    status, out, _err = run("--html", "-", "--tz", "UTC", "--state-dir", str(tmp_path))
    assert status == 0
    assert "First seen (UTC)" in out
