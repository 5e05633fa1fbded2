"""End to end: ``portsentinel replay`` of real nmap scans recorded in a lab.

Root only (see ``netns.py``; needs nmap and tcpdump): the target namespace listens on TCP 22
(both families), the scanner runs ``nmap -sS -T5 -p-`` against 198.18.0.1 and ``nmap -6 -sS
-T5 -p 1-2000`` against fd00:5e::1, and tcpdump records each on the target's veth
(``nmapcapture.py``). Every packet stays inside the lab. The replays run as a user runs them
(``python -m portsentinel replay``) with a config file of the test's own and ``--mode``, so
nothing on the host (``/etc/default/portsentry``, an ignore file) takes part.

By default a blocked scanner's repeats are printed as the daemon logs them (20 at once, one a
second after that) and the rest counted in summary lines; ``--every-probe`` prints a decision
for every probe. Both count every probe the same.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dpkt
import netns
import nmapcapture
import pytest
from daemon import PORTSENTINEL

pytestmark = [pytest.mark.e2e]
_REASON = nmapcapture.unavailable()
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

OPEN_PORT = 22  # in use: its SYN-ACKs are in the capture, so its probes are not probes
EXCLUDED = {113, 139}  # the default ADVANCED_EXCLUDE_TCP
EVERY_PORT = 'ADVANCED_PORTS_TCP="65536"\nADVANCED_PORTS_UDP="65536"\n'
REPLAY_TIMEOUT = 300
Json = dict[str, Any]


@dataclass(frozen=True)
class Scans:
    full4: Path  # nmap -sS -T5 -p- over IPv4
    part6: Path  # nmap -6 -sS -T5 -p 1-2000
    directory: Path


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Scans:
    directory = tmp_path_factory.mktemp("replay-nmap")
    full4, part6 = directory / "full4.pcap", directory / "part6.pcap"
    with netns.Lab.create("psr") as lab:
        nmapcapture.listen(lab, OPEN_PORT)
        nmapcapture.record(lab, full4, nmapcapture.full_range_syn(lab.TARGET4))
        six = ["nmap", "-n", "-Pn", "-6", "-sS", "-T5", "-p", "1-2000", lab.TARGET6]
        nmapcapture.record(lab, part6, six)
    return Scans(full4, part6, directory)


def replay(scans: Scans, capture: Path, config: str, *extra: str) -> tuple[list[Json], str]:
    """``portsentinel replay``'s JSON lines and its stderr; it must exit 0 without a traceback."""
    conf = scans.directory / "replay.conf"
    conf.write_text(config)
    argv = [*PORTSENTINEL, "replay", "--config", str(conf), "--mode", "atcp,audp", *extra]
    done = subprocess.run(
        [*argv, str(capture)], capture_output=True, text=True, timeout=REPLAY_TIMEOUT, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    if "--log" in extra:
        return [], done.stdout
    return [json.loads(line) for line in done.stdout.splitlines()], done.stderr


def syn_ports(capture: Path) -> list[int]:
    """The destination port of every SYN the scanner sent, read with dpkt (not our decoder).
    nmap sends a port's SYN again when no answer came: a port may appear more than once."""
    ports = []
    with capture.open("rb") as fh:
        for _ts, frame in dpkt.pcap.Reader(fh):
            tcp = getattr(dpkt.ethernet.Ethernet(frame).data, "data", None)
            if isinstance(tcp, dpkt.tcp.TCP) and tcp.flags == dpkt.tcp.TH_SYN:
                ports.append(tcp.dport)
    return ports


def watched_probes(capture: Path, limit: int = 65536) -> list[int]:
    """The ports of the SYNs atcp watches (below ``limit``, not excluded, not in use), sorted."""
    return sorted(p for p in syn_ports(capture) if p < limit and p not in EXCLUDED | {OPEN_PORT})


def split(lines: list[Json]) -> tuple[list[Json], list[Json]]:
    return [x for x in lines if "type" not in x], [x for x in lines if x.get("type") == "summary"]


def decisions(stderr: str) -> str:
    found = re.search(r"decisions: (.*?); modes: ", stderr)
    assert found, stderr
    return found.group(1)


def test_every_probe_of_a_full_range_scan_is_a_decision(scans: Scans) -> None:
    lines, err = replay(scans, scans.full4, EVERY_PORT, "--every-probe")
    events, summaries = split(lines)
    assert summaries == []
    probes = watched_probes(scans.full4)
    assert set(probes) == set(range(1, 65536)) - EXCLUDED - {OPEN_PORT}  # every port scanned
    assert sorted(e["port"] for e in events) == probes  # a decision per probe, none for 22
    assert {(e["src"], e["dst"], e["kind"]) for e in events} == {
        ("198.18.0.2", "198.18.0.1", "SYN")
    }
    assert Counter(e["action"] for e in events) == {"block": 1, "ignored": len(probes) - 1}
    assert events[0]["action"] == "block"
    assert decisions(err) == f"1 block, {len(probes) - 1} ignored"


def test_by_default_the_repeats_of_a_full_range_scan_are_summarised(scans: Scans) -> None:
    every, every_err = replay(scans, scans.full4, EVERY_PORT, "--every-probe")
    lines, err = replay(scans, scans.full4, EVERY_PORT)
    events, summaries = split(lines)
    assert events[0] == every[0]  # the block first, as with --every-probe
    assert events[:21] == every[:21]  # then the first 20 repeats
    assert len(events) < 100  # then about one a second: the scan lasts a few seconds
    assert summaries
    assert {(s["src"], s["reason"]) for x in summaries for s in x["sources"]} == {
        ("198.18.0.2", "already blocked")
    }
    held = sum(x["held"] for x in summaries)
    assert len(events) + held == len(every)  # never dropped: printed or counted
    assert decisions(err) == decisions(every_err)  # every probe counted either way


def test_log_lines_of_the_default_replay_end_with_what_was_held_back(scans: Scans) -> None:
    _, out = replay(scans, scans.full4, EVERY_PORT, "--log")
    lines = out.splitlines()
    assert "attackalert: TCP SYN/Normal scan from host: 198.18.0.2/198.18.0.2" in lines[0]
    assert re.fullmatch(
        r"\S+ adminalert: \d+ repetitive records held back in the last [\d.]+s "
        r"\(most from 198\.18\.0\.2 already blocked: \d+\)",
        lines[-1],
    )
    assert len(lines) < 200


def test_the_embedded_defaults_watch_below_1024(scans: Scans) -> None:
    every, _ = replay(scans, scans.full4, "", "--every-probe")
    assert sorted(e["port"] for e in every) == watched_probes(scans.full4, 1024)


def test_an_ipv6_scan(scans: Scans) -> None:
    lines, err = replay(scans, scans.part6, "")
    events, summaries = split(lines)
    assert {(e["src"], e["dst"]) for e in events} == {("fd00:5e::2", "fd00:5e::1")}
    assert OPEN_PORT not in {e["port"] for e in events}
    probes = watched_probes(scans.part6, 1024)
    assert set(probes) == set(range(1, 1024)) - EXCLUDED - {OPEN_PORT}  # every port scanned
    held = sum(x["held"] for x in summaries)
    assert len(events) + held == len(probes)
    assert decisions(err) == f"1 block, {len(probes) - 1} ignored"
