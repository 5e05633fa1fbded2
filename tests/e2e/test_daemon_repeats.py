"""Repeated records, live and without an events stream (the packaged service): a scanner that
keeps probing after its alert gets a few "already blocked" lines, the rest are held back and
summarised, and every probe is accounted for."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import netns
import pytest
from banlab import nmap_scan, unavailable
from daemon import Daemon, statistics

_REASON = netns.unavailable() or unavailable(("nmap",))
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

SUMMARY = re.compile(
    r"adminalert: (\d+) repetitive records held back in the last 10s \(most from (.*)\)"
)
SUMMARY_DEADLINE = 40.0  # summaries come every 10 s


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    with netns.Lab.create("psrep") as lab:
        yield lab


def test_repeats_are_held_back_summarised_and_counted(lab: netns.Lab, tmp_path: Path) -> None:
    settings = {"BLOCK_TCP": "0", "BLOCK_UDP": "0", "SCAN_TRIGGER": "0"}
    daemon = Daemon.start(lab, tmp_path / "d", mode="atcp", settings=settings, events=False)
    assert not daemon.events_path.exists()
    nmap_scan(lab, lab.SCANNER4, "1-1023")
    stderr = daemon.wait_for_line("repetitive records held back", SUMMARY_DEADLINE)
    code, stderr = daemon.stop()
    assert code == 0, stderr
    stats = statistics(stderr)
    already = stderr.count(f"/{lab.SCANNER4} is already blocked Ignoring")
    summaries = SUMMARY.findall(stderr)
    assert summaries, stderr
    assert all(lab.SCANNER4 in top for _n, top in summaries)
    # One alert, a limited number of "already blocked" lines, and every other probe held:
    # by the daemon, or, once the scanner went quiet (QUIET_REPEATS), counted by the kernel
    # (every probe-shaped packet it sent, to any port: 113 and 139 too).
    quiet = stats.get("quiet_packets", 0)
    assert stderr.count("Ignoring TCP response per configuration file setting.") == 1
    assert stats["probes"] + quiet >= 1021 - 1  # every watched port of 1-1023 (113, 139 not)
    assert stats["probes"] + quiet <= 1023 + 50  # nmap may send a port twice
    assert 1 <= already < (stats["probes"] + quiet) // 4
    assert already + stats["records_held"] == stats["probes"] - 1
    # The summaries account for what was held back by the time of the last one.
    assert sum(int(n) for n, _top in summaries) <= stats["records_held"] + quiet
    assert stats["kernel_drops"] == 0
