"""The replay's record gate: a source's repeats held back as the daemon holds them, on the
capture's clock, and summarised once a stretch ends and at the end; nothing dropped."""

from __future__ import annotations

from portsentinel.cli.replay_repeats import Held, Repeats
from portsentinel.detect.detector import Detector
from portsentinel.detect.settings import DetectorConfig
from portsentinel.model import Action, Packet
from portsentinel.ratelimit import SUMMARY_EVERY

SCANNER = bytes([198, 19, 0, 1])
HOST = bytes([198, 18, 0, 1])


def syn(port: int, src: bytes = SCANNER) -> Packet:
    return (6, src, HOST, 40000, port, 0x02, 64, False, 0)


def scan(repeats: Repeats, detector: Detector, start: float, probes: int, step: float) -> int:
    """Probes to ports 1.. from SCANNER, driven as the replay's second pass drives them;
    returns the decisions built."""
    built = 0
    for i in range(probes):
        now = start + i * step
        if now >= repeats.due:
            repeats.next_stretch(now)
        built += len(detector.feed(syn(1 + i % 1000), now))
    return built


def test_a_blocked_scanners_repeats_are_held_and_summarised_per_stretch() -> None:
    detector = Detector(DetectorConfig(advanced_tcp_limit=1024))
    held: list[Held] = []
    repeats = Repeats(detector, held.append)
    built = scan(repeats, detector, 100.0, 2500, 0.01)  # 25 s: two stretches and a part
    repeats.finish(124.99)  # the last probe's time
    assert [(h.time, h.seconds) for h in held] == [
        (110.0, SUMMARY_EVERY), (120.0, SUMMARY_EVERY), (124.99, 124.99 - 120.0),
    ]  # fmt: skip
    assert all(h.top == ((("198.19.0.1", "already blocked", h.count)),) for h in held)
    assert built + sum(h.count for h in held) == 2500  # nothing dropped
    assert built < 50  # the block, 20 at once, then about one a second
    stats = detector.stats
    assert stats.decisions_by_action[Action.IGNORED] == 2499  # every probe still counted
    assert stats.held == 2500 - built


def test_nothing_held_means_no_summary() -> None:
    detector = Detector(DetectorConfig())
    held: list[Held] = []
    repeats = Repeats(detector, held.append)
    assert scan(repeats, detector, 0.0, 10, 1.0) == 10  # within the burst: every record built
    repeats.finish(9.0)
    assert held == []


def test_finish_before_any_packet_says_nothing() -> None:
    held: list[Held] = []
    Repeats(Detector(DetectorConfig()), held.append).finish(5.0)
    assert held == []
