from __future__ import annotations

import dataclasses
from pathlib import Path

from portsentinel.config.schema import Settings
from portsentinel.fleet.credentials import FleetConfig
from portsentinel.fleet.link import FleetLink


def test_status_before_any_exchange(tmp_path: Path) -> None:
    config = FleetConfig("http://198.19.1.1:8080", None, None, None, ("plain http",))
    link = FleetLink(Settings(), str(tmp_path), config, protection=tuple, host="a")
    status = link.status()
    assert status["connected"] is None
    assert (status["outbox_depth"], status["pushed"], status["fleet_bans_applied"]) == (0, 0, 0)
    link.start()  # neither push nor pull: the thread idles until closed
    assert link.alive()
    link.close()
    assert "adminalert: WARNING: plain http" in link.lines()
    assert dataclasses.asdict(config)["url"] == "http://198.19.1.1:8080"
