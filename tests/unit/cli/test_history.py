"""``why``, ``history``, ``replay --state-dir`` and the shared table printer, on real stores.

Stores are real SQLite files built with the Store API, or by replaying the golden captures
(tests/fixtures/captures: scanner 198.18.0.2, target 198.18.0.1, recorded 2026-11-25).
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import pytest

from portsentinel.cli import bans as operate
from portsentinel.cli import history as ev
from portsentinel.cli import main as cli
from portsentinel.cli.replay import parse_local, survey_in_use
from portsentinel.cli.tables import Column, fit, write_rows
from portsentinel.config.setup import detector_config, load_setup
from portsentinel.detect.detector import Detector
from portsentinel.errors import ConfigError, ConfigErrors, PortSentinelError, StoreError
from portsentinel.store.records import BanState, EventRow, LiftedBy
from portsentinel.store.sqlite import Store

CAPTURES = Path(__file__).resolve().parents[2] / "fixtures" / "captures"
SCANNER = "198.18.0.2"
LOCAL = ["198.18.0.1", "fd00:5e::1"]
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20+00:00
HOUR, DAY = 3600.0, 86400.0


# --- Helpers ------------------------------------------------------------------------------------


def verbs() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portsentinel")
    ev.add_parsers(parser.add_subparsers(dest="verb", required=True))
    return parser


def run(argv: list[str]) -> tuple[int, str, str]:
    """A verb as cli.main runs it: usage errors exit 2, runtime failures 1."""
    args = verbs().parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    try:
        status = args.handler(args, out, err)
    except (ConfigError, ConfigErrors) as exc:
        err.write(f"{exc}\n")
        status = 2
    except PortSentinelError as exc:
        err.write(f"portsentinel: {exc}\n")
        status = 1
    return status, out.getvalue(), err.getvalue()


def event(
    time: float, port: int, *, src: str = "203.0.113.7", dst: str = "192.0.2.1", **kw: object
) -> EventRow:
    fields: dict[str, object] = {
        "proto": "tcp", "kind": "SYN", "action": "ignored", "reason": "below trigger",
        "mode": "atcp", "rule": None, "hits": 1, "ports_seen": 1, "flags": "SYN",
    }  # fmt: skip
    fields.update(kw)
    return EventRow(time, src, dst, port=port, **fields)  # type: ignore[arg-type]


def small_store(state_dir: Path) -> None:
    """One scanner, three probes, one active ban with one backend applied and one failing."""
    with Store.open(str(state_dir)) as store:
        store.add_events(
            [
                event(T0, 21),
                event(T0 + 1, 23, action="block", reason="scan trigger reached",
                      rule="scan_trigger", hits=2, ports_seen=2),
                event(T0 + 2, 25, dst="192.0.2.2", kind="FIN", reason="already blocked",
                      rule="scan_trigger", hits=3, ports_seen=3),
            ]
        )  # fmt: skip
        ban = store.begin_ban(
            "203.0.113.7",
            None,
            created=T0 + 1,
            expires=T0 + 1 + HOUR,
            reason="SYN scan: scan trigger reached",
            rule="scan_trigger",
            evidence={"hits": 2, "ports": ["tcp/21", "tcp/23"], "kinds": ["SYN"],
                      "first_seen": T0, "last_seen": T0 + 1, "plan": ["nftables", "hosts_deny"],
                      "port": 23, "proto": "tcp", "mode": "atcp"},
            offence=1,
        )  # fmt: skip
        store.record_action(ban.id, "nftables", {"set": "ban4"}, "applied", at=T0 + 1)
        for _ in range(2):
            store.record_action(ban.id, "hosts_deny", None, "failed", "denied", at=T0 + 1)
        store.activate(ban.id)


def replay_into(
    state_dir: Path, capture: str, tmp_path: Path, config: str = 'SCAN_TRIGGER="0"\n'
) -> ev.Recorded:
    """What ``portsentinel replay --state-dir`` does, built as cli._cmd_replay builds it."""
    conf = tmp_path / f"replay-{capture}.conf"
    conf.write_text(config)
    setup = load_setup(str(conf), "atcp,audp")
    path = str(CAPTURES / capture)
    local = parse_local(LOCAL)
    seen = survey_in_use(path, local)
    detector = Detector(
        detector_config(setup),
        ignore=setup.ignore,
        local=local,
        in_use_tcp=seen.tcp,
        in_use_udp=seen.udp,
    )
    printed: list[str] = []
    recorded = ev.record_replay(
        path,
        detector,
        lambda d: printed.append(d.action.value),
        state_dir=str(state_dir),
        settings=setup.settings,
    )
    assert len(printed) == recorded.events  # every printed decision is recorded
    return recorded


# --- why ----------------------------------------------------------------------------------------

WHY_SMALL = """\
203.0.113.7: banned (active)
  ban       #1 block, offence 1
  since     2023-11-14T22:13:21.000000+00:00
  until     2023-11-14T23:13:21.000000+00:00
  reason    SYN scan: scan trigger reached
  rule      scan_trigger
  evidence  2 hits; ports tcp 21,23; kinds SYN; seen 2023-11-14T22:13:20.000000+00:00 to \
