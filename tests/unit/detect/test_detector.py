"""The detector end to end on synthetic packets: the per-packet steps, in order."""

from __future__ import annotations

import ipaddress
import sys
import threading
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portsentinel.detect.detector import Detector
from portsentinel.detect.mute import MUTE_SECONDS
from portsentinel.detect.settings import DetectorConfig
from portsentinel.detect.track import SourceState, kinds_of
from portsentinel.model import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    URG,
    Action,
    Decision,
    Frag,
    Mode,
    Packet,
    Proto,
    Reason,
    ScanKind,
)
from portsentinel.networks import AddressSet

SCANNER = bytes([198, 18, 0, 2])
HOST = bytes([198, 18, 0, 1])
OTHER_HOST = bytes([198, 18, 0, 9])
SCANNER6 = ipaddress.IPv6Address("fd00::2").packed
HOST6 = ipaddress.IPv6Address("fd00::1").packed
TCP_PORTS = frozenset({1, 79, 111, 31337})
UDP_PORTS = frozenset({1, 161, 31337})
BASE = DetectorConfig(tcp_ports=TCP_PORTS, udp_ports=UDP_PORTS)


def addr(i: int) -> bytes:
    return (0xC6130000 + i).to_bytes(4, "big")  # 198.19.x.y


def tcp(
    port: int, flags: int = SYN, src: bytes = SCANNER, dst: bytes = HOST, **kw: int | bool
) -> Packet:
    return (
        6,
        src,
        dst,
        40000,
        port,
        flags,
        64,
        bool(kw.get("options", False)),
        int(kw.get("frag", 0)),
    )


def udp(port: int, src: bytes = SCANNER, dst: bytes = HOST, frag: int = 0) -> Packet:
    return (17, src, dst, 40000, port, 0, 64, False, frag)


def detector(**kw: object) -> Detector:
    return Detector(replace(BASE, **kw))  # type: ignore[arg-type]


def one(decisions: list[Decision]) -> Decision:
    assert len(decisions) == 1
    return decisions[0]


def reasons(det: Detector, packets: list[Packet], now: float = 0.0) -> list[Reason | None]:
    """The reason of each packet's decision, None for no decision."""
    out: list[Reason | None] = []
    for pkt in packets:
        decisions = det.feed(pkt, now)
        out.append(one(decisions).reason if decisions else None)
    return out


# --- step 1: what is a probe ------------------------------------------------------------------


@pytest.mark.parametrize("flags", [ACK, RST, SYN | ACK, FIN | ACK, RST | ACK, 0xFF])
def test_ack_or_rst_is_not_a_probe(flags: int) -> None:
    det = detector()
    assert det.feed(tcp(80, flags), 0.0) == []
    assert det.stats.not_probe == 1
    assert det.stats.probes == 0


@pytest.mark.parametrize(
    ("flags", "kind"),
    [
        (SYN, ScanKind.SYN),
        (FIN, ScanKind.FIN),
        (0, ScanKind.NULL),
        (FIN | URG | PSH, ScanKind.XMAS),
        (SYN | FIN, ScanKind.UNKNOWN),
    ],
)
def test_tcp_kinds(flags: int, kind: ScanKind) -> None:
    d = one(detector().feed(tcp(80, flags), 0.0))
    assert d.kind is kind
    assert d.flags == flags


def test_udp_kind() -> None:
    d = one(detector().feed(udp(53), 0.0))
    assert (d.kind, d.proto, d.flags) == (ScanKind.UDP, Proto.UDP, 0)


def test_other_protocols_are_not_watched() -> None:
    det = detector()
    assert det.feed((1, SCANNER, HOST, 0, 0, 0, 64, False, 0), 0.0) == []
    assert det.stats.unwatched == 1


# --- step 2: watched ports per mode -----------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "port", "watched"),
    [
        (Mode.STCP, 79, True),
        (Mode.STCP, 80, False),
        (Mode.ATCP, 0, True),
        (Mode.ATCP, 80, True),
        (Mode.ATCP, 1023, True),
        (Mode.ATCP, 1024, False),
        (Mode.ATCP, 113, False),  # excluded
        (Mode.ATCP, 31337, False),  # listed, but atcp ignores TCP_PORTS
        (Mode.TCP, 79, False),  # bound modes take no raw packets
        (None, 79, False),
    ],
)
def test_tcp_watched_ports(mode: Mode | None, port: int, watched: bool) -> None:
    det = detector(tcp_mode=mode, advanced_exclude_tcp=frozenset({113}))
    assert bool(det.feed(tcp(port), 0.0)) is watched
    assert det.stats.unwatched == (0 if watched else 1)


@pytest.mark.parametrize(
    ("mode", "port", "watched"),
    [
        (Mode.SUDP, 161, True),
        (Mode.SUDP, 162, False),
        (Mode.AUDP, 137, True),
        (Mode.AUDP, 138, False),  # excluded
        (Mode.AUDP, 149, True),
        (Mode.AUDP, 150, False),  # at the limit
        (Mode.UDP, 161, False),
        (None, 161, False),
    ],
)
def test_udp_watched_ports(mode: Mode | None, port: int, watched: bool) -> None:
    det = detector(udp_mode=mode, advanced_udp_limit=150, advanced_exclude_udp=frozenset({138}))
    assert bool(det.feed(udp(port), 0.0)) is watched


