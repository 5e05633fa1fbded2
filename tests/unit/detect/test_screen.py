"""The probe screen: the detector's first judgement of a packet, as tables. (That it never
drops what ``Detector.feed`` would count is a property test in test_detector.py.)"""

from __future__ import annotations

from dataclasses import replace

from portsentinel.detect.detector import Detector
from portsentinel.detect.ports import port_table
from portsentinel.detect.screen import ProbeScreen
from portsentinel.detect.settings import DetectorConfig
from portsentinel.model import ACK, FIN, RST, SYN, Frag, Mode, Packet

SCANNER = bytes([198, 18, 0, 2])
HOST = bytes([198, 18, 0, 1])


def tcp(port: int, flags: int = SYN, frag: int = 0) -> Packet:
    return (6, SCANNER, HOST, 40000, port, flags, 64, False, frag)


def udp(port: int, frag: int = 0) -> Packet:
    return (17, SCANNER, HOST, 40000, port, 0, 64, False, frag)


def test_probe_kinds_to_watched_ports_pass() -> None:
    screen = ProbeScreen(port_table([80]), port_table([161]), frozenset({6}))
    passed = [tcp(80), tcp(80, FIN), tcp(80, 0), udp(161), tcp(0, frag=Frag.OVERLAP)]
    stopped = [tcp(80, SYN | ACK), tcp(80, RST), tcp(81), udp(162), udp(0, frag=Frag.TINY)]
    assert [screen(pkt) for pkt in passed] == [True] * len(passed)
    assert [screen(pkt) for pkt in stopped] == [False] * len(stopped)


def test_the_detectors_screen_is_its_modes() -> None:
    config = DetectorConfig(tcp_mode=Mode.ATCP, udp_mode=Mode.SUDP, udp_ports=frozenset({161}))
    screen = Detector(config).screen
    assert screen(tcp(1023))
    assert not screen(tcp(1024))  # atcp: below ADVANCED_PORTS_TCP
    assert screen(udp(161))
    assert not screen(udp(53))
    assert screen.fragments == {6, 17}
    bound = Detector(replace(config, tcp_mode=Mode.TCP, tcp_ports=frozenset({1}))).screen
    assert not bound(tcp(1))  # a bound mode takes connects from its listeners, not packets
    assert bound.fragments == {17}
