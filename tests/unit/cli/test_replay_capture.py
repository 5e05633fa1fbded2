"""The replay engine: the options that shape it, the survey of ports in use, and the pass that
feeds a capture to the detector with the capture's own clock."""

from __future__ import annotations

import ipaddress

import pytest

from portsentinel.cli import replay_capture as engine
from portsentinel.config.setup import detector_config, load_setup
from portsentinel.detect.detector import Detector
from portsentinel.errors import ConfigError
from portsentinel.model import SYN, Decision
from unit.cli.stores import CAPTURES, LOCAL


def test_parse_in_use_takes_ports_and_ranges_per_protocol() -> None:
    found = engine.parse_in_use(["tcp:22,80", "UDP:53", "tcp:8000-8002"])
    assert found.tcp == {22, 80, 8000, 8001, 8002}
    assert found.udp == {53}
    assert engine.parse_in_use([]) == engine.InUse()


@pytest.mark.parametrize("value", ["22", "icmp:1", "tcp:70000", "tcp:9-3", "tcp:ssh"])
def test_parse_in_use_refuses_what_it_cannot_read(value: str) -> None:
    with pytest.raises(ConfigError, match="--in-use"):
        engine.parse_in_use([value])


def test_parse_local_packs_addresses() -> None:
    packed = engine.parse_local(LOCAL)
    assert packed == {ipaddress.ip_address(a).packed for a in LOCAL}
    with pytest.raises(ConfigError, match="--local"):
        engine.parse_local(["host.example"])


def test_the_survey_finds_the_ports_the_watched_host_answered_on() -> None:
    path = str(CAPTURES / "syn.pcap")
    seen = engine.survey(path, engine.parse_local(LOCAL), lambda _pkt: False).in_use
    assert {22, 80} <= seen.tcp  # the SYN scan's open ports answered with SYN-ACK
    nobody = engine.survey(path, frozenset({b"\x00" * 4}), lambda _pkt: False)
    assert nobody.in_use == engine.InUse()
    assert nobody.kept == []


def test_the_survey_keeps_what_may_be_probes_and_counts_every_frame() -> None:
    path = str(CAPTURES / "syn.pcap")
    detector = Detector(detector_config(load_setup(None, "atcp,audp")))
    found = engine.survey(path, None, detector.may_probe)
    assert found.stats.frames == 246
    assert (found.stats.packets, found.stats.skipped, found.stats.decode_errors) == (246, 0, 0)
    # The SYNs to watched ports (1-120 and 443 of those scanned, but 113), in use or not: not
    # the RSTs, the SYN-ACKs, nor the SYN to 8080, which atcp does not watch.
    assert {(pkt[0], pkt[5]) for _ts, pkt in found.kept} == {(6, SYN)}
    assert sorted(pkt[4] for _ts, pkt in found.kept) == [*range(1, 113), *range(114, 121), 443]
    assert found.resume is None


def test_run_replay_feeds_every_packet_and_counts_the_decisions() -> None:
    setup = load_setup(None, "atcp,audp")
    path = str(CAPTURES / "syn.pcap")
    local = engine.parse_local(LOCAL)
    detector = Detector(detector_config(setup), local=local)
    emitted: list[Decision] = []
    stats = engine.run_replay(path, detector, emitted.append, local=local)
    assert stats.packets > 0
    assert sum(stats.decisions.values()) == len(emitted)
    times = [d.time for d in emitted]
    assert times == sorted(times)  # the capture's clock
    line = engine.summary(path, stats)
    assert line.startswith(f"replayed {path}: {stats.frames} frames, ")
    assert "warning" not in line


def test_past_the_keep_limit_the_second_pass_reads_the_rest_again() -> None:
    """Packets kept between the passes are bounded; the result does not depend on the bound."""
    setup = load_setup(None, "atcp,audp")
    path = str(CAPTURES / "syn.pcap")
    local = engine.parse_local(LOCAL)
    results = []
    for limit in (engine.KEEP_MAX, 10, 0):
        emitted: list[Decision] = []
        detector = Detector(detector_config(setup), local=local)
        stats = engine.run_replay(path, detector, emitted.append, local=local, limit=limit)
        results.append((stats, emitted))
    assert results[1] == results[0]
    assert results[2] == results[0]
    assert len(results[0][1]) == 118


def test_summary_says_when_a_capture_was_cut_short() -> None:
    stats = engine.ReplayStats(frames=3, packets=2, truncated="ends inside a frame")
    line = engine.summary("x.pcap", stats)
    assert "decisions: none" in line
    assert line.endswith(
        "\nwarning: capture cut short, replayed up to the cut: ends inside a frame"
    )