def test_limit_above_the_port_space_watches_every_port() -> None:
    det = detector(advanced_tcp_limit=100_000)
    assert det.feed(tcp(65535), 0.0)


@pytest.mark.parametrize("proto", [Proto.TCP, Proto.UDP])
def test_bound_modes_take_connects_on_their_ports(proto: Proto) -> None:
    det = detector(tcp_mode=Mode.TCP, udp_mode=Mode.UDP)
    d = one(det.feed_connect(proto, SCANNER, HOST, 31337, 5.0))
    assert (d.kind, d.proto, d.port, d.mode) == (ScanKind.CONNECT, proto, 31337, Mode(proto.key))
    assert (d.flags, d.ip_options) == (0, False)
    assert det.feed_connect(proto, SCANNER, HOST, 5000, 5.0) == []
    assert det.stats.connects == 2
    assert det.stats.unwatched == 1


def test_connects_are_refused_by_stealth_modes() -> None:
    assert detector().feed_connect(Proto.TCP, SCANNER, HOST, 79, 0.0) == []


def test_in_use_view_is_read_live() -> None:
    in_use = {22}
    det = Detector(BASE, in_use_tcp=in_use)
    assert det.feed(tcp(22), 0.0) == []
    assert det.stats.in_use == 1
    in_use.add(80)  # a service started
    assert det.feed(tcp(80), 0.0) == []
    in_use.discard(22)  # a service stopped: protection is back
    assert det.feed(tcp(22), 0.0)
    det.set_in_use(Proto.TCP, frozenset())
    assert det.feed(tcp(80), 0.0)
    det.set_in_use(Proto.UDP, {161})
    assert det.feed(udp(161), 0.0) == []
    assert det.stats.in_use == 3
    with pytest.raises(ValueError, match="protocol"):
        det.set_in_use(1, set())  # type: ignore[arg-type]


def test_in_use_is_asked_only_for_watched_ports() -> None:
    det = Detector(BASE, in_use_tcp={5000})
    assert det.feed(tcp(5000), 0.0) == []
    assert (det.stats.unwatched, det.stats.in_use) == (1, 0)


def test_in_use_does_not_apply_to_bound_modes() -> None:
    det = Detector(replace(BASE, tcp_mode=Mode.TCP), in_use_tcp={79})
    assert det.feed_connect(Proto.TCP, SCANNER, HOST, 79, 0.0)


# --- step 3: destination ----------------------------------------------------------------------


def test_destination_must_be_local_when_a_view_is_set() -> None:
    det = Detector(BASE, local={HOST})
    assert det.feed(tcp(80, dst=OTHER_HOST), 0.0) == []
    assert det.stats.not_local == 1
    assert det.feed(tcp(80), 0.0)
    det.set_local(None)
    assert det.feed(tcp(80, dst=OTHER_HOST), 0.0)


def test_reply_check_is_asked_last_and_excuses_replies() -> None:
    asked: list[Packet] = []

    def is_reply(pkt: Packet) -> bool:
        asked.append(pkt)
        return pkt[3] == 53  # the test's stand-in for a conntrack lookup

    det = detector()
    det.set_reply_check(is_reply)
    reply = (17, SCANNER, HOST, 53, 161, 0, 64, False, 0)
    assert det.feed(reply, 0.0) == []
    assert det.stats.replies == 1
    assert one(det.feed(udp(161), 0.0)).kind is ScanKind.UDP  # asked, not a reply
    assert det.feed(udp(5000), 0.0) == []  # unwatched: never asked
    assert det.feed(tcp(80, ACK), 0.0) == []  # not a probe: never asked
    # A SYN to an unprivileged port is asked too (a connection the host accepted on a
    # listener closed since: an FTP client's data port) ...
    wide = detector(tcp_mode=Mode.ATCP, advanced_tcp_limit=65536)
    wide.set_reply_check(is_reply)
    assert one(wide.feed(tcp(40000), 0.0)).kind is ScanKind.SYN
    assert one(wide.feed(tcp(79), 0.0)).kind is ScanKind.SYN  # ... not below 1024 ...
    assert one(wide.feed(tcp(40001, FIN), 0.0)).kind is ScanKind.FIN  # ... nor other probes
    assert len(asked) == 3
    det.set_reply_check(None)
    assert one(det.feed(reply, 0.0)).kind is ScanKind.UDP


def test_the_protect_check_refuses_as_the_never_block_set() -> None:
    det = detector()
    det.set_protect_check(lambda src: src == SCANNER)
    decision = one(det.feed(tcp(79), 0.0))
    assert decision.action is Action.IGNORED
    assert decision.reason is Reason.NEVER_BLOCK
    assert one(det.feed(tcp(79, src=addr(7)), 0.0)).action is Action.BLOCK
    det.set_protect_check(None)
    assert one(det.feed(tcp(79), 1.0)).action is Action.BLOCK


def test_connects_skip_the_destination_check() -> None:
    det = Detector(replace(BASE, tcp_mode=Mode.TCP), local={HOST})
    assert det.feed_connect(Proto.TCP, SCANNER, OTHER_HOST, 79, 0.0)


# --- step 4: admission ------------------------------------------------------------------------


