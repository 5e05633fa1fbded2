"""``Detector.feed_unsolicited``: ACK-bearing segments of no connection, judged as probes."""

from __future__ import annotations

from dataclasses import replace

from portsentinel.detect.detector import Detector
from portsentinel.detect.settings import DetectorConfig
from portsentinel.model import ACK, FIN, RST, SYN, Action, Packet, Proto, Reason, ScanKind

SCANNER = bytes([198, 18, 0, 2])
HOST = bytes([198, 18, 0, 1])
BASE = DetectorConfig(tcp_ports=frozenset({1, 79, 111}), udp_ports=frozenset({1}))


def seg(port: int, flags: int = ACK, src: bytes = SCANNER, proto: int = 6, frag: int = 0) -> Packet:
    return (proto, src, HOST, 40000, port, flags, 64, False, frag)


def detector(**kw: object) -> Detector:
    return Detector(replace(BASE, **kw), local={HOST})  # type: ignore[arg-type]


def test_an_ack_probe_triggers_with_its_kind() -> None:
    det = detector()
    decision = det.feed_unsolicited(seg(79), 1.0)[0]
    assert decision.kind is ScanKind.ACK
    assert decision.action is Action.BLOCK
    assert decision.reason is Reason.TRIGGERED
    assert det.feed_unsolicited(seg(111, FIN | ACK), 2.0)[0].kind is ScanKind.MAIMON
    assert det.stats.probes_by_kind[ScanKind.MAIMON] == 1


def test_the_ring_path_still_ignores_ack() -> None:
    det = detector()
    assert det.feed(seg(79), 1.0) == []
    assert det.stats.not_probe == 1


def test_what_is_no_probe() -> None:
    det = detector(tcp_ports=frozenset({79}))
    for pkt in (seg(79, SYN | ACK), seg(79, RST | ACK), seg(79, SYN), seg(79, proto=17),
                seg(79, frag=1)):  # fmt: skip
        assert det.feed_unsolicited(pkt, 1.0) == []
    assert det.stats.not_probe == 5
    assert det.feed_unsolicited(seg(5000), 1.0) == []
    assert det.stats.unwatched == 1
    det.set_in_use(Proto.TCP, {79})
    assert det.feed_unsolicited(seg(79), 1.0) == []
    assert det.stats.in_use == 1
    other = (6, SCANNER, bytes([198, 18, 0, 9]), 40000, 111, ACK, 64, False, 0)
    assert detector().feed_unsolicited(other, 1.0) == []


def test_a_blocked_sources_further_segments_are_muted_then_folded() -> None:
    det = detector()
    det.set_record_gate(lambda src, reason, now: False)
    det.feed_unsolicited(seg(79), 1.0)
    for n in range(5):
        assert det.feed_unsolicited(seg(111), 2.0 + n) == []
    assert det.stats.probes_by_kind[ScanKind.ACK] == 6


def test_a_port_a_service_used_lately_is_no_target_for_late_segments() -> None:
    det = detector()
    det.note_in_use(Proto.TCP, {79}, 0.0)
    assert det.feed_unsolicited(seg(79, FIN | ACK), 1.0) == []
    assert det.stats.recently_in_use == 1
    assert det.feed_unsolicited(seg(111), 1.0)  # a port no service had: a probe
