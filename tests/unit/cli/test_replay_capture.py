"""The replay engine: the options that shape it, the survey of ports in use, and the pass that
feeds a capture to the detector with the capture's own clock."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from portsentinel.cli import replay_capture as engine
from portsentinel.config.setup import detector_config, load_setup
from portsentinel.detect.detector import Detector
from portsentinel.errors import CaptureError, ConfigError
from portsentinel.model import Decision
from unit.cli.stores import CAPTURES, LOCAL


def test_parse_in_use_takes_ports_and_ranges_per_protocol() -> None:
    tcp, udp = engine.parse_in_use(["tcp:22,80", "UDP:53", "tcp:8000-8002"])
    assert tcp == {22, 80, 8000, 8001, 8002}
    assert udp == {53}
    assert engine.parse_in_use([]) == (frozenset(), frozenset())


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
    seen = engine.survey_in_use(str(CAPTURES / "syn.pcap"), engine.parse_local(LOCAL))
    assert {22, 80} <= seen.tcp  # the SYN scan's open ports answered with SYN-ACK
    nobody = engine.survey_in_use(str(CAPTURES / "syn.pcap"), frozenset({b"\x00" * 4}))
    assert nobody == engine.InUse(frozenset(), frozenset())


def test_run_replay_feeds_every_packet_and_counts_the_decisions() -> None:
    setup = load_setup(None, "atcp,audp")
    path = str(CAPTURES / "syn.pcap")
    local = engine.parse_local(LOCAL)
    seen = engine.survey_in_use(path, local)
    detector = Detector(
        detector_config(setup), local=local, in_use_tcp=seen.tcp, in_use_udp=seen.udp
    )
    emitted: list[Decision] = []
    stats = engine.run_replay(path, detector, emitted.append)
    assert stats.packets > 0
    assert sum(stats.decisions.values()) == len(emitted)
    times = [d.time for d in emitted]
    assert times == sorted(times)  # the capture's clock
    line = engine.summary(path, stats)
    assert line.startswith(f"replayed {path}: {stats.frames} frames, ")
    assert "warning" not in line


def test_summary_says_when_a_capture_was_cut_short() -> None:
    stats = engine.ReplayStats(frames=3, packets=2, truncated="ends inside a frame")
    line = engine.summary("x.pcap", stats)
    assert "decisions: none" in line
    assert line.endswith(
        "\nwarning: capture cut short, replayed up to the cut: ends inside a frame"
    )


def test_a_capture_that_is_not_a_regular_file_is_refused_before_the_reader_opens_it(
    tmp_path: Path,
) -> None:
    """The reader's open of a FIFO waits for a writer for ever."""
    fifo = tmp_path / "capture.pcap"
    os.mkfifo(fifo)
    with pytest.raises(CaptureError) as caught:
        engine.survey_in_use(str(fifo), None)
    assert str(caught.value) == (
        f"{fifo}: cannot read capture: a FIFO (named pipe), not a regular file"
    )
    loop = tmp_path / "loop.pcap"
    loop.symlink_to(loop.name)
    with pytest.raises(CaptureError, match="cannot read capture: a symlink loop"):
        engine.check_capture(str(loop))