def test_ignore_list_and_it_does_not_count() -> None:
    det = Detector(
        replace(BASE, scan_trigger=2),
        ignore=AddressSet([ipaddress.ip_network("198.18.0.0/24")]),
    )
    for _ in range(3):
        d = one(det.feed(tcp(80), 0.0))
        assert (d.action, d.reason, d.hits, d.first) == (
            Action.IGNORED,
            Reason.IGNORE_LIST,
            0,
            False,
        )
    assert det.source(SCANNER) is None
    det.set_ignore(AddressSet())
    assert one(det.feed(tcp(80), 0.0)).reason is Reason.BELOW_TRIGGER


def test_own_address_is_never_acted_on() -> None:
    det = Detector(BASE, local={HOST, SCANNER})
    d = one(det.feed(tcp(80), 0.0))
    assert (d.action, d.reason) == (Action.IGNORED, Reason.OWN_ADDRESS)
    det.set_local({HOST})
    assert one(det.feed(tcp(80), 0.0)).action is Action.BLOCK


def test_own_address_applies_to_connects() -> None:
    det = Detector(replace(BASE, tcp_mode=Mode.TCP), local={HOST})
    d = one(det.feed_connect(Proto.TCP, HOST, HOST, 79, 0.0))
    assert d.reason is Reason.OWN_ADDRESS


# --- step 5: SCAN_TRIGGER ---------------------------------------------------------------------


@pytest.mark.parametrize("trigger", [0, 1])
def test_trigger_zero_and_one_act_on_the_first_hit(trigger: int) -> None:
    det = detector(scan_trigger=trigger)
    d = one(det.feed(tcp(80), 0.0))
    assert (d.action, d.reason, d.first, d.rule, d.hits) == (
        Action.BLOCK,
        Reason.TRIGGERED,
        True,
        "scan_trigger",
        1,
    )
    later = one(det.feed(tcp(81), 1.0))  # the rule fires again; the policy refuses
    assert (later.reason, later.rule, later.first) == (
        Reason.ALREADY_BLOCKED,
        "scan_trigger",
        False,
    )


def test_trigger_counts_repeats_to_one_port() -> None:
    det = detector(scan_trigger=3)
    assert reasons(det, [tcp(80)] * 4) == [
        Reason.BELOW_TRIGGER,
        Reason.BELOW_TRIGGER,
        Reason.TRIGGERED,
        Reason.ALREADY_BLOCKED,
    ]


def test_trigger_is_shared_by_both_protocols() -> None:
    det = detector(scan_trigger=3)
    assert reasons(det, [tcp(80), udp(53), udp(53)]) == [
        Reason.BELOW_TRIGGER,
        Reason.BELOW_TRIGGER,
        Reason.TRIGGERED,
    ]
    assert det.stats.decisions_by_action[Action.BLOCK] == 1


def test_trigger_is_per_source() -> None:
    det = detector(scan_trigger=2)
    assert (
        reasons(det, [tcp(80), tcp(80, src=addr(1)), tcp(80, src=addr(2))])
        == [Reason.BELOW_TRIGGER] * 3
    )
    assert reasons(det, [tcp(80, src=addr(1))]) == [Reason.TRIGGERED]


def test_unwatched_traffic_does_not_count() -> None:
    det = detector(scan_trigger=2)
    reasons(det, [tcp(80), tcp(5000), tcp(80, ACK), tcp(80, RST)])
    state = det.source(SCANNER)
    assert state is not None
    assert state.hits == 1


def test_window_lets_slow_scans_pass() -> None:
    det = detector(scan_trigger=3, scan_window=10.0)
    out = [one(det.feed(tcp(80 + i), float(i * 6))).reason for i in range(5)]
    assert out == [Reason.BELOW_TRIGGER] * 5
    # Hits at 18, 24 and 25 fall inside ten seconds.
    assert one(det.feed(tcp(99), 25.0)).reason is Reason.TRIGGERED


def test_window_counts_hits_no_older_than_the_window() -> None:
    det = detector(scan_trigger=3, scan_window=10.0)
    times = [0.0, 5.0, 11.0, 12.0]
    out = [one(det.feed(tcp(80), now)).reason for now in times]
    assert out == [Reason.BELOW_TRIGGER] * 3 + [Reason.TRIGGERED]


# --- step 6: the response ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "action"), [(0, Action.ALERT), (1, Action.BLOCK), (2, Action.COMMAND)]
)
def test_block_level_per_protocol(level: int, action: Action) -> None:
    det = detector(block_tcp=level, block_udp=(level + 1) % 3)
    assert one(det.feed(tcp(80), 0.0)).action is action
    other = one(det.feed(udp(53, src=addr(1)), 0.0))
    assert other.action is [Action.ALERT, Action.BLOCK, Action.COMMAND][(level + 1) % 3]


def test_a_block_covers_the_other_protocol() -> None:
    det = detector()
    assert one(det.feed(tcp(80), 0.0)).action is Action.BLOCK
    d = one(det.feed(udp(53), 1.0))
    assert (d.action, d.reason, d.first) == (Action.IGNORED, Reason.ALREADY_BLOCKED, False)


def test_an_alert_covers_only_its_protocol() -> None:
    det = detector(block_tcp=0)
    assert one(det.feed(tcp(80), 0.0)).action is Action.ALERT
    assert one(det.feed(tcp(81), 0.0)).reason is Reason.ALREADY_BLOCKED
    assert one(det.feed(udp(53), 0.0)).action is Action.BLOCK


