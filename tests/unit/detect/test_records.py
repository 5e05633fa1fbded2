"""The detector's records: what a decision carries, the address texts, and the records a
gate holds back (counted, never built)."""

from __future__ import annotations

from portsentinel.detect.detector import Detector
from portsentinel.detect.records import TEXT_CACHE_SIZE
from portsentinel.detect.settings import DetectorConfig
from portsentinel.model import SYN, Action, Mode, Packet, Proto, Reason, ScanKind

HOST = bytes([198, 18, 0, 1])
SRC = bytes([198, 19, 0, 7])


def syn(src: bytes, port: int) -> Packet:
    return (6, src, HOST, 40000, port, SYN, 64, False, 0)


def test_a_decision_carries_the_sources_evidence_at_that_probe() -> None:
    det = Detector(DetectorConfig(scan_trigger=3, block_tcp=0), local={HOST})
    below = det.feed(syn(SRC, 1), 1.0) + det.feed(syn(SRC, 2), 2.0)  # no gate: every record
    assert [(d.reason, d.hits, d.ports_seen) for d in below] == [
        (Reason.BELOW_TRIGGER, 1, 1),
        (Reason.BELOW_TRIGGER, 2, 2),
    ]
    (alert,) = det.feed(syn(SRC, 2), 3.0)
    assert (alert.src, alert.dst, alert.proto, alert.port) == ("198.19.0.7", "198.18.0.1",
                                                               Proto.TCP, 2)  # fmt: skip
    assert (alert.kind, alert.action, alert.reason, alert.mode) == (
        ScanKind.SYN,
        Action.ALERT,
        Reason.TRIGGERED,
        Mode.ATCP,
    )
    assert (alert.hits, alert.ports_seen, alert.first, alert.rule) == (3, 2, True, "scan_trigger")
    (again,) = det.feed(syn(SRC, 3), 4.0)
    assert (again.reason, again.first, again.hits, again.ports_seen) == (
        Reason.ALREADY_BLOCKED,
        False,
        4,
        3,
    )


def test_under_trw_a_record_carries_the_score() -> None:
    det = Detector(DetectorConfig(scan_rule="trw", block_tcp=0), local={HOST})
    decisions = [d for port in range(1, 5) for d in det.feed(syn(SRC, port), float(port))]
    scores = [(d.reason, round(d.score or 0), d.contacts) for d in decisions]
    # Each failed first contact multiplies L by 4: 4, 16, 64 stay below 99, 256 is a scanner.
    assert scores == [
        (Reason.BELOW_TRIGGER, 4, 1),
        (Reason.BELOW_TRIGGER, 16, 2),
        (Reason.BELOW_TRIGGER, 64, 3),
        (Reason.TRIGGERED, 256, 4),
    ]


def test_records_a_gate_holds_are_counted_and_not_built() -> None:
    det = Detector(DetectorConfig(ban_rate=0.001, ban_burst=1), local={HOST})
    asked: list[tuple[bytes, Reason]] = []

    def gate(src: bytes, reason: Reason, now: float) -> bool:
        asked.append((src, reason))
        return len(asked) == 1  # the first record goes out, the rest are held

    det.set_record_gate(gate)
    sources = [bytes([198, 19, 1, i]) for i in range(1, 6)]
    out = [d for i, src in enumerate(sources) for d in det.feed(syn(src, 7), i * 0.001)]
    # The burst (1 weak ban: half of 1, at least 1) goes to the first source; the others are
    # refused by the budget: one record let through, three held.
    assert [(d.src, d.action, d.reason) for d in out] == [
        ("198.19.1.1", Action.BLOCK, Reason.TRIGGERED),
        ("198.19.1.2", Action.IGNORED, Reason.BAN_BUDGET),
    ]
    assert asked == [(src, Reason.BAN_BUDGET) for src in sources[1:]]
    stats = det.stats
    assert stats.held == 3
    assert stats.ignored_by_reason[Reason.BAN_BUDGET] == 4
    assert stats.decisions_by_action[Action.IGNORED] == 4


def test_address_texts_are_cached_and_bounded() -> None:
    det = Detector(DetectorConfig(block_tcp=0), local={HOST})
    for i in range(TEXT_CACHE_SIZE + 10):
        src = (0xC6130000 + i).to_bytes(4, "big")
        (first,) = det.feed(syn(src, 1), i * 0.01)
        assert first.src == f"198.19.{i >> 8}.{i & 0xFF}"
    assert len(det._texts) <= TEXT_CACHE_SIZE
