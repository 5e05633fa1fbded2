"""The response worker's backlog is bounded: alerts and probe records wait up to a cap, then
new ones are dropped and counted; bans are never dropped."""

from __future__ import annotations

from pathlib import Path

import pytest

from portsentinel.config import load_config
from portsentinel.model import Proto
from portsentinel.respond import worker as responder_module
from portsentinel.respond.bans import BanRequest
from portsentinel.respond.worker import Responder
from portsentinel.store.records import EventRow


def request(i: int) -> BanRequest:
    return BanRequest(address=f"198.19.{i // 256}.{i % 256}", port=80, proto=Proto.TCP,
                      mode=None, level=1, reason="SYN scan: triggered", rule=None,
                      evidence={})  # fmt: skip


def row(i: int) -> EventRow:
    return EventRow(1.0, f"198.19.0.{i % 256}", "198.18.0.1", "tcp", 80, "SYN", "ignored",
                    "already blocked")  # fmt: skip


def test_a_worker_that_falls_behind_drops_alerts_and_records_but_never_bans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(responder_module, "MAX_PENDING_ALERTS", 5)
    monkeypatch.setattr(responder_module, "MAX_PENDING_ROWS", 8)
    # Not started: nothing is taken off the queue, as when the worker is far behind.
    worker = Responder(load_config(None).settings, str(tmp_path))
    for i in range(12):
        worker.alert(request(i))
    assert (worker.alerts_dropped, worker._jobs.qsize()) == (7, 5)
    worker.events([row(i) for i in range(6)])
    worker.events([row(i) for i in range(6)])  # 6 wait, below the cap: taken (12 wait)
    worker.events([row(i) for i in range(2)])  # at the cap: dropped
    assert worker.rows_dropped == 2
    assert worker._jobs.qsize() == 7
    for i in range(20):
        worker.ban(request(100 + i))
    assert worker._jobs.qsize() == 27  # every ban queued