def test_release_lets_the_next_trigger_act() -> None:
    det = detector(scan_trigger=2)
    reasons(det, [tcp(80), tcp(80)])
    det.release(SCANNER)
    d = one(det.feed(tcp(80), 9.0))
    # Evidence is kept: a repeat offender fires at once.
    assert (d.reason, d.first, d.hits) == (Reason.TRIGGERED, True, 3)


def test_restore_marks_existing_bans() -> None:
    det = detector()
    det.restore(SCANNER, Proto.TCP, Action.BLOCK)
    det.restore(addr(1), Proto.TCP, Action.ALERT)
    assert one(det.feed(udp(53), 0.0)).reason is Reason.ALREADY_BLOCKED
    assert one(det.feed(tcp(80, src=addr(1)), 0.0)).reason is Reason.ALREADY_BLOCKED
    assert one(det.feed(udp(53, src=addr(1)), 0.0)).reason is Reason.TRIGGERED


def test_remembered_responses_are_bounded() -> None:
    det = detector(max_responded=2, block_tcp=0)  # alerts: the ban budget does not apply
    for i in range(3):
        assert one(det.feed(tcp(80, src=addr(i)), 0.0)).reason is Reason.TRIGGERED
    assert len(det.policy.responses) == 2
    # addr(0) was forgotten first, so it is acted on again; addr(2) is still remembered.
    assert one(det.feed(tcp(80, src=addr(0)), 1.0)).reason is Reason.TRIGGERED
    assert one(det.feed(tcp(80, src=addr(2)), 1.0)).reason is Reason.ALREADY_BLOCKED


# --- bounded state ----------------------------------------------------------------------------


def test_spoofed_flood_keeps_state_within_the_caps() -> None:
    det = detector(max_sources=64, max_responded=32, max_ports_per_source=4)
    for i in range(20_000):
        det.feed(tcp(i % 1024, src=addr(i)), float(i))
    assert det.stats.tracked_sources == 64
    assert det.stats.sources_evicted == 20_000 - 64
    # Every forged source is a single probe: weak evidence, which may fill only half of the
    # active-ban cap; the rest is kept for sources with strong evidence.
    budget = det.policy.budget
    assert budget is not None
    assert budget.active == len(det.policy.responses) == 16
    assert budget.refused == 20_000 - 16


def test_a_real_scanner_is_banned_while_forged_sources_exhaust_the_weak_budget() -> None:
    det = detector(max_responded=32, ban_strong_ports=5)
    for i in range(5_000):  # a spoofed flood: one probe per forged source
        det.feed(tcp(i % 1024, src=addr(i)), 0.001 * i)
    scanner = bytes([198, 18, 0, 77])
    outcomes = [one(det.feed(tcp(port, src=scanner), 5.0 + port * 1e-3)) for port in range(1, 8)]
    # Refused while weak (the weak tier is spent), banned once its evidence is strong.
    assert [d.reason for d in outcomes[:4]] == [Reason.BAN_BUDGET] * 4
    assert outcomes[4].action is Action.BLOCK
    assert outcomes[4].ports_seen == 5
    assert outcomes[5].reason is Reason.ALREADY_BLOCKED


def test_never_block_refuses_every_response_but_still_reports() -> None:
    gateway = bytes([198, 18, 0, 254])
    det = detector(block_tcp=0)
    det.set_never_block(AddressSet([ipaddress.ip_network("198.18.0.254/32")]))
    decision = one(det.feed(tcp(79, src=gateway), 0.0))
    assert (decision.action, decision.reason) == (Action.IGNORED, Reason.NEVER_BLOCK)
    assert det.source(gateway) is not None  # the evidence is kept (for "why")
    assert one(det.feed(tcp(79), 0.0)).action is Action.ALERT


def test_block_min_ports_waits_for_evidence_but_a_handshake_acts_at_once() -> None:
    det = detector(block_min_ports=3, tcp_mode=Mode.STCP)
    reasons_seen = [one(det.feed(tcp(port), 0.0)).reason for port in (1, 79, 111)]
    assert reasons_seen == [Reason.WEAK_EVIDENCE, Reason.WEAK_EVIDENCE, Reason.TRIGGERED]
    bound = detector(block_min_ports=3, tcp_mode=Mode.TCP)
    connect = one(bound.feed_connect(Proto.TCP, SCANNER, HOST, 79, 0.0))
    assert (connect.kind, connect.action) == (ScanKind.CONNECT, Action.BLOCK)


def test_an_evicted_source_starts_over() -> None:
    det = detector(scan_trigger=2, max_sources=3)
    det.feed(tcp(80), 0.0)
    for i in range(3):
        det.feed(tcp(80, src=addr(i)), 1.0)
    d = one(det.feed(tcp(80), 2.0))
    assert (d.reason, d.hits) == (Reason.BELOW_TRIGGER, 1)


def test_tick_expires_idle_sources() -> None:
    det = detector(scan_trigger=5, idle_timeout=60.0)
    det.feed(tcp(80), 0.0)
    det.feed(tcp(80, src=addr(1)), 30.0)
    assert det.tick(61.0) == []
    # Idle for longer than the timeout: its evidence is not counted again.
    d = one(det.feed(tcp(80), 62.0))
    assert d.hits == 1
    assert det.stats.sources_expired == 1
    # Kept while idle for less than the timeout, forgotten within two.
    det.tick(89.0)
    assert det.source(addr(1)) is not None
    det.tick(122.0)
    assert det.source(addr(1)) is None
    assert (det.stats.sources_expired, det.stats.tracked_sources) == (2, 1)


