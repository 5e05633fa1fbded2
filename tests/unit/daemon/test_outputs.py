"""Decisions into the daemon's outputs: log lines, events, store rows (a real SQLite store
behind a fake responder), bans and alerts asked for, the limits on repeats, the notices and
the summaries."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import cast

import pytest

from portsentinel.alert.notify import Notifier
from portsentinel.alert.sinks import EventSink, LogSink
from portsentinel.config.setup import detector_config
from portsentinel.daemon.outputs import NOTICE_EVERY, ROWS_BATCH, ROWS_EVERY, Outputs, _key_text
from portsentinel.decode import decode_ip
from portsentinel.detect.detector import Detector
from portsentinel.host.neverblock import NeverBlock
from portsentinel.model import Action, Decision, Mode, Proto, Reason, ScanKind
from portsentinel.respond.worker import Responder
from unit.daemon.fakes import START, WALL, FakeResponder, FakeSources, setup, syn
from unit.decode_frames import DST4

SCANNER = "198.18.0.1"
OFFSET = WALL - START


def decision(
    action: Action = Action.BLOCK,
    reason: Reason = Reason.TRIGGERED,
    *,
    src: str = SCANNER,
    port: int = 1,
    first: bool = False,
    at: float = START,
) -> Decision:
    return Decision(
        time=at,
        src=src,
        dst="198.18.0.2",
        proto=Proto.TCP,
        port=port,
        kind=ScanKind.SYN,
        action=action,
        reason=reason,
        mode=Mode.ATCP,
        rule="scan_trigger",
        hits=1,
        ports_seen=1,
        first=first,
    )


class Made:
    """An ``Outputs`` as the pipeline makes it, and what it writes to."""

    def __init__(self, tmp_path: Path, *, events: bool = False, responder: bool = True) -> None:
        self.log = io.StringIO()
        self.events_path = tmp_path / "events.jsonl"
        the_setup = setup(tmp_path)
        self.detector = Detector(detector_config(the_setup), local={DST4})
        self.never_block = NeverBlock(FakeSources())
        self.never_block.refresh()
        self.detector.set_never_block(self.never_block)
        self.sink = EventSink(str(self.events_path)) if events else None
        self.outputs = Outputs(LogSink(self.log), self.sink, self.detector, self.never_block)
        self.outputs.now, self.outputs.wall_offset = START, OFFSET
        self.responder: FakeResponder | None = None
        if responder:
            self.responder = FakeResponder(tmp_path / "state")
            self.outputs.responder = cast(Responder, self.responder)

    def lines(self) -> list[str]:
        self.outputs.flush()
        return self.log.getvalue().splitlines()

    def events(self) -> list[dict[str, object]]:
        self.outputs.flush()
        return [json.loads(line) for line in self.events_path.read_text().splitlines()]


# --- responses ----------------------------------------------------------------------------------


def test_the_first_decision_asks_for_a_ban_with_the_sources_evidence(tmp_path: Path) -> None:
    made = Made(tmp_path)
    pkt = decode_ip(syn(1))
    assert pkt is not None
    decisions = made.detector.feed(pkt, START)
    made.outputs.emit(decisions)
    assert made.responder is not None
    [ban] = made.responder.bans
    assert (ban.address, ban.port, ban.level, ban.rule) == (SCANNER, 1, 1, "scan_trigger")
    assert ban.reason == "SYN scan: scan trigger reached"
    assert ban.evidence == {
        "hits": 1,
        "ports": ["tcp/1"],
        "kinds": ["SYN"],
        "first_seen": WALL,
        "last_seen": WALL,
        "destinations": 1,
    }
    assert made.responder.alerts == []


def test_decoy_copies_ask_for_short_bans_and_a_cut_after_the_turns_first_bans(
    tmp_path: Path,
) -> None:
    """nmap -D's copies of one probe (one port, one source port, at once) from three
    sources: the first is banned in full and cut once the turn ends, the others ask for
    decoys' bans with the group's evidence; the events name the group."""
    made = Made(tmp_path, events=True)
    sources = [bytes([198, 18, 1, n]) for n in (3, 4, 1)]
    for src in sources:
        pkt = decode_ip(syn(7, src=src))
        assert pkt is not None
        made.outputs.emit(made.detector.feed(pkt, START))
    assert made.responder is not None
    assert made.responder.cuts == []  # not before the turn's first bans went out
    events = made.events()  # flushes the turn
    names = ["198.18.1.3", "198.18.1.4", "198.18.1.1"]
    assert [(c.address, list(c.group)) for c in made.responder.cuts] == [(names[0], names[:2])]
    bans = made.responder.bans
    assert [(b.address, b.decoy) for b in bans] == [(names[0], False), (names[1], True),
                                                     (names[2], True)]  # fmt: skip
    decoy = bans[2].evidence["decoy"]
    assert isinstance(decoy, dict)
    assert decoy["members"] == names
    assert decoy["one_source_port"] is True
    assert [e.get("group") for e in events] == [None, names[:2], names]


def test_an_alert_is_written_as_an_alert_and_a_command_is_a_level_two_ban(
    tmp_path: Path,
) -> None:
    made = Made(tmp_path)
    made.outputs.emit(
        [
            decision(Action.ALERT, first=True),
            decision(Action.COMMAND, src="198.18.0.5", first=True),
        ]
    )
    assert made.responder is not None
    assert [a.address for a in made.responder.alerts] == [SCANNER]
    assert [(b.address, b.level) for b in made.responder.bans] == [("198.18.0.5", 2)]
    # no state in the detector for these: the evidence is the decision's own count
    assert made.responder.bans[0].evidence == {"hits": 1}


def test_without_a_responder_bans_and_commands_are_a_dry_run(tmp_path: Path) -> None:
    made = Made(tmp_path, responder=False)
    made.outputs.emit(
        [
            decision(Action.BLOCK, first=True),
            decision(Action.COMMAND, src="198.18.0.5", first=True),
            decision(Action.ALERT, src="198.18.0.6", first=True),
        ]
    )
    dry = [line for line in made.lines() if line.endswith("(dry run)")]
    assert dry == [
        "attackalert: Host 198.18.0.1 not blocked (dry run)",
        "attackalert: Host 198.18.0.5 not blocked (dry run)",
    ]


def test_the_notifier_hears_of_first_decisions_only(tmp_path: Path) -> None:
    heard: list[tuple[str, float]] = []

    class Heard:
        def submit(self, d: Decision, wall: float) -> None:
            heard.append((d.src, wall))

    made = Made(tmp_path)
    made.outputs.notifier = cast(Notifier, Heard())
    made.outputs.emit([decision(first=True), decision(Action.IGNORED, Reason.ALREADY_BLOCKED)])
    assert heard == [(SCANNER, WALL)]


# --- store rows ---------------------------------------------------------------------------------


def test_rows_wait_for_their_batch_then_go_to_the_store(tmp_path: Path) -> None:
    made = Made(tmp_path)
    assert made.responder is not None
    made.outputs.emit([decision(first=True)])
    made.outputs.flush()
    assert made.responder.rows() == []
    made.outputs.now += ROWS_EVERY
    made.outputs.flush()
    [row] = made.responder.rows()
    assert (row.time, row.src, row.action, row.reason, row.mode) == (
        WALL,
        SCANNER,
        "block",
        "scan trigger reached",
        "atcp",
    )


def test_a_full_batch_goes_at_once_and_flush_everything_sends_the_rest(tmp_path: Path) -> None:
    made = Made(tmp_path, events=True)  # ungated: every repeat gets a row up to its rate
    assert made.responder is not None
    made.outputs.emit(
        [decision(Action.ALERT, Reason.BELOW_TRIGGER, port=p) for p in range(ROWS_BATCH + 3)]
    )
    assert len(made.responder.rows()) == ROWS_BATCH
    made.outputs.flush(everything=True)
    assert len(made.responder.rows()) == ROWS_BATCH + 3


def test_without_a_responder_no_row_is_kept(tmp_path: Path) -> None:
    made = Made(tmp_path, responder=False)
    made.outputs.emit([decision(first=True)])
    made.outputs.flush(everything=True)
    assert made.outputs._rows == []


# --- repeats, notices, summaries ------------------------------------------------------------


def test_with_events_every_decision_is_an_event_but_repeats_are_limited_in_the_log(
    tmp_path: Path,
) -> None:
    made = Made(tmp_path, events=True)
    assert not made.outputs.gated
    repeats = [
        decision(Action.IGNORED, Reason.ALREADY_BLOCKED, port=p, at=START + p * 0.001)
        for p in range(1, 200)
    ]
    made.outputs.emit([decision(first=True), *repeats])
    assert len(made.events()) == 200
    logged = [line for line in made.lines() if "already blocked" in line]
    assert 0 < len(logged) < 199
    assert made.outputs.held == 199 - len(logged)
    made.outputs.summarise()
    assert (
        f"adminalert: {made.outputs.held} repetitive records held back in the last 10s "
        f"(most from {SCANNER} already blocked: {made.outputs.held})"
    ) in made.lines()


def test_without_events_the_detector_asks_the_limiter_first(tmp_path: Path) -> None:
    made = Made(tmp_path)
    assert made.outputs.gated
    for port in range(1, 100):
        pkt = decode_ip(syn(port))
        assert pkt is not None
        made.outputs.emit(made.detector.feed(pkt, START + port * 0.001))
    held = made.detector.stats.held
    assert held > 0
    assert made.outputs.held == held


def test_never_block_refusals_are_noticed_once_a_minute_with_a_count(tmp_path: Path) -> None:
    made = Made(tmp_path)
    refused = decision(Action.IGNORED, Reason.NEVER_BLOCK, src="198.18.0.2")
    made.outputs.emit([refused])
    made.outputs.emit([refused, refused])
    made.outputs.now += NOTICE_EVERY
    made.outputs.emit([refused])
    notices = [line for line in made.lines() if "never-block set (" in line]
    assert notices == [
        "attackalert: Host 198.18.0.2 not blocked: never-block set (host address)",
        "attackalert: Host 198.18.0.2 not blocked: never-block set (host address)"
        " (2 more since the last notice)",
    ]


def test_budget_refusals_are_noticed_apart(tmp_path: Path) -> None:
    made = Made(tmp_path)
    made.outputs.emit([decision(Action.IGNORED, Reason.BAN_BUDGET)])
    assert "adminalert: ban budget exceeded: 198.18.0.1 reported but not blocked" in made.lines()


def test_the_workers_drops_are_summarised_as_they_grow(tmp_path: Path) -> None:
    made = Made(tmp_path)
    assert made.responder is not None
    made.responder.alerts_dropped, made.responder.rows_dropped = 2, 30
    made.outputs.summarise()
    made.outputs.summarise()  # nothing new since: no line
    made.responder.rows_dropped = 31
    made.outputs.summarise()
    warnings = [line for line in made.lines() if "fell behind" in line]
    assert warnings == [
        "adminalert: WARNING: the response worker fell behind: 2 alerts not written to the "
        "history file and 30 probe records not stored in the last 10s",
        "adminalert: WARNING: the response worker fell behind: 0 alerts not written to the "
        "history file and 1 probe records not stored in the last 10s",
    ]


def test_what_the_kernel_counted_for_quiet_sources_joins_the_summary(tmp_path: Path) -> None:
    made = Made(tmp_path)
    assert made.responder is not None
    quiet_source = bytes([198, 18, 0, 7])
    made.responder.quiet_counts.put({(quiet_source, 6): 1500, (quiet_source, 17): 20})
    made.responder.quiet_counts.put({(quiet_source, 6): 480})
    made.outputs.summarise()
    held = [line for line in made.lines() if "198.18.0.7 already blocked" in line]
    assert len(held) == 1
    assert "198.18.0.7 already blocked: 2000" in held[0]
    assert made.outputs.quiet_packets == 2000
    assert made.outputs.quiet is None  # a pipeline without the service's own responder


def test_the_counts_follow_each_first_decision(tmp_path: Path) -> None:
    made = Made(tmp_path)
    made.outputs.emit(
        [
            decision(first=True),
            decision(Action.BLOCK),  # not the first: no second alert
            decision(Action.IGNORED, Reason.ALREADY_BLOCKED, first=True),
        ]
    )
    alerts = made.outputs.counts.snapshot()["alerts"]
    assert isinstance(alerts, dict)
    assert alerts["block"]["SYN"] == 1
    assert "ignored" not in alerts
    assert alerts["alert"]["SYN"] == 0


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ((bytes([198, 18, 0, 1]), Reason.ALREADY_BLOCKED), "198.18.0.1 already blocked"),
        (("198.18.0.9", "why"), "198.18.0.9 why"),
        ("plain", "plain"),
    ],
)
def test_summary_keys_read_as_text(key: object, text: str) -> None:
    assert _key_text(key) == text


def test_with_kernel_hold_the_sources_not_banned_are_released(tmp_path: Path) -> None:
    made = Made(tmp_path)
    assert made.responder is not None
    batch = [
        decision(Action.IGNORED, reason=Reason.WEAK_EVIDENCE, src="198.18.0.5"),
        decision(Action.IGNORED, reason=Reason.BELOW_TRIGGER, src="198.18.0.6"),
        decision(Action.BLOCK, first=True, src="198.18.0.7"),
        decision(Action.ALERT, first=True, src="198.18.0.8"),
    ]
    made.outputs.emit(batch)
    assert made.responder.released == []  # the hold is off
    made.responder.holds = True
    made.outputs.emit(batch)
    assert made.responder.released == ["198.18.0.5", "198.18.0.8"]


# --- PortSentry 2.0's words (LOG_FORMAT="2.0") ------------------------------------------------


def test_2_0s_words_go_to_the_log_and_the_history_file_once_a_turn(tmp_path: Path) -> None:
    made = Made(tmp_path)
    history = tmp_path / "history"
    made.outputs.set_words(setup(tmp_path, 'LOG_FORMAT="2.0"\n').settings, dry_run=False)
    made.outputs.emit([decision(Action.BLOCK, first=True),
                       decision(Action.IGNORED, Reason.ALREADY_BLOCKED, port=2)])  # fmt: skip
    assert not history.exists() or history.read_text() == ""  # held until the turn ends
    lines = made.lines()
    assert lines == [
        "Scan from: [198.18.0.1] (198.18.0.1) protocol: [TCP] port: [1] type: [TCP SYN/Normal "
        "scan] IP opts: [not set] ignored: [false] triggered: [true] noblock: [false] "
        "blocked: [true]",
        "attackalert: Host: 198.18.0.1/198.18.0.1 is already blocked Ignoring",
        "Scan from: [198.18.0.1] (198.18.0.1) protocol: [TCP] port: [2] type: [TCP SYN/Normal "
        "scan] IP opts: [not set] ignored: [false] triggered: [true] noblock: [false] "
        "blocked: [true]",
    ]
    written = history.read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in written] == [lines[0], lines[2]]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4}",
                            line.split(" ", 1)[0]) for line in written)  # fmt: skip


def test_2_0s_words_in_a_dry_run_write_no_file_and_block_nothing(tmp_path: Path) -> None:
    made = Made(tmp_path)
    made.outputs.set_words(setup(tmp_path, 'LOG_FORMAT="2.0"\n').settings, dry_run=True)
    made.outputs.emit([decision(Action.BLOCK, first=True)])
    assert made.lines()[0].endswith("noblock: [false] blocked: [false]")
    assert not (tmp_path / "history").exists()


def test_1_2s_words_stay_the_default(tmp_path: Path) -> None:
    made = Made(tmp_path)
    made.outputs.set_words(setup(tmp_path).settings, dry_run=False)
    made.outputs.emit([decision(Action.ALERT, first=True)])
    assert made.lines()[0].startswith("attackalert: TCP SYN/Normal scan from host:")
    assert not (tmp_path / "history").exists()  # 1.2's line is the responder's to write


def test_a_history_file_that_cannot_be_written_is_logged(tmp_path: Path) -> None:
    made = Made(tmp_path)
    text = f'LOG_FORMAT="2.0"\nHISTORY_FILE="{tmp_path}/missing/history"\n'
    made.outputs.set_words(setup(tmp_path, text).settings, dry_run=False)
    made.outputs.emit([decision(Action.ALERT, first=True)])
    assert made.lines()[-1].startswith(
        f"adminalert: ERROR: cannot write the history file {tmp_path}/missing/history: "
    )
    assert made.lines()[-1].endswith("; 1 lines lost")
