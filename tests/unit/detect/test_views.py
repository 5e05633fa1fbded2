"""What the host tells the detector about ports (in use now, re-checked, in use lately:
RECENTLY_IN_USE, a service restarting under a client that retries), and its readers."""

from __future__ import annotations

import pytest

from portsentinel.detect.detector import Detector
from portsentinel.detect.settings import DetectorConfig
from portsentinel.model import SYN, Action, Mode, Packet, Proto

CLIENT = bytes([198, 18, 0, 3])
HOST = bytes([198, 18, 0, 1])
CONFIG = DetectorConfig(tcp_mode=Mode.ATCP, udp_mode=Mode.AUDP, recently_in_use=600.0)


def syn(port: int) -> Packet:
    return (6, CLIENT, HOST, 40000, port, SYN, 64, False, 0)


def dgram(port: int) -> Packet:
    return (17, CLIENT, HOST, 40000, port, 0, 64, False, 0)


def test_web_server_restarting_under_a_retrying_client_is_not_reported() -> None:
    in_use: set[int] = {80}
    d = Detector(CONFIG, local={HOST}, in_use_tcp=in_use)
    d.note_in_use(Proto.TCP, in_use, 0.0)
    assert d.feed(syn(80), 1.0) == []
    in_use.discard(80)  # the server stops; the host view's next refresh says so
    d.note_in_use(Proto.TCP, in_use, 2.0)
    for t in range(3, 9):  # the client retries every second for the three seconds and more
        assert d.feed(syn(80), float(t)) == []
    assert d.stats.recently_in_use == 6
    assert d.stats.probes == 0
    in_use.add(80)  # back
    d.note_in_use(Proto.TCP, in_use, 10.0)
    assert d.feed(syn(80), 11.0) == []


def test_port_closed_longer_than_the_window_is_a_target_again() -> None:
    in_use: set[int] = {80}
    d = Detector(CONFIG, local={HOST}, in_use_tcp=in_use)
    d.note_in_use(Proto.TCP, in_use, 0.0)
    in_use.clear()
    d.note_in_use(Proto.TCP, in_use, 2.0)
    d.note_in_use(Proto.TCP, in_use, 601.0)
    [decision] = d.feed(syn(80), 601.5)
    assert decision.action is Action.BLOCK


def test_other_ports_stay_targets_and_udp_is_remembered_too() -> None:
    d = Detector(CONFIG, local={HOST})
    d.note_in_use(Proto.UDP, {53}, 0.0)
    d.note_in_use(Proto.TCP, set(), 0.0)
    assert d.feed(dgram(53), 1.0) == []
    [decision] = d.feed(syn(81), 1.0)
    assert decision.port == 81


def test_window_zero_turns_it_off() -> None:
    d = Detector(DetectorConfig(recently_in_use=0.0), local={HOST})
    d.note_in_use(Proto.TCP, {80}, 0.0)
    [decision] = d.feed(syn(80), 1.0)
    assert decision.action is Action.BLOCK


def test_reconfigure_changes_the_window() -> None:
    d = Detector(CONFIG, local={HOST})
    d.note_in_use(Proto.TCP, {80}, 0.0)
    d.reconfigure(DetectorConfig(recently_in_use=0.0))
    d.note_in_use(Proto.TCP, set(), 1.0)
    assert len(d.feed(syn(80), 2.0)) == 1


def test_setters_refuse_unknown_protocols() -> None:
    d = Detector(CONFIG)
    with pytest.raises(ValueError, match="unknown protocol"):
        d.set_in_use(1, set())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown protocol"):
        d.set_in_use_recheck(1, None)  # type: ignore[arg-type]


def test_readers_count_what_was_fed() -> None:
    d = Detector(CONFIG, local={HOST})
    d.feed(syn(81), 1.0)
    d.feed(syn(82), 2.0)
    assert d.fresh_probes() == 1  # the second is a repeat of a source already blocked
    assert d.stats.tracked_sources == 1
    assert d.take_held() == {}