def test_ports_seen_is_capped() -> None:
    det = detector(scan_trigger=10_000, max_ports_per_source=5)
    for port in range(100):
        d = one(det.feed(tcp(port), 0.0))
    assert (d.hits, d.ports_seen) == (100, 5)


# --- fragments --------------------------------------------------------------------------------


def test_tiny_fragment_to_a_watched_port() -> None:
    det = detector()
    d = one(det.feed(tcp(80, ACK, frag=Frag.TINY), 0.0))  # flags of a fragment prove nothing
    assert (d.kind, d.port, d.proto) == (ScanKind.FRAGMENT, 80, Proto.TCP)
    assert det.stats.probes_by_kind[ScanKind.FRAGMENT] == 1


def test_fragment_with_a_port_goes_through_the_port_checks() -> None:
    det = Detector(BASE, in_use_tcp={22}, local={HOST})
    assert det.feed(tcp(5000, frag=Frag.TINY), 0.0) == []
    assert det.feed(tcp(22, frag=Frag.TINY), 0.0) == []
    assert det.feed(tcp(80, frag=Frag.TINY, dst=OTHER_HOST), 0.0) == []
    assert (det.stats.unwatched, det.stats.in_use, det.stats.not_local) == (1, 1, 1)


@pytest.mark.parametrize("mode", [Mode.STCP, Mode.ATCP])
def test_portless_fragment_always_counts_for_stealth_modes(mode: Mode) -> None:
    det = Detector(replace(BASE, tcp_mode=mode, advanced_exclude_tcp=frozenset({0})))
    d = one(det.feed(tcp(0, frag=Frag.OVERLAP), 0.0))
    assert (d.kind, d.port) == (ScanKind.FRAGMENT, 0)


@pytest.mark.parametrize("mode", [Mode.TCP, None])
def test_portless_fragment_needs_a_stealth_mode(mode: Mode | None) -> None:
    det = detector(tcp_mode=mode)
    assert det.feed(tcp(0, frag=Frag.OVERLAP), 0.0) == []
    assert det.stats.unwatched == 1


def test_portless_fragment_still_needs_a_local_destination() -> None:
    det = Detector(BASE, local={HOST})
    assert det.feed(tcp(0, dst=OTHER_HOST, frag=Frag.OVERLAP), 0.0) == []
    assert det.stats.not_local == 1


def test_udp_fragment() -> None:
    d = one(detector().feed(udp(0, frag=Frag.OVERLAP), 0.0))
    assert (d.kind, d.proto, d.mode) == (ScanKind.FRAGMENT, Proto.UDP, Mode.AUDP)


# --- decisions and stats ----------------------------------------------------------------------


def test_decision_fields() -> None:
    det = detector(scan_trigger=2)
    det.feed(tcp(79), 1.0)
    pkt = tcp(111, FIN | URG | PSH, options=True)
    d = one(det.feed(pkt, 2.5))
    assert d == Decision(
        time=2.5,
        src="198.18.0.2",
        dst="198.18.0.1",
        proto=Proto.TCP,
        port=111,
        kind=ScanKind.XMAS,
        action=Action.BLOCK,
        reason=Reason.TRIGGERED,
        flags=FIN | URG | PSH,
        ip_options=True,
        mode=Mode.ATCP,
        rule="scan_trigger",
        hits=2,
        ports_seen=2,
        first=True,
    )


def test_ipv6_decision_text() -> None:
    d = one(detector().feed(udp(53, src=SCANNER6, dst=HOST6), 0.0))
    assert (d.src, d.dst) == ("fd00::2", "fd00::1")


def test_stats_count_each_outcome() -> None:
    det = Detector(replace(BASE, scan_trigger=2), in_use_tcp={22}, local={HOST})
    det.feed(tcp(80, ACK), 0.0)
    det.feed(tcp(5000), 0.0)
    det.feed(tcp(22), 0.0)
    det.feed(tcp(80, dst=OTHER_HOST), 0.0)
    det.feed(tcp(80), 0.0)
    det.feed(udp(53), 0.0)
    s = det.stats
    assert (s.packets, s.not_probe, s.unwatched, s.in_use, s.not_local, s.probes) == (
        6,
        1,
        1,
        1,
        1,
        2,
    )
    assert s.probes_by_kind[ScanKind.SYN] == 1
    assert s.probes_by_kind[ScanKind.UDP] == 1
    assert s.decisions_by_action == {
        Action.ALERT: 0,
        Action.BLOCK: 1,
        Action.COMMAND: 0,
        Action.IGNORED: 1,
    }
    assert s.tracked_sources == 1


def test_watched_ports_for_start_up_lines() -> None:
    det = detector(tcp_mode=Mode.STCP, advanced_udp_limit=5, advanced_exclude_udp=frozenset({1}))
    assert det.watched_ports(Proto.TCP) == sorted(TCP_PORTS)
    assert det.watched_ports(Proto.UDP) == [0, 2, 3, 4]
    assert detector(tcp_mode=Mode.TCP).watched_ports(Proto.TCP) == sorted(TCP_PORTS)
    assert detector(udp_mode=None).watched_ports(Proto.UDP) == []


