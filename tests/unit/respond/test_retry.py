"""respond/retry.py: a refused store step is retried and the outage said at its start and
end; a damaged store is raised, never retried."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from portsentinel.errors import StoreError
from portsentinel.respond import retry as retry_module
from portsentinel.respond.retry import StoreRetry

Step = Callable[[], None]


def refusing(times: int, message: str = "database is locked") -> tuple[list[int], Step]:
    calls: list[int] = []

    def step() -> None:
        calls.append(1)
        if len(calls) <= times:
            raise StoreError(message)

    return calls, step


def test_a_refused_step_is_retried_until_taken_and_the_outage_said_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(retry_module, "RETRY_FIRST", 0.001)
    lines: list[str] = []
    retry = StoreRetry(lines.append, lambda: True)
    calls, step = refusing(3)
    retry.until_stored(step, "bans")
    assert len(calls) == 4
    assert retry.outage is None
    assert len(lines) == 2
    assert "refuses writes (database is locked); bans wait and are retried" in lines[0]
    assert "their nftables elements are in the kernel" in lines[0]
    assert "takes writes again after" in lines[1]


def test_the_outage_is_shown_while_it_lasts_without_a_line_per_try() -> None:
    lines: list[str] = []
    retry = StoreRetry(lines.append, lambda: False)
    _, step = refusing(10, "disk I/O error")
    assert not retry.once(step, "records")
    assert not retry.once(step, "records")
    assert retry.outage is not None
    assert retry.outage[1] == "disk I/O error"
    assert len(lines) == 1
    assert "nftables" not in lines[0]


def test_a_damaged_store_is_raised() -> None:
    retry = StoreRetry(lambda _line: None, lambda: True)
    _, step = refusing(1, "database disk image is malformed")
    with pytest.raises(StoreError, match="malformed"):
        retry.once(step, "bans")


def test_retries_give_up_at_the_stop() -> None:
    lines: list[str] = []
    retry = StoreRetry(lines.append, lambda: True)
    calls, step = refusing(1_000_000)
    stopper = threading.Timer(0.05, retry.closing.set)
    stopper.start()
    retry.until_stored(step, "bans")
    assert lines[-1] == "adminalert: ERROR: bans not stored before the stop"
    assert calls
