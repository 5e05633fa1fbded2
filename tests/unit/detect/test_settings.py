"""The detector's settings (validated at construction) and counters."""

from __future__ import annotations

from dataclasses import replace

import pytest

from portsentinel.detect.settings import DetectorConfig, DetectorStats, budget_config
from portsentinel.model import Action, Mode, Reason, ScanKind

BASE = DetectorConfig()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"tcp_mode": Mode.UDP}, "not a tcp mode"),
        ({"udp_mode": Mode.STCP}, "not a udp mode"),
        ({"max_sources": 0}, "max_sources"),
        ({"max_ports_per_source": 0}, "max_ports_per_source"),
        ({"max_destinations_per_source": 0}, "max_destinations_per_source"),
        ({"max_responded": 0}, "max_responded"),
        ({"scan_trigger": -1}, "scan_trigger"),
        ({"scan_window": -1.0}, "scan_window"),
        ({"idle_timeout": -1.0}, "idle_timeout"),
        ({"advanced_tcp_limit": -1}, "advanced_tcp_limit"),
        ({"advanced_udp_limit": -1}, "advanced_udp_limit"),
    ],
)
def test_config_is_validated(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        replace(BASE, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", [None, Mode.TCP, Mode.STCP, Mode.ATCP])
def test_every_tcp_mode_or_none_is_a_valid_tcp_mode(mode: Mode | None) -> None:
    assert replace(BASE, tcp_mode=mode).tcp_mode is mode


def test_defaults_are_portsentry_advanced_modes() -> None:
    c = DetectorConfig()
    assert (c.tcp_mode, c.udp_mode, c.scan_trigger, c.scan_window) == (
        Mode.ATCP,
        Mode.AUDP,
        0,
        0.0,
    )
    assert (c.block_tcp, c.block_udp) == (1, 1)


def test_budget_config_takes_the_budget_settings() -> None:
    c = replace(BASE, max_responded=7, ban_rate=2.5, ban_burst=9, ban_strong_ports=3)
    b = budget_config(c)
    assert (b.max_active, b.rate, b.burst, b.strong_ports) == (7, 2.5, 9, 3)


def test_stats_start_at_zero_for_every_kind_action_and_reason() -> None:
    s = DetectorStats()
    assert s.probes_by_kind == dict.fromkeys(ScanKind, 0)
    assert s.decisions_by_action == dict.fromkeys(Action, 0)
    assert s.ignored_by_reason == dict.fromkeys(Reason, 0)
    s.probes_by_kind[ScanKind.SYN] += 1
    assert DetectorStats().probes_by_kind[ScanKind.SYN] == 0  # no table shared
