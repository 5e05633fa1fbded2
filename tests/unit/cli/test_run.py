"""The daemon's verbs without a daemon: ``status`` shows the store and exits 1, ``reload``
says nothing runs; ``status`` renders what a running daemon reports."""

from __future__ import annotations

import json
from pathlib import Path

from portsentinel.cli import run as verbs
from portsentinel.store.sqlite import Store
from unit.cli.stores import T0, run, small_store

RUNNING = {
    "version": "0.1.0",
    "pid": 4242,
    "started": T0,
    "config": None,
    "ports_watched": {"atcp": 65000, "audp": 1000},
    "ports_in_use": {"tcp": 3, "udp": 1},
    "counters": {"packets": 10, "probes": 4, "decisions_block": 1, "other": 9},
    "never_block_networks": 5,
}


def test_status_without_a_daemon_shows_the_store_and_exits_1(tmp_path: Path) -> None:
    status, out, _err = run(["status", "--state-dir", str(tmp_path / "none")])
    assert status == 1
    assert out == (
        f"portsentinel is not running on {tmp_path / 'none'}\n"
        f"store: no state store in {tmp_path / 'none'}\n"
    )
    assert not (tmp_path / "none").exists()  # a read creates no store
    small_store(tmp_path)
    status, out, _err = run(["status", "--state-dir", str(tmp_path), "--json"])
    report = json.loads(out)
    assert (status, report["running"], report["state_dir"]) == (1, False, str(tmp_path))
    assert "active_bans" in report


def test_status_report_counts_the_active_bans_now(tmp_path: Path) -> None:
    with Store.open(str(tmp_path)) as store:
        ban = store.begin_ban(
            "192.0.2.7", None, created=T0, expires=None, reason="manual block", rule=None,
            evidence={}, offence=1,
        )  # fmt: skip
        store.activate(ban.id)
    report = verbs.status_report(str(tmp_path), RUNNING)
    assert report["active_bans"] == 1
    assert (report["running"], report["pid"]) == (True, 4242)


def test_status_text_of_a_running_daemon() -> None:
    report = {**RUNNING, "running": True, "state_dir": "/s", "active_bans": 2}
    assert verbs.status_text(report) == (
        "portsentinel 0.1.0 is running (pid 4242, since 2023-11-14T22:13:20.000000+00:00)\n"
        "configuration: embedded defaults\n"
        "mode atcp: 65000 ports watched, 3 in use now\n"
        "mode audp: 1000 ports watched, 1 in use now\n"
        "counters: packets 10, probes 4, block 1\n"
        "never-block set: 5 networks\n"
        "active bans: 2\n"
    )


def test_status_warns_of_commands_that_may_or_may_not_have_run(tmp_path: Path) -> None:
    with Store.open(str(tmp_path)) as store:
        for address in ("192.0.2.7", "192.0.2.8"):
            ban = store.begin_ban(address, None, created=T0, expires=None, reason="scan",
                                  rule=None, evidence={}, offence=1)  # fmt: skip
            store.record_action(ban.id, "run_cmd", None, "uncertain", "?", at=T0)
            store.activate(ban.id)
    report = verbs.status_report(str(tmp_path), None)
    assert report["uncertain_actions"] == 2
    assert report["uncertain"] == [
        {"address": "192.0.2.7", "backend": "run_cmd"},
        {"address": "192.0.2.8", "backend": "run_cmd"},
    ]
    assert verbs.status_text(report).endswith(
        "active bans: 2\n"
        "WARNING: 2 ban commands may or may not have run (uncertain: the daemon stopped before "
        "their outcome was recorded): 192.0.2.7 (KILL_RUN_CMD), 192.0.2.8 (KILL_RUN_CMD); "
        "see portsentinel why ADDRESS\n"
    )
    one = {**report, "uncertain": [{"address": "192.0.2.9", "backend": "legacy"}]}
    assert "1 ban command may or may not have run" in verbs.status_text(one)
    assert "192.0.2.9 (KILL_ROUTE)" in verbs.status_text(one)


def test_reload_without_a_daemon_is_a_failure(tmp_path: Path) -> None:
    status, out, err = run(["reload", "--state-dir", str(tmp_path)])
    assert (status, out) == (1, "")
    assert err == f"portsentinel: no daemon is running on {tmp_path}\n"


def test_status_text_counts_what_banned_sources_sent_into_the_ingress_drop() -> None:
    report = {**RUNNING, "running": True, "state_dir": "/s"}
    report["counters"] = {"packets": 10, "ingress_dropped_packets": 2000}
    assert "counters: packets 10, banned packets dropped at ingress 2000\n" in (
        verbs.status_text(report)
    )