# --- rules ------------------------------------------------------------------------------------


class Recorder:
    """A rule that fires on a chosen port and remembers what it was shown."""

    def __init__(self, name: str, port: int) -> None:
        self._name = name
        self.port = port
        self.seen: list[tuple[int, int, ScanKind, bytes, float, int]] = []

    @property
    def name(self) -> str:
        return self._name

    @property
    def times_needed(self) -> int:
        return 4

    def observe(  # noqa: PLR0917 - the ScoringRule signature
        self, state: SourceState, proto: int, port: int, kind: ScanKind, dst: bytes, now: float
    ) -> bool:
        self.seen.append((proto, port, kind, dst, now, state.hits))
        return port == self.port


def test_every_rule_sees_every_probe_and_the_first_that_fires_names_it() -> None:
    first, second = Recorder("first", 80), Recorder("second", 81)
    det = Detector(BASE, rules=[first, second])
    assert one(det.feed(tcp(79), 1.0)).reason is Reason.BELOW_TRIGGER
    d = one(det.feed(tcp(81), 2.0))
    assert (d.reason, d.rule) == (Reason.TRIGGERED, "second")
    second.port = 80
    d = one(det.feed(tcp(80, src=addr(1)), 3.0))
    assert d.rule == "first"
    assert [s[:2] for s in first.seen] == [(6, 79), (6, 81), (6, 80)]
    assert first.seen == second.seen
    assert first.seen[1] == (6, 81, ScanKind.SYN, HOST, 2.0, 2)
    state = det.source(SCANNER)
    assert state is not None
    assert state.times is not None
    assert state.times.maxlen == 4


def test_no_rules_never_fire() -> None:
    det = Detector(BASE, rules=[])
    assert reasons(det, [tcp(80)] * 3) == [Reason.BELOW_TRIGGER] * 3


# --- configuration ----------------------------------------------------------------------------


def test_bad_block_level_is_refused() -> None:
    with pytest.raises(ValueError, match="block level"):
        detector(block_udp=3)


# --- properties over random traffic -----------------------------------------------------------

_packets = st.tuples(
    st.sampled_from([6, 17]),
    st.integers(0, 40).map(addr),
    st.sampled_from([HOST, OTHER_HOST]),
    st.integers(0, 1100),
    st.integers(0, 255),
    st.sampled_from([0, 0, 0, Frag.TINY, Frag.OVERLAP]),
    st.floats(0.0, 5.0),
)


@given(st.lists(_packets, max_size=300), st.integers(0, 4))
@settings(max_examples=200, deadline=None)
def test_random_traffic_respects_caps_and_acts_once_per_source(
    stream: list[tuple[int, bytes, bytes, int, int, int, float]], trigger: int
) -> None:
    det = Detector(
        replace(BASE, scan_trigger=trigger, max_sources=8, max_ports_per_source=3),
        local={HOST},
        in_use_tcp={22},
    )
    now = 0.0
    blocked: set[str] = set()
    for proto, src, dst, port, flags, frag, step in stream:
        now += step
        pkt: Packet = (proto, src, dst, 1, port, flags if proto == 6 else 0, 64, False, frag)
        decisions = det.feed(pkt, now)
        assert len(decisions) <= 1
        assert det.stats.tracked_sources <= 8
        if not decisions:
            continue
        d = decisions[0]
        assert d.dst == "198.18.0.1"
        assert (d.proto, d.port) != (Proto.TCP, 22)  # in use: never a probe
        if not frag:
            assert d.kind is not ScanKind.FRAGMENT
        if d.action is Action.BLOCK:
            assert d.src not in blocked  # a block covers both protocols until released
            blocked.add(d.src)
        assert d.first is (d.reason is Reason.TRIGGERED)
        assert d.ports_seen <= 3
    s = det.stats
    assert s.packets == len(stream)
    assert s.probes == sum(s.probes_by_kind.values()) == sum(s.decisions_by_action.values())
    assert s.packets == s.not_probe + s.unwatched + s.in_use + s.not_local + s.probes


@given(
    st.lists(_packets, max_size=200),
    st.sampled_from([Mode.ATCP, Mode.STCP, Mode.TCP, None]),
    st.sampled_from([Mode.AUDP, Mode.SUDP, Mode.UDP, None]),
)
@settings(max_examples=200, deadline=None)
def test_the_screen_is_false_only_for_packets_feed_drops_whatever_the_state(
    stream: list[tuple[int, bytes, bytes, int, int, int, float]],
    tcp_mode: Mode | None,
    udp_mode: Mode | None,
) -> None:
    """Replay keeps only the packets the screen accepts: feeding just those must leave the
    detector where feeding everything does (same decisions, same probe counters)."""
    config = replace(BASE, tcp_mode=tcp_mode, udp_mode=udp_mode, advanced_tcp_limit=600)
    every, kept = Detector(config, local={HOST}), Detector(config, local={HOST})
    now = 0.0
    for proto, src, dst, port, flags, frag, step in stream:
        now += step
        pkt: Packet = (proto, src, dst, 1, port, flags if proto == 6 else 0, 64, False, frag)
        decided = every.feed(pkt, now)
        assert kept.screen(pkt) or not decided
        assert kept.feed(pkt, now) == decided if kept.screen(pkt) else not decided
    assert every.stats.probes == kept.stats.probes
    assert every.stats.decisions_by_action == kept.stats.decisions_by_action


