"""RECENTLY_IN_USE's table: ports last reported in use, forgotten after the window."""

from __future__ import annotations

import pytest

from portsentinel.detect.recent import RecentPorts


def test_a_port_is_kept_for_the_window_after_it_was_last_in_use() -> None:
    recent = RecentPorts(600.0)
    table = recent.seen
    recent.note({80, 443}, 0.0)
    recent.note({443}, 2.0)  # 80 closed
    assert 80 in table
    assert 443 in table
    recent.note({443}, 600.0)
    assert 80 in table  # last seen at 0: exactly the window old
    recent.note({443}, 600.5)
    assert 80 not in table
    assert 443 in table
    assert recent.seen is table  # the detector keeps this very dict


def test_zero_window_keeps_nothing() -> None:
    recent = RecentPorts(0.0)
    recent.note({80}, 0.0)
    assert recent.seen == {}


def test_negative_window_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        RecentPorts(-1.0)
