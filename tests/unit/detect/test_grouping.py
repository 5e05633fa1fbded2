"""Decoy groups in the detector's decisions: named on events, short bans, cuts of bans made
before the group showed, proof of address (a completed handshake) keeps the full ban."""

from __future__ import annotations

from portsentinel.detect.detector import Detector
from portsentinel.detect.settings import DetectorConfig
from portsentinel.model import SYN, Action, Decision, Packet, Reason, ScanKind

HOST = bytes([198, 18, 0, 1])
ME = bytes([198, 18, 0, 2])
D1 = bytes([198, 18, 1, 1])
D2 = bytes([198, 18, 1, 2])
NAMES = ("198.18.1.1", "198.18.1.2", "198.18.0.2")
CONFIG = DetectorConfig(tcp_ports=frozenset(range(1, 100)))


def syn(src: bytes, port: int, ttl: int = 48, sport: int = 40000) -> Packet:
    return (6, src, HOST, sport, port, SYN, ttl, False, 0)


def decoy_scan(
    det: Detector, ports: range, start: float = 0.0, *, copies: bool = False
) -> list[Decision]:
    """``nmap -D D1,D2,ME``: each port from the three, back to back; with ``copies`` from
    one source port, as nmap sends them, else each source from its own."""
    out = []
    for n, port in enumerate(ports):
        for i, src in enumerate((D1, D2, ME)):
            sport = 35629 if copies else 40000 + i
            out += det.feed(syn(src, port, sport=sport), start + n * 0.01 + i * 1e-5)
    return out


def test_copies_form_the_group_on_the_first_port() -> None:
    """nmap's copies (one source port): the first source is banned in full, then cut as
    the second shows; the second and third are banned as decoys from the start."""
    det = Detector(CONFIG)
    first = decoy_scan(det, range(1, 2), copies=True)
    assert [(d.src, d.action, d.group, d.decoy) for d in first] == [
        (NAMES[0], Action.BLOCK, (), False),
        (NAMES[1], Action.BLOCK, NAMES[:2], True),
        (NAMES[2], Action.BLOCK, NAMES, True),
    ]
    assert [(c.src, c.group) for c in det.take_cuts()] == [(NAMES[0], NAMES[:2])]


def test_bans_before_the_group_are_cut_once_it_shows() -> None:
    """Copies from different source ports: the group shows on the third port (counted
    from each source's second probe)."""
    det = Detector(CONFIG)
    first = decoy_scan(det, range(1, 3))
    assert [(d.src, d.action, d.group, d.decoy) for d in first[:3]] == [
        (name, Action.BLOCK, (), False) for name in NAMES
    ]
    assert det.take_cuts() == []
    decoy_scan(det, range(3, 4), start=0.02)
    cuts = det.take_cuts()
    assert [c.src for c in cuts] == list(NAMES)
    # Each cut names the group as it stood when the member was linked: ME joined last.
    assert [c.group for c in cuts] == [NAMES[:2], NAMES[:2], NAMES]
    assert cuts[2].evidence["members"] == list(NAMES)
    assert cuts[0].evidence["one_ttl"] is True
    decoy_scan(det, range(4, 10), start=0.03)
    assert det.take_cuts() == []  # once per member
    assert det.decoy_groups == 1


def test_later_decisions_name_the_group() -> None:
    """Every probe becomes a record when no gate holds them back: the records of the
    group's probes name it."""
    det = Detector(CONFIG)
    decisions = decoy_scan(det, range(1, 5))
    later = [d for d in decisions if d.port >= 3 and d.src == "198.18.1.2"]
    assert later
    assert all(d.group == NAMES for d in later[1:])
    assert all(d.reason is Reason.ALREADY_BLOCKED for d in later)


def test_a_member_seen_after_the_group_formed_gets_a_decoys_ban() -> None:
    det = Detector(CONFIG)
    late = bytes([198, 18, 1, 3])
    for n, port in enumerate(range(1, 4)):
        det.feed(syn(D1, port), n * 0.01)
        det.feed(syn(D2, port, sport=40001), n * 0.01)
    det.take_cuts()
    decisions = []
    for n, port in enumerate(range(10, 14)):
        decisions += det.feed(syn(D1, port), 1 + n * 0.01)
        decisions += det.feed(syn(late, port, sport=50000), 1 + n * 0.01)
    banned = [d for d in decisions if d.src == "198.18.1.3" and d.action is Action.BLOCK]
    # Its first probe came before it linked: banned in full, then cut.
    assert len(banned) == 1
    assert [c.src for c in det.take_cuts()] == ["198.18.1.3"]


def test_a_member_without_a_ban_yet_is_a_decoy_from_its_first_decision() -> None:
    """A source that is muted by nothing and triggers only once the group exists (trigger
    3): its acting decision says decoy, so its ban is short from the start, and no cut."""
    det = Detector(DetectorConfig(tcp_ports=frozenset(range(1, 100)), scan_trigger=3))
    decisions = decoy_scan(det, range(1, 6), copies=True)
    blocks = [d for d in decisions if d.action is Action.BLOCK]
    assert {d.src for d in blocks} == set(NAMES)
    assert all(d.decoy and d.group for d in blocks)
    assert det.take_cuts() == []


def test_proof_of_address_keeps_the_full_ban() -> None:
    """A member that completed a handshake (a CONNECT) is no decoy: a forged source cannot."""
    det = Detector(CONFIG)
    decoy_scan(det, range(1, 2))
    det._tracker.hit(ME, 6, 99, ScanKind.CONNECT, HOST, 0.005)  # its handshake
    decoy_scan(det, range(2, 4), start=0.01)
    assert [c.src for c in det.take_cuts()] == list(NAMES[:2])
    assert det.decoy_evidence(ME) is not None
    assert det.decoy_evidence(bytes([198, 18, 9, 9])) is None


def test_alerts_are_not_cut() -> None:
    """BLOCK_TCP=0: an alert bans nothing, so nothing is cut; the group is still named."""
    det = Detector(DetectorConfig(tcp_ports=frozenset(range(1, 100)), block_tcp=0))
    decisions = decoy_scan(det, range(1, 4))
    assert det.take_cuts() == []
    assert any(d.group == NAMES for d in decisions)