def test_the_screen_follows_a_reconfiguration() -> None:
    det = detector(tcp_mode=Mode.ATCP)
    assert not det.screen(tcp(2000))
    det.reconfigure(replace(BASE, advanced_tcp_limit=4000))
    assert det.screen(tcp(2000))


# --- reload -------------------------------------------------------------------------------------


def test_reconfigure_changes_ports_and_trigger_but_keeps_evidence_and_bans() -> None:
    det = detector(tcp_mode=Mode.STCP, scan_trigger=3)
    assert one(det.feed(tcp(79), 0.0)).reason is Reason.BELOW_TRIGGER
    banned = bytes([198, 18, 0, 66])
    det.restore(banned, Proto.TCP, Action.BLOCK)
    assert det.feed(tcp(2222), 0.0) == []  # not a listed port
    det.reconfigure(replace(det.config, tcp_ports=frozenset({2222}), scan_trigger=2))
    assert det.feed(tcp(79), 1.0) == []  # no longer watched
    fired = one(det.feed(tcp(2222), 1.0))  # newly watched; the earlier hit still counts
    assert (fired.reason, fired.hits) == (Reason.TRIGGERED, 2)
    assert one(det.feed(tcp(2222, src=banned), 1.0)).reason is Reason.BELOW_TRIGGER
    assert one(det.feed(tcp(2222, src=banned), 1.0)).reason is Reason.ALREADY_BLOCKED
    assert det.stats.probes == 4


def test_reconfigure_to_fewer_sources_evicts_the_oldest() -> None:
    det = detector(max_sources=10)
    for i in range(10):
        det.feed(tcp(79, src=addr(i)), float(i))
    det.reconfigure(replace(det.config, max_sources=3))
    # The counters read the tracker when read: the eviction shows at once.
    assert (det.stats.tracked_sources, det.stats.sources_evicted) == (3, 7)
    assert det.source(addr(9)) is not None
    assert det.source(addr(0)) is None


# --- the record gate ----------------------------------------------------------------------------


def test_record_gate_holds_ignored_records_but_every_probe_is_counted() -> None:
    det = detector()
    asked: list[tuple[bytes, Reason]] = []

    def gate(src: bytes, reason: Reason, now: float) -> bool:
        asked.append((src, reason))
        return len(asked) <= 2  # the first two records pass, the rest are held

    det.set_record_gate(gate)
    first = one(det.feed(tcp(80), 1.0))  # a trigger is never gated
    assert first.reason is Reason.TRIGGERED
    repeats = [det.feed(tcp(81 + i), 2.0 + i) for i in range(5)]
    assert [len(r) for r in repeats] == [1, 1, 0, 0, 0]
    assert asked == [(SCANNER, Reason.ALREADY_BLOCKED)] * 5
    s = det.stats
    assert (s.probes, s.held) == (6, 3)
    assert s.ignored_by_reason[Reason.ALREADY_BLOCKED] == 5
    assert s.decisions_by_action[Action.IGNORED] == 5
    # The evidence of held probes is kept: all six ports.
    state = det.source(SCANNER)
    assert state is not None
    assert state.ports_seen == 6
    det.set_record_gate(None)
    assert one(det.feed(tcp(99), 9.0)).reason is Reason.ALREADY_BLOCKED


def test_a_held_source_is_muted_for_a_moment_then_asked_again() -> None:
    det = detector()
    asked: list[float] = []

    def gate(src: bytes, reason: Reason, now: float) -> bool:
        asked.append(now)
        return False  # hold every record

    det.set_record_gate(gate)
    assert one(det.feed(tcp(80), 1.0)).reason is Reason.TRIGGERED
    assert det.feed(tcp(81), 1.0) == []  # held: asked once, then muted
    for i in range(10):
        assert det.feed(tcp(82 + i), 1.0 + i * 0.01) == []
    assert asked == [1.0]  # the muted probes did not ask the gate
    assert det.take_held() == {SCANNER: 10}
    assert det.take_held() == {}
    s = det.stats
    assert (s.probes, s.held) == (12, 11)
    assert s.ignored_by_reason[Reason.ALREADY_BLOCKED] == 11
    state = det.source(SCANNER)
    assert state is not None
    # Every probe is a hit; the port evidence stays as it was when the source was muted.
    assert (state.hits, state.ports_seen, state.last_seen) == (12, 2, 1.0 + 9 * 0.01)
    # After the mute the gate is asked again.
    assert det.feed(tcp(100), 1.0 + MUTE_SECONDS) == []
    assert asked == [1.0, 1.0 + MUTE_SECONDS]
    # A released source is judged afresh at once: its next probe triggers again.
    det.release(SCANNER)
    assert one(det.feed(tcp(101), 1.3)).reason is Reason.TRIGGERED


