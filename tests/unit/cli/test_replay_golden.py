"""Golden tests: real nmap captures replayed through the whole core, compared as text.

The captures were recorded in a network-namespace lab (tests/fixtures/captures/record.sh):
scanner 198.18.0.2 / fd00:5e::2, target 198.18.0.1 / fd00:5e::1 with TCP 22 and 80 and UDP 53
open. Each scenario's JSON events and ``--log`` lines are compared with files under
``expected/``; on top of that, each scenario asserts what the traffic means, independently of
the golden text. The scenarios print every probe (``--every-probe``) but for the two named
``-summarised``, which show the default: a source's repeats limited as the daemon limits them,
then a summary of what was held back. To re-record after an intended change:
``PORTSENTINEL_REGEN=1 python -m pytest tests/unit/test_replay_golden.py`` and review the diff.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from portsentinel.cli.main import main

CAPTURES = Path(__file__).resolve().parents[2] / "fixtures" / "captures"
EXPECTED = CAPTURES / "expected"
LOCAL = ["--local", "198.18.0.1", "--local", "fd00:5e::1"]
OPEN_TCP = ["--in-use", "tcp:22,80"]  # FIN/NULL/XMAS get no answer from open ports
SCANNER4, SCANNER6 = "198.18.0.2", "fd00:5e::2"
# The TCP scans covered 1-120, 443 and 8080; atcp watches ports below 1024 except the
# default ADVANCED_EXCLUDE_TCP (113, 139); 22 and 80 are open.
TCP_WATCHED_SCANNED = (set(range(1, 121)) | {443}) - {22, 80, 113}

EMBEDDED = '# embedded defaults, only the detector\'s knobs spelled out\nSCAN_TRIGGER="0"\n'
TRIGGER3 = 'SCAN_TRIGGER="3"\nBLOCK_TCP="1"\n'
TRW = 'SCAN_RULE="trw"\n'
DEBIAN_LIKE = (
    'TCP_PORTS="1,11,15,79,111,119,143,540,635,1080,1524,2000,5742,6667,12345,12346,20034,'
    '27665,31337,32771,32772,32773,32774,40421,49724,54320"\n'
    'UDP_PORTS="1,7,9,69,161,162,513,635,640,641,700,37444,34555,31335,32770,32771,32772,'
    '32773,32774,31337,54321"\n'
    'RESOLVE_HOST = "0"\nBLOCK_UDP="0"\nBLOCK_TCP="0"\nSCAN_TRIGGER="0"\n'
)


@dataclass(frozen=True)
class Scenario:
    name: str
    capture: str
    mode: str
    config: str
    extra: tuple[str, ...] = ()
    every_probe: bool = True  # False: the default, a source's repeats limited and summarised


SCENARIOS = [
    Scenario("syn", "syn", "atcp,audp", EMBEDDED),
    Scenario("connect", "connect", "atcp,audp", EMBEDDED),
    Scenario("fin", "fin", "atcp,audp", EMBEDDED, tuple(OPEN_TCP)),
    Scenario("null", "null", "atcp,audp", EMBEDDED, tuple(OPEN_TCP)),
    Scenario("xmas", "xmas", "atcp,audp", EMBEDDED, tuple(OPEN_TCP)),
    Scenario("udp", "udp", "atcp,audp", EMBEDDED),
    Scenario("syn6", "syn6", "atcp,audp", EMBEDDED),
    Scenario("frag", "frag", "atcp,audp", EMBEDDED),
    Scenario("benign", "benign", "atcp,audp", EMBEDDED),
    Scenario("syn6-trigger3", "syn6", "atcp,audp", TRIGGER3),
    Scenario("syn-stcp-debian", "syn", "stcp,sudp", DEBIAN_LIKE),
    Scenario("udp-sudp-debian", "udp", "stcp,sudp", DEBIAN_LIKE),
    Scenario("syn-summarised", "syn", "atcp,audp", EMBEDDED, every_probe=False),
    Scenario("udp-summarised", "udp", "atcp,audp", EMBEDDED, every_probe=False),
    # SCAN_RULE="trw": the sequential test instead of the trigger (detect/trw.py).
    Scenario("syn-trw", "syn", "atcp,audp", TRW),
    Scenario("connect-trw", "connect", "atcp,audp", TRW),
    Scenario("udp-trw", "udp", "atcp,audp", TRW),
    Scenario("syn6-trw", "syn6", "atcp,audp", TRW),
    Scenario("benign-trw", "benign", "atcp,audp", TRW),
    # nmap -sS -D 198.18.0.3,198.18.0.4,ME: one group, every ban cut to DECOY_BAN_DURATION.
    Scenario("decoy", "decoy", "atcp,audp", EMBEDDED),
    Scenario("decoy-trigger3", "decoy", "atcp,audp", TRIGGER3),
]


def replay(scenario: Scenario, tmp_path: Path, *, log: bool) -> str:
    config = tmp_path / "portsentinel.conf"
    config.write_text(scenario.config)
    argv = [
        "replay",
        "--config",
        str(config),
        "--mode",
        scenario.mode,
        *LOCAL,
        *(["--every-probe"] if scenario.every_probe else []),
        *scenario.extra,
        str(CAPTURES / f"{scenario.capture}.pcap"),
    ]
    if log:
        argv.append("--log")
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = main(argv)
    assert status == 0, err.getvalue()
    return out.getvalue()


def golden(scenario: Scenario, tmp_path: Path, suffix: str, *, log: bool) -> str:
    text = replay(scenario, tmp_path, log=log)
    path = EXPECTED / f"{scenario.name}.{suffix}"
    if os.environ.get("PORTSENTINEL_REGEN"):
        path.write_text(text)
    assert text == path.read_text(), f"replay output differs from {path}"
    return text


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_events_match_golden(scenario: Scenario, tmp_path: Path) -> None:
    golden(scenario, tmp_path, "jsonl", log=False)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_log_lines_match_golden(scenario: Scenario, tmp_path: Path) -> None:
    golden(scenario, tmp_path, "log", log=True)


def events(name: str, tmp_path: Path) -> list[dict[str, object]]:
    scenario = next(s for s in SCENARIOS if s.name == name)
    return [json.loads(line) for line in replay(scenario, tmp_path, log=False).splitlines()]


@pytest.mark.parametrize(
    ("name", "kind", "scanner"),
    [
        ("syn", "SYN", SCANNER4),
        ("connect", "SYN", SCANNER4),  # a full connect starts with a SYN, all stealth sees
        ("fin", "FIN", SCANNER4),
        ("null", "NULL", SCANNER4),
        ("xmas", "XMAS", SCANNER4),
        ("syn6", "SYN", SCANNER6),
    ],
)
def test_tcp_scans_are_seen_on_every_closed_watched_port(
    name: str, kind: str, scanner: str, tmp_path: Path
) -> None:
    found = events(name, tmp_path)
    assert {(e["src"], e["kind"], e["proto"]) for e in found} == {(scanner, kind, "tcp")}
    assert {e["port"] for e in found} == TCP_WATCHED_SCANNED
    actions = Counter(e["action"] for e in found)
    assert actions["block"] == 1  # the first probe blocks (SCAN_TRIGGER 0) ...
    assert actions["ignored"] == len(found) - 1  # ... the rest find the host already blocked
    assert found[0]["action"] == "block"


def test_udp_scan_skips_the_answered_port(tmp_path: Path) -> None:
    found = events("udp", tmp_path)
    ports = {e["port"] for e in found}
    assert {(e["src"], e["kind"]) for e in found} == {(SCANNER4, "UDP")}
    assert 53 not in ports  # the responder answered from 53: in use
    # 1-60, 123, 137 and 161 were scanned; 137 is in the default ADVANCED_EXCLUDE_UDP.
    assert ports == (set(range(1, 61)) | {123, 161}) - {53}


def test_fragmented_scan_is_reported_as_evasion(tmp_path: Path) -> None:
    found = events("frag", tmp_path)
    assert {e["kind"] for e in found} == {"FRAGMENT"}
    carried = {e["port"] for e in found if e["port"]}
    assert carried == (set(range(1, 41)) | {443}) - {22}  # first fragments carry the port
    assert any(e["port"] == 0 for e in found)  # later fragments overlapping the header


def test_benign_traffic_writes_nothing(tmp_path: Path) -> None:
    assert events("benign", tmp_path) == []


def test_trigger_three_needs_three_probes(tmp_path: Path) -> None:
    found = events("syn6-trigger3", tmp_path)
    assert [e["action"] for e in found[:3]] == ["ignored", "ignored", "block"]
    assert [e["reason"] for e in found[:2]] == ["below trigger", "below trigger"]
    assert found[2]["hits"] == 3


def test_debian_lists_in_stealth_modes_alert_only(tmp_path: Path) -> None:
    tcp = events("syn-stcp-debian", tmp_path)
    assert {e["port"] for e in tcp} == {1, 11, 15, 79, 111, 119}  # the listed ports nmap hit
    assert [e["action"] for e in tcp].count("alert") == 1  # BLOCK_TCP="0"
    udp = events("udp-sudp-debian", tmp_path)
    assert {e["port"] for e in udp} == {1, 7, 9, 161}  # listed ports among those scanned


@pytest.mark.parametrize(
    ("name", "contacts"),
    [("syn-trw", 6), ("connect-trw", 4), ("udp-trw", 4), ("syn6-trw", 4)],
)
def test_trw_decides_a_real_scan_within_a_few_first_contacts(
    name: str, contacts: int, tmp_path: Path
) -> None:
    """Four straight failures flag a scanner (likelihood ratio 256 >= 99); in the SYN scan
    nmap reached an open port among its first ones, a success that cost it two more."""
    found = events(name, tmp_path)
    acted = [e for e in found if e["action"] != "ignored"]
    assert [(e["action"], e["rule"], e["contacts"]) for e in acted] == [("block", "trw", contacts)]
    assert acted[0]["score"] == 256.0
    before = found[: found.index(acted[0])]
    assert all(e["reason"] == "below trigger" for e in before)
    assert all(isinstance(e["score"], float) and e["score"] < 99 for e in before)
    assert len(before) == int(str(acted[0]["hits"])) - 1  # every probe before it was counted


def test_trw_leaves_benign_traffic_alone(tmp_path: Path) -> None:
    assert events("benign-trw", tmp_path) == []


@pytest.mark.parametrize(
    ("name", "told"),
    [("syn", "nmap"), ("fin", "nmap"), ("null", "nmap"), ("xmas", "nmap"), ("syn6", "nmap"),
     ("connect", None), ("udp", None), ("frag", None)],
)  # fmt: skip
def test_the_scanner_is_told_from_the_probes_marks(
    name: str, told: str | None, tmp_path: Path
) -> None:
    """nmap's raw probes carry its marks; a connect scan is the kernel's own SYN, an empty UDP
    datagram is anyone's, and a fragment's first piece is too short to show them."""
    found = events(name, tmp_path)
    assert found
    assert {e.get("scanner") for e in found} == {told}


DECOYS = ("198.18.0.3", "198.18.0.4")
DECOY_GROUP = [*DECOYS, SCANNER4]  # nmap -D 198.18.0.3,198.18.0.4,ME: in its order


def test_a_decoy_scan_is_one_group_and_no_ban_is_long(tmp_path: Path) -> None:
    """nmap -D: the first copy of the first probe bans its source in full (no group yet);
    the next copy, from the same source port at the same moment, shows the group: that ban
    is cut to DECOY_BAN_DURATION, and the other two are banned as decoys from the start
    (none of them completed a handshake: the real scanner cannot be told from its decoys).
    Later events name the group."""
    found = events("decoy", tmp_path)
    blocks = [e for e in found if e.get("action") == "block"]
    assert [e["src"] for e in blocks] == DECOY_GROUP
    assert "group" not in blocks[0]  # banned before the group showed...
    cuts = [e for e in found if e.get("type") == "cut"]
    assert [(c["src"], c["seconds"]) for c in cuts] == [(DECOYS[0], 300.0)]  # ... so cut
    assert blocks[1]["group"] == DECOY_GROUP[:2]
    assert blocks[2]["group"] == DECOY_GROUP
    assert all(e["decoy"] is True for e in blocks[1:])
    grouped = [e for e in found if e.get("group")]
    assert all(e["group"] == DECOY_GROUP and e["decoy"] is True for e in grouped[2:])
    assert {e["src"] for e in grouped} == set(DECOY_GROUP)


def test_a_decoy_scan_under_a_trigger_bans_each_source_short_at_once(tmp_path: Path) -> None:
    """SCAN_TRIGGER=3: the group shows before any source triggers, so every ban is a
    decoy's from the start: no cut needed."""
    found = events("decoy-trigger3", tmp_path)
    blocks = [e for e in found if e.get("action") == "block"]
    assert sorted(str(e["src"]) for e in blocks) == sorted(DECOY_GROUP)
    assert all(e["group"] == DECOY_GROUP and e["decoy"] is True for e in blocks)
    assert not [e for e in found if e.get("type") == "cut"]


def test_a_decoy_replay_records_the_cut_bans(tmp_path: Path) -> None:
    """With --state-dir the offline store holds each ban cut, and ``why`` shows it."""
    config = tmp_path / "portsentinel.conf"
    config.write_text(EMBEDDED)
    state = tmp_path / "state"
    argv = ["replay", "--config", str(config), "--mode", "atcp,audp", *LOCAL,
            "--state-dir", str(state), str(CAPTURES / "decoy.pcap")]  # fmt: skip
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        assert main(argv) == 0
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(io.StringIO()):
        assert main(["why", "--state-dir", str(state), DECOYS[0]]) == 0
    text = out.getvalue()
    assert "cut as decoy" in text
    assert f"group     {', '.join(DECOY_GROUP)}" in text
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(io.StringIO()):
        assert main(["why", "--state-dir", str(state), SCANNER4]) == 0
    assert "cut as decoy" not in out.getvalue()  # banned as a decoy from the start
    assert f"group     {', '.join(DECOY_GROUP)}" in out.getvalue()
