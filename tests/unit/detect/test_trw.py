"""SCAN_RULE="trw": the sequential test alone, then walked through the detector."""

from __future__ import annotations

import math

import pytest

from portsentinel.detect.detector import Detector
from portsentinel.detect.rules import ScanTrigger
from portsentinel.detect.settings import DetectorConfig
from portsentinel.detect.track import SourceState
from portsentinel.detect.trw import MAX_CONTACTS, SequentialTest, scoring_rule, walk_of
from portsentinel.model import ACK, FIN, SYN, Action, Mode, Packet, Reason, ScanKind

SCANNER = bytes([198, 18, 0, 2])
CLIENT = bytes([198, 18, 0, 3])
HOST = bytes([198, 18, 0, 1])
TRW = DetectorConfig(tcp_mode=Mode.ATCP, udp_mode=Mode.AUDP, scan_rule="trw")


def tcp(port: int, src: bytes = SCANNER, flags: int = SYN) -> Packet:
    return (6, src, HOST, 40000, port, flags, 64, False, 0)


def udp(port: int, src: bytes = SCANNER) -> Packet:
    return (17, src, HOST, 40000, port, 0, 64, False, 0)


def detector(
    config: DetectorConfig = TRW, in_use: frozenset[int] = frozenset({22, 80})
) -> Detector:
    return Detector(config, local={HOST}, in_use_tcp=in_use, in_use_udp=frozenset({53}))


def state() -> SourceState:
    return SourceState(0.0, HOST, 0, 6 << 16 | 1)


def scored(rule: SequentialTest, s: SourceState) -> tuple[float, int]:
    score = rule.score(s)
    assert score is not None
    return round(score[0], 9), score[1]


# --- the test alone --------------------------------------------------------------------------


def test_paper_numbers_four_failures_flag_four_successes_clear() -> None:
    rule = SequentialTest()
    s = state()
    assert rule.threshold == pytest.approx(99.0)
    fired = [rule.observe(s, 6, port, ScanKind.SYN, HOST, float(port)) for port in (1, 2, 3, 4)]
    assert fired == [False, False, False, True]
    assert scored(rule, s) == (256.0, 4)
    s2 = state()
    for port in (22, 80, 443):
        rule.success(s2, 6, port, HOST)
    # 1/64 is still above (1-beta)/(1-alpha) = 1/99: three successes do not clear...
    assert scored(rule, s2) == (1 / 64, 3)
    rule.success(s2, 6, 25, HOST)
    assert scored(rule, s2) == (1.0, 0)  # ...four do, and a new walk starts


def test_repeats_are_no_new_trial() -> None:
    rule = SequentialTest()
    s = state()
    for _ in range(10):
        assert not rule.observe(s, 6, 1, ScanKind.SYN, HOST, 0.0)
    assert scored(rule, s) == (4.0, 1)
    rule.success(s, 6, 80, HOST)
    rule.success(s, 6, 80, HOST)
    assert scored(rule, s) == (1.0, 2)
    # the same port on another destination is another first contact
    rule.observe(s, 6, 1, ScanKind.SYN, bytes([198, 18, 0, 9]), 0.0)
    assert scored(rule, s) == (4.0, 3)


def test_flagged_stays_flagged() -> None:
    rule = SequentialTest()
    s = state()
    for port in range(1, 5):
        rule.observe(s, 6, port, ScanKind.SYN, HOST, 0.0)
    for port in range(100, 110):
        rule.success(s, 6, port, HOST)
    assert rule.observe(s, 6, 1, ScanKind.SYN, HOST, 0.0)  # a repeat still says scanner
    assert scored(rule, s) == (256.0, 4)


def test_score_before_any_trial_is_none() -> None:
    assert SequentialTest().score(state()) is None
    assert walk_of(state()) is None


def test_contacts_remembered_are_bounded() -> None:
    rule = SequentialTest(alpha=0.000001, beta=0.999999, theta0=0.51, theta1=0.49)
    s = state()
    for port in range(MAX_CONTACTS + 10):
        rule.observe(s, 6, port, ScanKind.SYN, HOST, 0.0)
    walk = walk_of(s)
    assert walk is not None
    assert len(walk.contacted) == MAX_CONTACTS
    assert walk.contacts == MAX_CONTACTS + 10


@pytest.mark.parametrize(
    ("alpha", "beta", "theta0", "theta1"),
    [(0.0, 0.99, 0.8, 0.2), (0.5, 0.4, 0.8, 0.2), (0.01, 1.0, 0.8, 0.2),
     (0.01, 0.99, 0.2, 0.8), (0.01, 0.99, 1.0, 0.2), (0.01, 0.99, 0.8, 0.0)],
)  # fmt: skip
def test_parameters_checked(alpha: float, beta: float, theta0: float, theta1: float) -> None:
    with pytest.raises(ValueError, match="TRW needs"):
        SequentialTest(alpha, beta, theta0, theta1)


def test_walk_length_follows_the_parameters() -> None:
    # alpha 0.001, beta 0.999: threshold 999; failures weigh 0.9/0.1 = 9: four (6561) flag.
    rule = SequentialTest(alpha=0.001, beta=0.999, theta0=0.9, theta1=0.1)
    s = state()
    fired = [rule.observe(s, 6, p, ScanKind.SYN, HOST, 0.0) for p in range(1, 5)]
    assert fired == [False, False, False, True]
    assert math.isclose(rule.threshold, 999.0)