def test_a_muted_sources_probes_reach_its_state_when_read_or_when_the_mute_ends() -> None:
    det = detector(scan_window=60.0, scan_trigger=3)
    det.set_record_gate(lambda src, reason, now: False)
    for port in (80, 81, 82):
        det.feed(tcp(port), 1.0)  # the third triggers
    det.feed(tcp(83), 1.0)  # held: muted
    for i in range(5):
        det.feed(tcp(84 + i, flags=FIN), 1.1 + i * 0.01)
    state = det._tracker.get(SCANNER)
    assert state is not None
    assert state.hits == 4  # not yet: the muted probes are only counted
    assert det.stats.probes == 9
    state = det.source(SCANNER)  # a read folds them in
    assert state is not None
    assert (state.hits, state.last_seen) == (9, 1.1 + 4 * 0.01)
    assert kinds_of(state.kinds) == [ScanKind.SYN, ScanKind.FIN]
    assert state.times is not None
    assert len(state.times) == 3
    for i in range(3):
        det.feed(tcp(90 + i), 1.2)
    assert det.feed(tcp(93), 1.0 + MUTE_SECONDS) == []  # the mute ended: asked again
    assert det._tracker.get(SCANNER).hits == 13  # type: ignore[union-attr]
    assert det.take_held() == {SCANNER: 8}


def test_muting_is_per_protocol_for_alerts() -> None:
    # An alert (BLOCK 0) covers only its protocol: a TCP-muted source's UDP probe is judged.
    det = detector(block_tcp=0, block_udp=0)
    det.set_record_gate(lambda src, reason, now: False)
    assert one(det.feed(tcp(80), 1.0)).action is Action.ALERT
    assert det.feed(tcp(81), 1.0) == []  # muted for TCP now
    assert one(det.feed(udp(161), 1.0)).action is Action.ALERT


def test_in_use_recheck_is_asked_last_and_not_for_responded_sources() -> None:
    det = detector(tcp_mode=Mode.ATCP)
    asked: list[int] = []

    def recheck(port: int) -> bool:
        asked.append(port)
        return port == 8080 % 1024  # a listener opened since the view was read

    det.set_in_use_recheck(Proto.TCP, recheck)
    det.set_in_use(Proto.TCP, {22})
    assert det.feed(tcp(22), 1.0) == []  # in the view: no recheck
    assert det.feed(tcp(80, flags=ACK), 1.0) == []  # not a probe: no recheck
    assert det.feed(tcp(8080 % 1024), 1.0) == []  # the recheck finds it in use
    assert det.stats.in_use == 2
    assert one(det.feed(tcp(81), 1.0)).reason is Reason.TRIGGERED
    assert asked == [8080 % 1024, 81]
    # Already blocked: its probes are counted without a kernel query.
    assert one(det.feed(tcp(82), 1.0)).reason is Reason.ALREADY_BLOCKED
    assert asked == [8080 % 1024, 81]
    assert one(det.feed(tcp(83, src=OTHER_HOST), 1.0)).reason is Reason.TRIGGERED
    assert asked == [8080 % 1024, 81, 83]
    assert det.stats.probes == 3


def test_fresh_probes_leave_out_repeats_of_responded_sources() -> None:
    det = detector()
    det.set_record_gate(lambda src, reason, now: False)
    assert det.fresh_probes() == 0
    det.feed(tcp(80), 1.0)  # the trigger: fresh
    det.feed(tcp(81, flags=ACK), 1.0)  # not a probe
    assert det.fresh_probes() == 1
    for port in (82, 83, 84):  # repeats (the first held, then muted)
        det.feed(tcp(port), 1.0)
    assert det.fresh_probes() == 1
    det.feed(tcp(85, src=OTHER_HOST), 1.0)
    assert det.fresh_probes() == 2


class CountingRule:
    """A rule with memory: counts every probe it is shown."""

    name = "counting"
    times_needed = 0

    def __init__(self) -> None:
        self.seen = 0

    def observe(  # noqa: PLR0917
        self, state: SourceState, proto: int, port: int, kind: ScanKind, dst: bytes, now: float
    ) -> bool:
        self.seen += 1
        return True


def test_muted_repeats_still_reach_rules_with_memory_and_the_counters() -> None:
    rule = CountingRule()
    det = Detector(BASE, rules=[rule])
    det.set_record_gate(lambda src, reason, now: False)
    for port in range(80, 90):
        det.feed(tcp(port), 1.0)
    assert rule.seen == 10  # the trigger, one held, eight muted
    s = det.stats
    assert (s.probes, s.held, s.probes_by_kind[ScanKind.SYN]) == (10, 9, 10)
    assert s.ignored_by_reason[Reason.ALREADY_BLOCKED] == 9
    assert s.decisions_by_action[Action.IGNORED] == 9
    assert det.stats.probes == 10  # reading twice does not count twice


def test_counters_read_from_another_thread_lose_nothing() -> None:
    # The metrics endpoint reads the counters from its own thread while the loop counts.
    det = detector(max_ports_per_source=4)
    det.set_record_gate(lambda src, reason, now: False)
    done = threading.Event()
    reads = 0

    def read() -> None:
        nonlocal reads
        while not done.is_set():
            assert det.stats.probes >= 0
            reads += 1

    reader = threading.Thread(target=read)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up
    reader.start()
    try:
        for i in range(200_000):
            det.feed(tcp(1 + i % 1000), 1.0)  # after the trigger and one held: muted
    finally:
        done.set()
        reader.join()
        sys.setswitchinterval(interval)
    assert reads > 0
    s = det.stats
    assert (s.probes, s.probes_by_kind[ScanKind.SYN]) == (200_000, 200_000)
    assert s.held == 200_000 - 1
    assert s.decisions_by_action[Action.IGNORED] == 200_000 - 1
