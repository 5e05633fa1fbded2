"""The report's rollups, live: a real daemon in a lab namespace, a real nmap scan, the worker
folding the scan's events into the rollups on its own, and the ``report`` verb's numbers equal
to ``build_report`` of the stored events."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import netns
import pytest
from banlab import nmap_scan, unavailable, wait_until
from daemon import Daemon

from portsentinel.cli.report import load_report
from portsentinel.report.data import build_report
from portsentinel.store.sqlite import Store

_REASON = netns.unavailable() or unavailable(("nmap", "nft"))
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


def folded(db: Path) -> tuple[int, int] | None:
    """(events, the fold's watermark) once the daemon's worker has folded every event."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        newest = conn.execute("SELECT count(*), max(id) FROM events").fetchone()
        watermark = conn.execute("SELECT rolled_to FROM roll_state").fetchone()[0]
    count, top = newest
    return (count, watermark) if count and watermark == top else None


def test_the_daemon_folds_a_real_scan_and_the_report_matches_its_events(
    tmp_path: Path,
) -> None:
    with netns.Lab.create("psroll") as lab:
        daemon = Daemon.start(lab, tmp_path / "d", mode="atcp,audp", settings={})
        try:
            nmap_scan(lab, lab.SCANNER4, "1-40")
            count, _ = wait_until(lambda: folded(tmp_path / "d" / "portsentinel.db"),
                                  "the worker's fold of every event", deadline=60.0)  # fmt: skip
        finally:
            daemon.stop()
    page = tmp_path / "report.html"
    done = subprocess.run(
        [sys.executable, "-m", "portsentinel", "report", "--since", "1h", "--html", str(page),
         "--state-dir", str(tmp_path / "d")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert f"{count} probe" in done.stdout
    now = time.time()
    report, _ = load_report(str(tmp_path / "d"), 3600.0, now)
    with Store.open(str(tmp_path / "d"), offline=None) as store:
        events = store.events_between(now - 3600.0, now)
        bans = store.bans_between(now - 3600.0, now)
    assert report == build_report(events, bans, now - 3600.0, now)
    assert report.summary.probes == count
    assert [s.address for s in report.sources] == [lab.SCANNER4]
