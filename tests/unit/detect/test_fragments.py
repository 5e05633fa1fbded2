"""Evasive fragments (``detect/fragments.py``): judged like probes, in decoy groups too."""

from __future__ import annotations

from portsentinel.detect.detector import Detector
from portsentinel.detect.settings import DetectorConfig
from portsentinel.model import ACK, Action, Frag, Packet, ScanKind

HOST = bytes([198, 18, 0, 1])
ME = bytes([198, 18, 0, 2])
D1 = bytes([198, 18, 1, 1])


def frag(src: bytes, port: int, kind: int = Frag.TINY, sport: int = 40000) -> Packet:
    return (6, src, HOST, sport, port, ACK, 50, False, kind)


def test_a_tiny_fragment_is_a_probe_whatever_its_flags() -> None:
    det = Detector(DetectorConfig(tcp_ports=frozenset({80})))
    [d] = det.feed(frag(ME, 80), 0.0)
    assert (d.kind, d.action) == (ScanKind.FRAGMENT, Action.BLOCK)


def test_fragments_of_a_decoy_scan_group() -> None:
    """``nmap -f -D``: first fragments from several sources at the same moments, port after
    port, form a group (fragments without ports all land on port 0: they link nobody)."""
    det = Detector(DetectorConfig(tcp_ports=frozenset({80, 81, 82})))
    for n, port in enumerate((80, 81, 82)):
        det.feed(frag(D1, port), n * 0.01)
        det.feed(frag(ME, port, sport=41000), n * 0.01)
    assert {c.src for c in det.take_cuts()} == {"198.18.1.1", "198.18.0.2"}


def test_an_unwatched_protocol_is_not_judged() -> None:
    det = Detector(DetectorConfig(tcp_mode=None, tcp_ports=frozenset({80})))
    assert det.feed(frag(ME, 80), 0.0) == []
