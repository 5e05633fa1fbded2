"""``why`` and ``history``: the verbs on stores with known contents."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from portsentinel.cli import history as verbs
from portsentinel.cli import history_views
from portsentinel.store.records import LiftedBy
from portsentinel.store.sqlite import Store
from unit.cli.stores import DAY, HOUR, T0, event, history_store, run, small_store

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
    assert list(view) == ["src", "rule", "ban", "probes", "fleet"]
    assert view["fleet"] == []
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


def test_why_and_history_say_which_rows_they_skipped_as_damaged(tmp_path: Path) -> None:
    small_store(tmp_path)
    with Store.open(str(tmp_path)) as store:
        store._conn.execute("UPDATE ban_actions SET detail = 'x' WHERE backend = 'hosts_deny'")
    status, out, err = run(["why", "203.0.113.7", "--state-dir", str(tmp_path)])
    assert status == 0
    assert "actions   nftables applied\n  probes" in out  # the damaged one left out
    assert err.startswith("portsentinel: warning: skipped a damaged row of the state store: ")
    assert "(ban 1, hosts_deny): detail is not JSON" in err
    with Store.open(str(tmp_path)) as store:
        store._conn.execute("PRAGMA ignore_check_constraints = ON")
        store._conn.execute("UPDATE bans SET state = 'gone' WHERE id = 1")
    status, out, err = run(
        ["history", "--since", "2023-11-01T00:00:00", "--state-dir", str(tmp_path)]
    )
    assert "bans row 1 (203.0.113.7): state 'gone' is not one of" in err


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
    status = verbs.why(str(state_dir), address, as_json=True, now=now, out=out, err=io.StringIO())
    assert status == 0
    view: dict[str, Any] = json.loads(out.getvalue())
    return view


def test_why_says_when_it_summarises_only_the_newest_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_store(tmp_path)
    monkeypatch.setattr(history_views, "EVENT_LIMIT", 2)
    _, out, _ = run(["why", "203.0.113.7", "--state-dir", str(tmp_path)])
    assert "  probes    2 (the newest only), 2023-11-14T22:13:21.000000+00:00 to " in out


def history(state_dir: Path, since: str, now: float, *, as_json: bool) -> str:
    out = io.StringIO()
    assert verbs.history(str(state_dir), since, as_json=as_json, now=now, out=out) == 0
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
    # ``all``, as report takes it: the old one too.
    every = history(tmp_path, "all", T0 + 2 * DAY, as_json=True).splitlines()
    assert len(every) == len(rows) + 1


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
    assert history(tmp_path / "none", "all", T0, as_json=False) == "nothing recorded\n"
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("since", ["yesterday", "5w", "-1h", "0", "2026-13-01"])
def test_history_bad_since_exits_2_even_without_a_store(tmp_path: Path, since: str) -> None:
    status, out, err = run(["history", f"--since={since}", "--state-dir", str(tmp_path / "none")])
    assert (status, out) == (2, "")
    assert err.startswith(f"--since: not a duration or a time: {since!r} (expected a duration")