2023-11-14T22:13:21.000000+00:00
  actions   nftables applied
            hosts_deny failed (2 attempts): denied
  probes    3, 2023-11-14T22:13:20.000000+00:00 to 2023-11-14T22:13:22.000000+00:00
  kinds     SYN 2, FIN 1
  ports     tcp 21,23,25 (3 distinct)
  to        192.0.2.1, 192.0.2.2
  decisions ignored 2, block 1
"""


def test_why_prints_the_ban_its_actions_and_the_probes(tmp_path: Path) -> None:
    small_store(tmp_path)
    assert run(["why", "203.0.113.7", "--state-dir", str(tmp_path)]) == (0, WHY_SMALL, "")


def test_why_json_is_one_object_with_the_event_key_style(tmp_path: Path) -> None:
    small_store(tmp_path)
    status, out, _ = run(["why", "203.0.113.7", "--state-dir", str(tmp_path), "--json"])
    assert status == 0
    assert out.count("\n") == 1
    view = json.loads(out)
    assert list(view) == ["src", "rule", "ban", "probes"]
    assert (view["src"], view["rule"]) == ("203.0.113.7", "scan_trigger")
    ban = view["ban"]
    assert ban["since"] == "2023-11-14T22:13:21.000000+00:00"
    assert (ban["state"], ban["action"], ban["offence"], ban["offline"]) == (
        "active", "block", 1, False,
    )  # fmt: skip
    assert ban["evidence"]["ports"] == {"tcp": "21,23"}
    assert ban["evidence"]["first_seen"] == "2023-11-14T22:13:20.000000+00:00"
    assert [(a["backend"], a["state"], a["attempts"], a["error"]) for a in ban["actions"]] == [
        ("nftables", "applied", 1, None),
        ("hosts_deny", "failed", 2, "denied"),
    ]
    probes = view["probes"]
    assert probes["kinds"] == {"SYN": 2, "FIN": 1}
    assert probes["ports"] == {"tcp": "21,23,25"}
    assert probes["destinations"] == ["192.0.2.1", "192.0.2.2"]
    assert (probes["first"], probes["count"], probes["complete"]) == (
        "2023-11-14T22:13:20.000000+00:00", 3, True,
    )  # fmt: skip


@pytest.mark.parametrize("make_store", [True, False], ids=["empty store", "no store"])
def test_why_of_an_unknown_address_exits_1(tmp_path: Path, make_store: bool) -> None:
    state = tmp_path / "state"
    if make_store:
        small_store(state)
    status, out, err = run(["why", "198.51.100.9", "--state-dir", str(state)])
    assert (status, out, err) == (1, "", "portsentinel: 198.51.100.9: nothing recorded\n")
    assert state.exists() == make_store  # a read never creates a store


def test_why_of_a_bad_address_is_a_usage_error(tmp_path: Path) -> None:
    status, _, err = run(["why", "not-an-ip", "--state-dir", str(tmp_path)])
    assert status == 2
    assert err.startswith("ADDR: not an address: 'not-an-ip' (expected ")


def test_why_of_an_ipv6_host_shows_its_prefix_ban_and_the_prefix_probes(tmp_path: Path) -> None:
    with Store.open(str(tmp_path)) as store:
        store.add_events(
            [event(T0, 22, src="2001:db8::5", dst="2001:db8:1::1"),
             event(T0 + 1, 23, src="2001:db8::6", dst="2001:db8:1::1"),
             event(T0 + 2, 24, src="2001:db9::1", dst="2001:db8:1::1")]
        )  # fmt: skip
        ban = store.begin_ban(
            "2001:db8::6", 64, created=T0 + 1, expires=None, reason="SYN scan: scan trigger "
            "reached", rule="scan_trigger", evidence={}, offence=1,
        )  # fmt: skip
        store.activate(ban.id)
    status, out, _ = run(["why", "2001:db8::5", "--state-dir", str(tmp_path), "--json"])
    view = json.loads(out)
    assert status == 0
    assert view["ban"]["address"] == "2001:db8::/64"
    assert view["ban"]["until"] is None  # permanent
    assert view["probes"]["sources"] == ["2001:db8::5", "2001:db8::6"]  # not 2001:db9::1
    status, out, _ = run(["why", "2001:db8::5", "--state-dir", str(tmp_path)])
    assert out.splitlines()[0] == "2001:db8::5: banned (active) with its prefix 2001:db8::/64"
    assert "  until     permanent\n" in out
    assert "  from      2001:db8::5, 2001:db8::6\n" in out


def test_why_finds_the_newest_ended_ban_however_old(tmp_path: Path) -> None:
    now = T0 + 400 * DAY
    with Store.open(str(tmp_path)) as store:
        for created, by in ((T0, LiftedBy.UNBLOCK), (T0 + 40 * DAY, LiftedBy.EXPIRY)):
            ban = store.begin_ban(
                "192.0.2.50", None, created=created, expires=created + HOUR, reason="manual "
                "block", rule=None, evidence={}, offence=1,
            )  # fmt: skip
            store.activate(ban.id)
            store.lift(ban.id, created + HOUR, by)
    view = evidence_why(tmp_path, "192.0.2.50", now)
    ban = view["ban"]
    assert (ban["id"], ban["state"], ban["lifted_by"]) == (2, "expired", "expiry")
    assert ban["ended"] == "2023-12-24T23:13:20.000000+00:00"
    assert view["probes"] is None
    _, out, _ = run(["why", "192.0.2.50", "--state-dir", str(tmp_path)])
    assert out.splitlines()[0] == "192.0.2.50: was banned (expired)"
    assert "  ended     2023-12-24T23:13:20.000000+00:00 by expiry\n" in out


def evidence_why(state_dir: Path, address: str, now: float) -> dict[str, Any]:
    out = io.StringIO()
    status = ev.why(str(state_dir), address, as_json=True, now=now, out=out, err=io.StringIO())
    assert status == 0
    view: dict[str, Any] = json.loads(out.getvalue())
    return view


# --- history ------------------------------------------------------------------------------------


def history_store(state_dir: Path) -> None:
    """An expired ban, an alert, a lifted ban and an active permanent one, over two days."""
    with Store.open(str(state_dir)) as store:
        old = store.begin_ban(
            "192.0.2.1", None, created=T0, expires=T0 + HOUR, reason="SYN scan: scan trigger "
            "reached", rule="scan_trigger", evidence={"ports": ["tcp/1", "tcp/2", "tcp/3"]},
            offence=1,
        )  # fmt: skip
        store.activate(old.id)
        store.lift(old.id, T0 + HOUR, LiftedBy.EXPIRY)
        store.add_events(
            [event(T0 + DAY, 7, src="192.0.2.9", proto="udp", kind="UDP", flags=None),
             event(T0 + DAY + 1, 9, src="192.0.2.9", proto="udp", kind="UDP", flags=None,
                   action="alert", reason="scan trigger reached", rule="scan_trigger")]
        )  # fmt: skip
        lifted = store.begin_ban(
            "192.0.2.2", None, created=T0 + DAY + 5, expires=T0 + 2 * DAY, reason="manual block",
            rule=None, evidence={"plan": ["run_cmd"], "port": 0, "proto": "tcp"}, offence=1,
        )  # fmt: skip
        store.activate(lifted.id)
        store.lift(lifted.id, T0 + DAY + 60, LiftedBy.UNBLOCK)
        live = store.begin_ban(
            "192.0.2.3", None, created=T0 + DAY + 10, expires=None, reason="FIN scan: scan "
            "trigger reached", rule="scan_trigger", evidence={"ports": ["tcp/80", "udp/53"]},
            offence=2,
        )  # fmt: skip
        store.activate(live.id)


def history(state_dir: Path, since: str, now: float, *, as_json: bool) -> str:
    out = io.StringIO()
    assert ev.history(str(state_dir), since, as_json=as_json, now=now, out=out) == 0
    return out.getvalue()


def test_history_table_lists_bans_of_every_state_and_alerts_newest_last(tmp_path: Path) -> None:
    history_store(tmp_path)
    assert history(tmp_path, "7d", T0 + 2 * DAY, as_json=False) == (
        "TIME                 SRC        ACTION   STATE    UNTIL                "
        "REASON                          PORTS\n"
        "2023-11-14T22:13:20  192.0.2.1  block    expired  2023-11-14T23:13:20  "
        "SYN scan: scan trigger reached  tcp 1-3\n"
        "2023-11-15T22:13:21  192.0.2.9  alert    logged   -                    "
        "UDP scan: scan trigger reached  udp 7,9\n"
        "2023-11-15T22:13:25  192.0.2.2  command  lifted   2023-11-16T22:13:20  "
        "manual block                    -\n"
        "2023-11-15T22:13:30  192.0.2.3  block    active   permanent            "
        "FIN scan: scan trigger reached  tcp 80; udp 53\n"
    )


def test_history_json_lines_keys_and_since(tmp_path: Path) -> None:
    history_store(tmp_path)
    lines = history(tmp_path, "2023-11-15T12:00:00", T0 + 2 * DAY, as_json=True).splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["src"] for r in rows] == ["192.0.2.9", "192.0.2.2", "192.0.2.3"]  # not the old one
    for row in rows:
        assert list(row)[:7] == ["time", "src", "action", "state", "until", "reason", "ports"]
    alert, lifted, live = rows
    assert (alert["action"], alert["state"], alert["until"], alert["ports"]) == (
        "alert", "logged", None, {"udp": "7,9"},
    )  # fmt: skip
    assert (lifted["state"], lifted["lifted_by"], lifted["until"]) == (
        "lifted", "unblock", "2023-11-16T22:13:20.000000+00:00",
    )  # fmt: skip
    assert (live["until"], live["offence"]) == (None, 2)  # permanent: until null
    # A relative --since counts back from now: the last hour holds only the live ban.
    recent = history(tmp_path, "1h", T0 + DAY + 2 * HOUR, as_json=True).splitlines()
    assert [json.loads(line)["src"] for line in recent] == ["192.0.2.3"]


def test_history_with_nothing_in_the_window(tmp_path: Path) -> None:
    history_store(tmp_path)
    # A ban still in force belongs to every window after it began.
    assert json.loads(history(tmp_path, "2030-01-01", T0, as_json=True))["src"] == "192.0.2.3"
    empty = tmp_path / "empty"
    small_store(empty)
    with Store.open(str(empty)) as store:
        ban = store.ban_for("203.0.113.7")
        assert ban is not None
        store.lift(ban.id, T0 + 2, LiftedBy.UNBLOCK)
    assert history(empty, "2030-01-01", T0, as_json=False) == (
        "nothing recorded since 2030-01-01T00:00:00+00:00\n"
    )
    assert history(empty, "2030-01-01", T0, as_json=True) == ""
    assert history(tmp_path / "none", "1h", T0, as_json=False) == (
        "nothing recorded since 2023-11-14T21:13:20+00:00\n"
    )
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("since", ["yesterday", "5w", "-1h", "0", "2026-13-01"])
def test_history_bad_since_exits_2_even_without_a_store(tmp_path: Path, since: str) -> None:
    status, out, err = run(["history", f"--since={since}", "--state-dir", str(tmp_path / "none")])
    assert (status, out) == (2, "")
    assert err.startswith(f"--since: not a duration or a time: {since!r} (expected a duration")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", (30.0, True)),
        ("15m", (900.0, True)),
        ("7d", (7 * DAY, True)),
        ("2023-11-14T22:13:20+00:00", (T0, False)),
        ("2023-11-14T23:13:20+01:00", (T0, False)),
        ("2023-11-14T22:13:20", (T0, False)),  # no offset: UTC
        ("2023-11-14T22:13:20Z", (T0, False)),
    ],
)
def test_parse_since(text: str, expected: tuple[float, bool]) -> None:
    assert ev.parse_since(text) == expected


# --- replay --state-dir -------------------------------------------------------------------------


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
    assert ev.reference_time(Store.open(str(state), offline=None), 0.0) == end


def test_list_why_and_history_read_a_replayed_capture(tmp_path: Path) -> None:
    state = tmp_path / "state"
    replay_into(state, "syn.pcap", tmp_path)
    out = io.StringIO()
    assert operate.list_bans(str(state), True, out) == 0  # as of the capture, not of today
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
    monkeypatch.setattr(ev, "EVENT_BATCH", 10)  # many small transactions, same result
    state = tmp_path / "state"
    recorded = replay_into(state, "udp.pcap", tmp_path, 'SCAN_TRIGGER="0"\n' + config)
    assert recorded.events == 63
    with Store.open(str(state), offline=True) as store:
        assert len(store.events_between(-1e300, 1e300)) == 63
        found = store.bans_between(-1e300, 1e300)
    assert [(b.evidence["action"], b.evidence["plan"]) for b in found] == bans


def test_why_says_when_it_summarises_only_the_newest_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_store(tmp_path)
    monkeypatch.setattr(ev, "EVENT_LIMIT", 2)
    _, out, _ = run(["why", "203.0.113.7", "--state-dir", str(tmp_path)])
    assert "  probes    2 (the newest only), 2023-11-14T22:13:21.000000+00:00 to " in out


def test_the_recorder_writes_into_an_offline_store_only(tmp_path: Path) -> None:
    conf = tmp_path / "portsentinel.conf"
    conf.write_text('SCAN_TRIGGER="0"\n')
    setup = load_setup(str(conf), "atcp,audp")
    with Store.open(str(tmp_path)) as store, pytest.raises(ValueError, match="offline"):
        ev.ReplayRecorder(store, setup.settings, Detector(detector_config(setup)))


def test_replay_refuses_a_live_store_and_writes_nothing(tmp_path: Path) -> None:
    small_store(tmp_path)
    with pytest.raises(StoreError, match="live store"):
        replay_into(tmp_path, "syn.pcap", tmp_path)
    with Store.open(str(tmp_path)) as store:
        assert store.ban_for(SCANNER) is None
        assert store.events_for(SCANNER) == []


def wired() -> bool:
    try:
        cli.build_parser().parse_args(["why", SCANNER])
        cli.build_parser().parse_args(["replay", "--state-dir", "x", "f.pcap"])
    except SystemExit:
        return False
    return True


def test_cli_replay_state_dir_when_wired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same through ``portsentinel replay --state-dir`` once cli.py registers it."""
    if not wired():
        pytest.skip("cli.py does not register why and replay --state-dir yet")
    state = tmp_path / "state"
    local = [arg for address in LOCAL for arg in ("--local", address)]
    capture = str(CAPTURES / "syn.pcap")
    assert cli.main(["replay", *local, "--state-dir", str(state), capture]) == 0
    capsys.readouterr()
    assert cli.main(["why", SCANNER, "--state-dir", str(state), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ban"]["offline"] is True
    assert cli.main(["why", "192.0.2.99", "--state-dir", str(state)]) == 1
    assert cli.main(["history", "--since", "soon", "--state-dir", str(state)]) == 2


# --- tables -------------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


ROWS: list[dict[str, object]] = [
    {"name": "alpha", "note": "a long free text that will not fit", "n": 1},
    {"name": "b", "note": None, "n": 22},
]
COLUMNS = (Column("NAME", "name"), Column("NOTE", "note", shrink=True), Column("N", "n"))


def printed(out: io.StringIO, rows: list[dict[str, object]], *, as_json: bool = False) -> str:
    write_rows(rows, COLUMNS, out, as_json=as_json, empty="nothing")
    return out.getvalue()


def test_plain_table_keeps_every_character() -> None:
    assert printed(io.StringIO(), ROWS) == (
        "NAME   NOTE                                N\n"
        "alpha  a long free text that will not fit  1\n"
        "b      -                                   22\n"
    )


def test_terminal_table_fits_the_width_and_bolds_the_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "30")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert printed(Terminal(), ROWS) == (
        "\x1b[1mNAME   NOTE                 N\x1b[0m\n"
        "alpha  a long free text t…  1\n"
        "b      -                    22\n"
    )
    monkeypatch.setenv("NO_COLOR", "1")
    assert printed(Terminal(), ROWS).startswith("NAME ")


def test_json_lines_hold_every_key_and_no_rows_print_nothing() -> None:
    assert printed(io.StringIO(), ROWS, as_json=True).splitlines() == [
        '{"name":"alpha","note":"a long free text that will not fit","n":1}',
        '{"name":"b","note":null,"n":22}',
    ]
    assert printed(io.StringIO(), [], as_json=True) == ""
    assert printed(io.StringIO(), []) == "nothing\n"


@pytest.mark.parametrize(
    ("widths", "shrink", "total", "expected"),
    [
        ([5, 40, 5], [False, True, False], 30, [5, 16, 5]),
        ([5, 40, 30], [False, True, True], 50, [5, 20, 21]),  # the widest gives first
        ([5, 10, 5], [False, True, False], 10, [5, 8, 5]),  # never below 8: wraps instead
        ([5, 10], [False, False], 3, [5, 10]),
    ],
)
def test_fit(widths: list[int], shrink: list[bool], total: int, expected: list[int]) -> None:
    assert fit(widths, shrink, total) == expected


def test_list_uses_the_shared_table(tmp_path: Path) -> None:
    with Store.open(str(tmp_path)) as store:
        ports = [f"tcp/{p}" for p in range(1, 11)]
        ban = store.begin_ban(
            "192.0.2.77", None, created=T0, expires=None, reason="manual block", rule=None,
            evidence={"ports": ports}, offence=1,
        )  # fmt: skip
        store.activate(ban.id)
    out = io.StringIO()
    assert operate.list_bans(str(tmp_path), False, out) == 0
    assert out.getvalue() == (
        "ADDRESS     SINCE                UNTIL      REASON        PORTS SEEN\n"
        "192.0.2.77  2023-11-14T22:13:20  permanent  manual block  "
        "tcp/1, tcp/2, tcp/3, tcp/4, tcp/5, tcp/6, tcp/7, tcp/8 (+2)\n"
    )
