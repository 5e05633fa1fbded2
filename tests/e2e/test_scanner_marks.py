"""End to end: events name the tool whose marks the probes carry (``detect/fingerprint``),
live and in ``replay``, with real nmap and hping3 in the lab.

Live: the daemon (``atcp,audp``, BLOCK_TCP 0: alerts only, nothing is banned) runs in the
target namespace; nmap scans a few ports over IPv6 and hping3 sends SYNs over IPv4, so the two
tools are two sources. Replay: hping3's probes recorded on the target's veth
(``nmapcapture.record``) and replayed as a user would. Root, nmap, hping3 and tcpdump; every
packet stays inside the lab.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import netns
import nmapcapture
import pytest
from daemon import PORTSENTINEL, Daemon

pytestmark = [pytest.mark.e2e]
_REASON = nmapcapture.unavailable() or (None if shutil.which("hping3") else "needs hping3")
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))


def hping3_syns(target: str, count: int = 4) -> list[str]:
    """hping3's SYN scan of ``count`` ports from 20 up (``-p ++20``), 20 ms apart."""
    return ["hping3", "-S", "-c", str(count), "-p", "++20", "-i", "u20000", target]


def test_live_events_name_nmap_and_hping3(tmp_path: Path) -> None:
    with netns.Lab.create("psfp") as lab:
        daemon = Daemon.start(lab, tmp_path / "d", settings={"BLOCK_TCP": "0"})
        try:
            nmap = ["nmap", "-n", "-Pn", "-6", "-sS", "-p", "20-25", lab.TARGET6]
            lab.run(lab.scanner, nmap, timeout=60)
            lab.run(lab.scanner, hping3_syns(lab.TARGET4), timeout=60, check=False)
            events = daemon.wait_for_events(
                lambda found: {e["src"] for e in found} >= {lab.SCANNER4, lab.SCANNER6},
                "events from both tools",
            )
        finally:
            daemon.stop()
    told = {(e["src"], e.get("scanner")) for e in events}
    assert told == {(lab.SCANNER6, "nmap"), (lab.SCANNER4, "hping3")}, json.dumps(events)


def test_replay_names_hping3(tmp_path: Path) -> None:
    capture = tmp_path / "hping3.pcap"
    with netns.Lab.create("psfr") as lab:
        nmapcapture.record(lab, capture, hping3_syns(lab.TARGET4, 6))
    config = tmp_path / "replay.conf"
    config.write_text('SCAN_TRIGGER="0"\n')
    done = subprocess.run(
        [*PORTSENTINEL, "replay", "--config", str(config), "--mode", "atcp,audp",
         "--every-probe", str(capture)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["port"] for e in events] == [20, 21, 22, 23, 24, 25]
    assert {(e["src"], e["scanner"]) for e in events} == {(netns.Lab.SCANNER4, "hping3")}
