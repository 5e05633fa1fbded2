from __future__ import annotations

from pathlib import Path

from portsentinel.config.schema import Settings
from portsentinel.fleet import withdraw
from portsentinel.store.fleet import FleetDecision

from .fleet_fakes import T0, ban, open_store


def test_local_unblock_ends_here_and_dismisses(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        record = ban(store, "198.18.0.2")
        store.fleet_note_bans([(record.id, record.address, record.expires, "pushed")], T0)
        store.fleet_decisions_merge(
            [FleetDecision(4, "198.18.0.2", "portsentinel", "portsentinel/syn", T0 + 60)],
            [], now=T0,
        )  # fmt: skip
        withdraw.before_lift(store, "198.18.0.2", T0 + 1, local=True)
        assert store.fleet_ban_states([record.id])[record.id][0] == "ended"
        assert [d.state for d in store.fleet_decisions()] == ["dismissed"]


def test_everywhere_marks_withdrawn_and_needs_a_fleet(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        record = ban(store, "198.18.0.2")
        withdraw.before_lift(store, "198.18.0.2", T0 + 1, local=False)
        assert store.fleet_ban_states([record.id])[record.id][0] == "withdrawn"
        assert withdraw.everywhere(Settings(), store, "198.18.0.2", T0 + 1) is None
