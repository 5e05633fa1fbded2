"""Muted sources on their own: counted probes folded into the tracked state, caps, release.

The detector's use of them (who is muted, when the gate is asked again) is tested with the
detector in test_detector.py.
"""

from __future__ import annotations

from portsentinel.detect.mute import MUTE_SECONDS, MUTED_CAP, Mute, Mutes
from portsentinel.detect.settings import DetectorStats
from portsentinel.detect.track import KIND_BIT, Tracker, kinds_of
from portsentinel.model import Action, Reason, ScanKind

TCP, UDP = 6, 17
SCANNER = bytes([198, 18, 0, 2])
HOST = bytes([198, 18, 0, 1])


def tracker(keep_times: int = 0) -> Tracker:
    return Tracker(max_sources=100, max_ports=8, max_dsts=4, keep_times=keep_times)


def counted(mute: Mute, kind: ScanKind, now: float, times: int = 1) -> None:
    """What the detector's hot path does for a muted probe."""
    for _ in range(times):
        mute.count += 1
        mute.kinds |= KIND_BIT[kind]
        mute.last = now


def test_a_mute_lasts_mute_seconds_and_starts_empty() -> None:
    mutes = Mutes(tracker(), (TCP, UDP))
    mutes.mute(TCP, SCANNER, 2.0)
    mute = mutes.by_proto[TCP][SCANNER]
    assert (mute.until, mute.count, mute.kinds, mute.last) == (2.0 + MUTE_SECONDS, 0, 0, 2.0)
    assert mutes.by_proto[UDP] == {}


def test_fold_brings_hits_kinds_last_seen_and_times_but_no_ports() -> None:
    track = tracker(keep_times=3)
    state = track.hit(SCANNER, TCP, 80, ScanKind.SYN, HOST, 1.0)
    mutes = Mutes(track, (TCP, UDP))
    mutes.mute(TCP, SCANNER, 1.0)
    mute = mutes.by_proto[TCP][SCANNER]
    counted(mute, ScanKind.FIN, 1.5, times=5)
    mutes.fold(SCANNER, mute)
    assert (state.hits, state.last_seen, state.ports_seen) == (6, 1.5, 1)
    assert kinds_of(state.kinds) == [ScanKind.SYN, ScanKind.FIN]
    assert state.times is not None
    assert list(state.times) == [1.5, 1.5, 1.5]  # capped at the times kept
    assert (mute.count, mute.kinds) == (0, 0)  # folded once, not twice
    mutes.fold(SCANNER, mute)
    assert state.hits == 6
    assert mutes.take_held() == {SCANNER: 5}


def test_fold_of_an_evicted_source_still_counts_it_held() -> None:
    mutes = Mutes(tracker(), (TCP, UDP))
    mutes.mute(UDP, SCANNER, 1.0)
    counted(mutes.by_proto[UDP][SCANNER], ScanKind.UDP, 1.1, times=2)
    mutes.fold_source(SCANNER)  # not tracked: nothing to fold into
    assert SCANNER in mutes.by_proto[UDP]  # a read leaves it muted
    assert mutes.take_held() == {SCANNER: 2}
    assert mutes.take_held() == {}


def test_release_and_clear_unmute_with_the_counts_folded_in() -> None:
    track = tracker()
    state = track.hit(SCANNER, TCP, 80, ScanKind.SYN, HOST, 1.0)
    other = bytes([198, 18, 0, 3])
    mutes = Mutes(track, (TCP, UDP))
    mutes.mute(TCP, SCANNER, 1.0)
    mutes.mute(UDP, SCANNER, 1.0)
    mutes.mute(TCP, other, 1.0)
    counted(mutes.by_proto[TCP][SCANNER], ScanKind.SYN, 1.2, times=3)
    mutes.release(SCANNER)
    assert SCANNER not in mutes.by_proto[TCP]
    assert SCANNER not in mutes.by_proto[UDP]
    assert state.hits == 4
    assert other in mutes.by_proto[TCP]
    mutes.clear()
    assert mutes.by_proto == {TCP: {}, UDP: {}}
    assert mutes.take_held() == {SCANNER: 3}


def test_count_held_counts_a_probe_tracked_at_once() -> None:
    mutes = Mutes(tracker(), (TCP, UDP))
    mutes.count_held(SCANNER)
    mutes.count_held(SCANNER)
    assert mutes.take_held() == {SCANNER: 2}


def test_the_muted_sources_are_capped_and_the_overflow_folded_first() -> None:
    track = tracker()
    mutes = Mutes(track, (TCP, UDP))
    first = (0).to_bytes(4, "big")
    state = track.hit(first, TCP, 80, ScanKind.SYN, HOST, 1.0)
    for i in range(MUTED_CAP):
        mutes.mute(TCP, i.to_bytes(4, "big"), 1.0)
    counted(mutes.by_proto[TCP][first], ScanKind.SYN, 1.1)
    mutes.mute(TCP, SCANNER, 1.2)  # over the cap: the table starts over
    assert list(mutes.by_proto[TCP]) == [SCANNER]
    assert state.hits == 2  # the dropped mutes' counts were folded in first
    for i in range(MUTED_CAP):
        mutes.count_held(i.to_bytes(4, "big"))
    mutes.mute(TCP, first, 1.3)  # the per-source detail is capped too
    assert mutes.take_held() == {}


def test_counted_in_adds_muted_probes_as_held_already_blocked_records() -> None:
    mutes = Mutes(tracker(), (TCP, UDP))
    mutes.kinds[ScanKind.SYN] += 3
    mutes.kinds[ScanKind.UDP] += 1
    stats = DetectorStats(probes=10, held=2)
    stats.probes_by_kind[ScanKind.SYN] = 10
    out = mutes.counted_in(stats)
    assert (out.probes, out.held) == (14, 6)
    assert (out.probes_by_kind[ScanKind.SYN], out.probes_by_kind[ScanKind.UDP]) == (13, 1)
    assert out.decisions_by_action[Action.IGNORED] == 4
    assert out.ignored_by_reason[Reason.ALREADY_BLOCKED] == 4
    assert (stats.probes, stats.held) == (10, 2)  # the original is left as it was


def test_fresh_mutes_are_handed_out_once_and_emptied_by_clear() -> None:
    mutes = Mutes(tracker(), (TCP, UDP))
    mutes.mute(TCP, SCANNER, 1.0)
    mutes.mute(UDP, SCANNER, 1.0)
    assert mutes.take_fresh() == [(SCANNER, TCP), (SCANNER, UDP)]
    assert mutes.take_fresh() == []
    mutes.mute(TCP, HOST, 2.0)
    mutes.clear()  # a reload: nothing muted is handed out any more
    assert mutes.take_fresh() == []


def test_fresh_mutes_are_bounded() -> None:
    mutes = Mutes(tracker(), (TCP, UDP))
    for n in range(MUTED_CAP + 10):
        mutes.mute(TCP, n.to_bytes(4, "big"), 1.0)
    assert len(mutes.take_fresh()) == MUTED_CAP
