from __future__ import annotations

import dataclasses
import socket
from pathlib import Path
from typing import Any

from portsentinel.config.schema import Settings
from portsentinel.fleet import reporters


def test_summary_names_the_machine_lapi_stamped() -> None:
    found: list[dict[str, Any]] = [
        {"machine_id": "a-portsentinel", "scenario": "portsentinel/manual",
         "created_at": "2026-12-07T19:15:14Z", "decisions": [{"type": "ban"}], "message": "m"},
        {"machine_id": "", "scenario": "portsentinel/probe", "decisions": None},
    ]  # fmt: skip
    assert reporters.summary(found) == [
        {"machine": "a-portsentinel", "scenario": "portsentinel/manual",
         "at": "2026-12-07T19:15:14Z", "decision": True, "message": "m"},
        {"machine": "?", "scenario": "portsentinel/probe", "at": "", "decision": False,
         "message": ""},
    ]  # fmt: skip


def test_no_fleet_nothing_asked() -> None:
    assert reporters.reported_by(Settings(), "198.18.0.2") is None


def test_lapi_silent_is_said(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nothing listens on: refused at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    creds = tmp_path / "machine.yaml"
    creds.write_text("url: x\nlogin: a\npassword: b\n")
    settings = dataclasses.replace(Settings(), crowdsec_lapi_url=f"http://127.0.0.1:{port}",
                                   crowdsec_credentials_file=str(creds))  # fmt: skip
    said = reporters.reported_by(settings, "198.18.0.2")
    assert isinstance(said, str)
    assert said.startswith("LAPI did not answer")
    bad = dataclasses.replace(settings, crowdsec_credentials_file=str(tmp_path / "missing"))
    said = reporters.reported_by(bad, "198.18.0.2")
    assert isinstance(said, str)
    assert "settings are wrong" in said
