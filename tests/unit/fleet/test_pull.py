from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

from portsentinel.block.fleet_sets import FleetSets
from portsentinel.block.runner import RunResult
from portsentinel.fleet.lapi import Lapi
from portsentinel.fleet.pull import Puller
from portsentinel.host.neverblock import Entry, Source
from portsentinel.store.fleet import FleetDecision

from .fleet_fakes import T0, ban, open_store


class Recorder:
    """Keeps the nft scripts instead of running them (the e2e test runs them for real)."""

    def __init__(self) -> None:
        self.scripts: list[str] = []

    def run(self, argv: Sequence[str], *, input: str | None = None,
            timeout: float | None = None) -> RunResult:  # fmt: skip
        self.scripts.append(input or "")
        return RunResult(tuple(argv), 0, "", "", 0.0)


def test_reconcile_applies_refuses_and_leaves_own_bans(tmp_path: Path) -> None:
    protected: list[Entry] = []
    runner = Recorder()
    with open_store(tmp_path) as store:
        ban(store, "198.18.0.5", expires=T0 + 7200)
        store.fleet_decisions_merge([
            FleetDecision(1, "198.18.0.2", "portsentinel", "portsentinel/syn", T0 + 600),
            FleetDecision(2, "198.18.0.3", "cscli", "manual", T0 + 600),
            FleetDecision(3, "198.18.0.5", "portsentinel", "portsentinel/syn", T0 + 3600),
        ], [], now=T0)  # fmt: skip
        protected.append((ipaddress.ip_network("198.18.0.3/32"), "own address", Source.IGNORE))
        lines: list[str] = []
        puller = Puller(store, Lapi("http://127.0.0.1:9"), FleetSets(runner, "nft"),
                        protection=lambda: protected, log=lines.append)  # fmt: skip
        puller.reconcile(T0 + 1)
        states = {d.id: d.state for d in store.fleet_decisions()}
        assert states == {1: "applied", 2: "refused", 3: "own"}
        assert puller.kernel == {"198.18.0.2": T0 + 600}
        assert "198.18.0.2 timeout 599s" in runner.scripts[-1]
        assert "198.18.0.3" not in runner.scripts[-1]
        assert any("refused: never-block set (own address)" in line for line in lines)
        # Nothing changed: no transaction. Dismissed (unblock --local): removed.
        count = len(runner.scripts)
        puller.reconcile(T0 + 2)
        assert len(runner.scripts) == count
        store.fleet_dismiss("198.18.0.2")
        puller.reconcile(T0 + 3)
        assert puller.kernel == {}
        assert "delete element inet portsentinel fleet4 { 198.18.0.2 }" in runner.scripts[-1]