def test_scoring_rule_follows_scan_rule() -> None:
    assert isinstance(scoring_rule(TRW), SequentialTest)
    trigger = scoring_rule(DetectorConfig(scan_trigger=3, scan_window=5.0))
    assert isinstance(trigger, ScanTrigger)
    assert (trigger.trigger, trigger.window) == (3, 5.0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"scan_rule": "nope"}, "scan_rule"), ({"trw_false_positive": 0.995}, "false positive"),
     ({"trw_success_scanner": 0.9}, "scanner success")],
)  # fmt: skip
def test_config_checked(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DetectorConfig(**changes)  # type: ignore[arg-type]


# --- walked through the detector ------------------------------------------------------------


def test_single_closed_port_probe_alerts_nobody() -> None:
    d = detector()
    [decision] = d.feed(tcp(23), 0.0)
    assert decision.action is Action.IGNORED
    assert decision.reason is Reason.BELOW_TRIGGER
    assert decision.rule is None
    assert decision.score == pytest.approx(4.0)
    assert decision.contacts == 1


def test_slow_scan_of_eight_ports_over_two_minutes_is_caught() -> None:
    d = detector()
    decisions = []
    for i, port in enumerate((21, 23, 25, 110, 139, 143, 445, 3389)):
        decisions += d.feed(tcp(port), i * 120.0 / 7)  # 8 ports spread evenly over 2 minutes
    acted = [x for x in decisions if x.action is not Action.IGNORED]
    assert [x.port for x in acted] == [110]  # the fourth port decides
    first = acted[0]
    assert first.action is Action.BLOCK
    assert (first.rule, first.first, first.contacts) == ("trw", True, 4)
    assert first.score == pytest.approx(256.0)
    assert first.time == pytest.approx(3 * 120.0 / 7)
    assert all(x.reason is Reason.ALREADY_BLOCKED for x in decisions[4:])


def test_benign_client_stays_silent() -> None:
    """A client of the host's services that mistypes a port now and then."""
    d = detector()
    decisions = []
    t = 0.0
    for _round in range(50):  # connects again and again to the services, some retries
        for port in (22, 80, 80, 22):
            decisions += d.feed(tcp(port, CLIENT), t)
            t += 1.0
    decisions += d.feed(tcp(81, CLIENT), t)  # a wrong port...
    decisions += d.feed(tcp(81, CLIENT), t + 1)  # ...retried
    decisions += d.feed(tcp(443, CLIENT), t + 2)  # another one, much later
    decisions += d.feed(udp(53, CLIENT), t + 3)  # DNS: in use, a success
    assert all(x.action is Action.IGNORED for x in decisions)
    assert decisions[-1].score == pytest.approx(16.0)  # two failures, the successes came first


def test_successes_after_a_failure_clear_a_client() -> None:
    d = detector(in_use=frozenset({22, 80, 443, 993, 995}))
    d.feed(tcp(23, CLIENT), 0.0)
    for port in (22, 80, 443, 993, 995):
        assert d.feed(tcp(port, CLIENT), 1.0) == []  # in use: no decision, but a success
    [after] = d.feed(tcp(25, CLIENT), 2.0)
    assert after.score == pytest.approx(4.0)  # 4 * (1/4)^5 < 1/99: cleared; then 4
    assert after.contacts == 1
    assert after.action is Action.IGNORED


def test_only_syn_and_udp_to_ports_in_use_are_successes() -> None:
    d = detector()
    d.feed(tcp(23), 0.0)
    d.feed(tcp(80, flags=FIN), 1.0)  # a FIN to an open port opens nothing
    d.feed(tcp(80, flags=SYN | ACK), 1.0)  # not a probe at all
    [x] = d.feed(tcp(24), 2.0)
    assert x.score == pytest.approx(16.0)
    d.feed(udp(53), 3.0)  # a datagram to a port in use: a success
    [y] = d.feed(tcp(25), 4.0)
    assert y.score == pytest.approx(16.0)


def test_trigger_rule_records_no_score() -> None:
    d = detector(DetectorConfig(tcp_mode=Mode.ATCP, udp_mode=Mode.AUDP))
    [x] = d.feed(tcp(23), 0.0)
    assert x.action is Action.BLOCK
    assert (x.score, x.contacts) == (None, 0)


def test_reconfigure_switches_rule() -> None:
    d = detector(DetectorConfig(tcp_mode=Mode.ATCP, udp_mode=Mode.AUDP))
    d.reconfigure(TRW)
    [x] = d.feed(tcp(23), 0.0)
    assert x.action is Action.IGNORED
    assert x.score == pytest.approx(4.0)


def test_a_long_scan_keeps_a_finite_score() -> None:
    """A scan of more ports than a score can show (L = 4**n overflows a float past ~512
    failures) still makes records, with L capped: it crashed the detector before."""
    det = detector(DetectorConfig(scan_rule="trw", block_tcp=0))
    ports = [p for p in range(1, 1024) if p not in {22, 80, 113, 139}]  # watched, not in use
    records = [d for n, port in enumerate(ports) for d in det.feed(tcp(port), n * 0.001)]
    assert len(records) == len(ports)
    last = records[-1]
    assert last.reason is Reason.ALREADY_BLOCKED
    assert last.score is not None
    assert math.isfinite(last.score)
    assert last.score == pytest.approx(math.exp(709.78))
    assert last.contacts == len(ports)
