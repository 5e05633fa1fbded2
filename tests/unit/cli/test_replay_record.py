"""``replay --state-dir``: the recorder writes what a replay found into an offline store, with
the capture's times, the daemon's ban rules, and nothing ever applied."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from portsentinel.cli import ban_operations, history_views, replay_record
from portsentinel.cli.replay_repeats import Held
from portsentinel.config.setup import detector_config, load_setup
from portsentinel.detect.detector import Detector
from portsentinel.errors import StoreError
from portsentinel.store.records import BanState
from portsentinel.store.sqlite import Store
from unit.cli.stores import HOUR, SCANNER, replay_into, run, small_store


def test_replayed_syn_scan_is_recorded_with_the_capture_times(tmp_path: Path) -> None:
    state = tmp_path / "state"
    recorded = replay_into(state, "syn.pcap", tmp_path)
    assert (recorded.events, recorded.bans) == (118, 1)
    assert recorded.stats.decisions == {"block": 1, "ignored": 117}
    with Store.open(str(state), offline=None) as store:
        assert store.offline
        assert store.meta()["offline"] == "1"
        rows = store.events_for(SCANNER)
        first = rows[0]
        assert (first.action, first.port, len(rows)) == ("block", 23, 118)
        ban = store.ban_for(SCANNER)
        assert ban is not None
        assert ban.offline
        assert (ban.state, ban.created, ban.expires) == (
            BanState.ACTIVE,
            first.time,
            first.time + HOUR,
        )
        assert (ban.rule, ban.offence, ban.reason) == (
            "scan_trigger", 1, "SYN scan: scan trigger reached",
        )  # fmt: skip
        evidence = ban.evidence
        assert (evidence["ports"], evidence["kinds"], evidence["hits"]) == (["tcp/23"], ["SYN"], 1)
        assert evidence["first_seen"] == evidence["last_seen"] == first.time
        assert evidence["plan"] == ["nftables"]
        assert store.actions(ban.id) == []  # records only: nothing was applied
        end = rows[-1].time
    assert history_views.reference_time(Store.open(str(state), offline=None), 0.0) == end


def test_by_default_the_store_gets_what_the_daemon_would_have_stored(tmp_path: Path) -> None:
    """The repeats the daemon holds back are neither printed nor stored, but counted."""
    state = tmp_path / "state"
    held: list[Held] = []
    recorded = replay_into(state, "syn.pcap", tmp_path, summarise=held.append)
    assert (recorded.events, recorded.bans) == (21, 1)  # the block, then 20 repeats at once
    assert recorded.stats.decisions == {"block": 1, "ignored": 117}  # every probe counted
    assert [(h.count, h.top) for h in held] == [(97, ((SCANNER, "already blocked", 97),))]
    with Store.open(str(state), offline=None) as store:
        assert len(store.events_for(SCANNER)) == 21
        ban = store.ban_for(SCANNER)
    assert ban is not None
    assert ban.evidence["hits"] == 1


def test_list_why_and_history_read_a_replayed_capture(tmp_path: Path) -> None:
    state = tmp_path / "state"
    replay_into(state, "syn.pcap", tmp_path)
    out = io.StringIO()
    assert ban_operations.list_bans(str(state), True, out) == 0  # as of the capture, not of today
    assert [json.loads(line)["address"] for line in out.getvalue().splitlines()] == [SCANNER]
    status, text, _ = run(["why", SCANNER, "--state-dir", str(state)])
    assert status == 0
    lines = text.splitlines()
    assert lines[0] == f"{SCANNER}: banned (active), a replay's record: never applied"
    assert "  actions   none: offline record (plan: nftables)" in lines
    assert "  ports     tcp 1-21,23-79,81-112,114-120,443 (118 distinct)" in lines
    assert "  decisions ignored 117, block 1" in lines
    status, text, _ = run(["history", "--state-dir", str(state), "--json"])  # default 24h
    rows = [json.loads(line) for line in text.splitlines()]
    assert [(r["src"], r["action"], r["state"], r["ports"]) for r in rows] == [
        (SCANNER, "block", "active", {"tcp": "23"})
    ]


def test_a_later_capture_ends_the_expired_ban_and_counts_a_repeat_offence(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = 'SCAN_TRIGGER="0"\nBAN_DURATION="5s"\n'
    replay_into(state, "syn.pcap", tmp_path, config)  # ban until 21:34:09.29
    recorded = replay_into(state, "udp.pcap", tmp_path, config)  # triggers at 21:34:10.40
    assert recorded.bans == 1
    with Store.open(str(state), offline=None) as store:
        bans = store.bans_between(-1e300, 1e300)
    first, second = bans
    assert (first.state, first.lifted_by, first.lifted_at) == (
        BanState.EXPIRED, "expiry", first.created + 5,
    )  # fmt: skip
    assert (second.state, second.offence, second.evidence["proto"]) == (BanState.ACTIVE, 2, "udp")
    assert second.expires == pytest.approx(second.created + 10)  # doubled for a repeat


def test_replaying_the_same_capture_twice_keeps_one_ban(tmp_path: Path) -> None:
    state = tmp_path / "state"
    replay_into(state, "udp.pcap", tmp_path)
    again = replay_into(state, "udp.pcap", tmp_path)
    assert (again.events, again.bans) == (63, 0)  # the first one still holds at that time


def test_block_0_alerts_are_history_not_bans(tmp_path: Path) -> None:
    state = tmp_path / "state"
    recorded = replay_into(state, "udp.pcap", tmp_path, 'SCAN_TRIGGER="0"\nBLOCK_UDP="0"\n')
    assert recorded.bans == 0
    status, text, _ = run(["history", "--state-dir", str(state), "--json"])
    [row] = [json.loads(line) for line in text.splitlines()]
    assert (row["src"], row["action"], row["state"], row["until"]) == (
        SCANNER, "alert", "logged", None,
    )  # fmt: skip
    status, text, _ = run(["why", SCANNER, "--state-dir", str(state)])
    assert (status, text.splitlines()[0]) == (0, f"{SCANNER}: alerted, never banned")
    assert "  rule      scan_trigger" in text.splitlines()


@pytest.mark.parametrize(
    ("config", "bans"),
    [
        ('BLOCK_UDP="2"\n', []),  # no KILL_RUN_CMD: nothing to act with, no ban (as live)
        ('BLOCK_UDP="2"\nKILL_RUN_CMD="/bin/true $TARGET$"\n', [("command", ["run_cmd"])]),
    ],
)
def test_command_only_decisions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str, bans: list[object]
) -> None:
    monkeypatch.setattr(replay_record, "EVENT_BATCH", 10)  # many small transactions, same result
    state = tmp_path / "state"
    recorded = replay_into(state, "udp.pcap", tmp_path, 'SCAN_TRIGGER="0"\n' + config)
    assert recorded.events == 63
    with Store.open(str(state), offline=True) as store:
        assert len(store.events_between(-1e300, 1e300)) == 63
        found = store.bans_between(-1e300, 1e300)
    assert [(b.evidence["action"], b.evidence["plan"]) for b in found] == bans


def test_the_recorder_writes_into_an_offline_store_only(tmp_path: Path) -> None:
    conf = tmp_path / "portsentinel.conf"
    conf.write_text('SCAN_TRIGGER="0"\n')
    setup = load_setup(str(conf), "atcp,audp")
    with Store.open(str(tmp_path)) as store, pytest.raises(ValueError, match="offline"):
        replay_record.ReplayRecorder(store, setup.settings, Detector(detector_config(setup)))


def test_replay_refuses_a_live_store_and_writes_nothing(tmp_path: Path) -> None:
    small_store(tmp_path)
    with pytest.raises(StoreError, match="live store"):
        replay_into(tmp_path, "syn.pcap", tmp_path)
    with Store.open(str(tmp_path)) as store:
        assert store.ban_for(SCANNER) is None
        assert store.events_for(SCANNER) == []
