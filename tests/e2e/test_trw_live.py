"""End to end: SCAN_RULE="trw" in the live daemon against a slow real nmap scan.

The daemon (``atcp,audp``, BLOCK_TCP 1) runs in the lab's target namespace, where a server
listens on TCP 80. nmap scans eight ports one second apart (``--scan-delay 1s``, no retries)
from the scanner namespace: the sequential test needs no time window, so however slowly the
closed ports are tried, the fourth failure (likelihood ratio 4^4 = 256 >= 99) bans the
source; the open port, when nmap tries it first, counts for it (a success) and costs one more
failure. ``why`` then shows the score, the contacts it took and the scanner (nmap). Root,
nmap and nft; every packet stays inside the lab.
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import netns
import nmapcapture
import pytest
from daemon import PORTSENTINEL, Daemon

pytestmark = [pytest.mark.e2e]
_REASON = netns.unavailable() or next(
    (f"needs {tool}" for tool in ("nmap", "nft") if shutil.which(tool) is None), None
)
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

PORTS = (21, 23, 25, 80, 110, 111, 143, 445)  # 80 is open


def test_slow_nmap_scan_is_banned_after_a_few_failures(tmp_path: Path) -> None:
    with netns.Lab.create("pstw") as lab:
        nmapcapture.listen(lab, 80)
        daemon = Daemon.start(lab, tmp_path / "d", settings={"SCAN_RULE": "trw"})
        try:
            nmap = ["nmap", "-n", "-Pn", "--disable-arp-ping", "-sS", "--max-retries", "0",
                    "--scan-delay", "1s", "-p", ",".join(map(str, PORTS)), lab.TARGET4]  # fmt: skip
            lab.run(lab.scanner, nmap, timeout=120)
            events = daemon.wait_for_events(
                lambda found: any(e["action"] == "block" for e in found), "the ban"
            )
        finally:
            daemon.stop()
        # ``why`` reads the store the daemon wrote (in the lab: it may ask nft for counters)
        why = lab.run(lab.target, [*PORTSENTINEL, "why", lab.SCANNER4, "--state-dir",
                                   str(tmp_path / "d")], check=False)  # fmt: skip
    assert why.returncode == 0, why.stderr
    assert "rule      trw" in why.stdout, why.stdout
    assert "trw score likelihood ratio" in why.stdout, why.stdout
    assert "first contacts; decided after" in why.stdout, why.stdout
    assert "scanner   nmap (from the probes' marks)" in why.stdout, why.stdout
    [ban] = [e for e in events if e["action"] == "block"]
    before = events[: events.index(ban)]
    assert (ban["rule"], ban["score"]) == ("trw", 256.0)
    failures = [e for e in before if e["reason"] == "below trigger"]
    # Four straight failures decide (4 first contacts); when nmap tried the open port before
    # that, its success costs one more failure (6 first contacts, the fifth failure decides).
    assert (len(failures), ban["contacts"]) in {(3, 4), (4, 6)}
    assert all(e["rule"] is None and e["score"] < 99 for e in failures)
    first = datetime.fromisoformat(failures[0]["time"])
    took = (datetime.fromisoformat(ban["time"]) - first).total_seconds()
    assert took >= 2.5  # spread over seconds: no time window is needed
    print(f"trw: ban after {ban['contacts']} first contacts, {took:.2f} s after the first probe")
