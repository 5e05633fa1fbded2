"""PortSentry 1.2's start-up lines per mode."""

from __future__ import annotations

from portsentinel.alert.portsentry_log import (
    ACTIVE,
    SHUTDOWN,
    bound_startup_lines,
    nothing_bound_line,
    stealth_startup_lines,
)
from portsentinel.model import Mode, Proto


def test_advanced_mode_lines() -> None:
    lines = stealth_startup_lines(Mode.ATCP, range(1024), [139, 113], [22, 80, 8080], 1024)
    assert lines == [
        "adminalert: Advanced mode will monitor first 1024 ports",
        "adminalert: Advanced mode will manually exclude port: 113 ",  # 1.2's trailing space
        "adminalert: Advanced mode will manually exclude port: 139 ",
        "adminalert: Advanced Stealth scan detection mode activated. Ignored TCP port: 22",
        "adminalert: Advanced Stealth scan detection mode activated. Ignored TCP port: 80",
    ]


def test_advanced_udp_without_excludes() -> None:
    lines = stealth_startup_lines(Mode.AUDP, range(1024), [], [53], 1024)
    assert lines[1] == "adminalert: Advanced mode will manually exclude no ports"
    assert lines[2].endswith("Ignored UDP port: 53")


def test_stealth_mode_lines() -> None:
    lines = stealth_startup_lines(Mode.STCP, [1, 22, 79], [], [22], 0)
    assert lines == [
        "adminalert: Going into stealth listen mode on TCP port: 1",
        "adminalert: ERROR: Socket 22 is in use and will not be monitored. Attempting to continue",
        "adminalert: Going into stealth listen mode on TCP port: 79",
    ]


def test_bound_mode_lines() -> None:
    assert bound_startup_lines(Proto.UDP, [69, 7], [161]) == [
        "adminalert: Going into listen mode on UDP port: 7",
        "adminalert: Going into listen mode on UDP port: 69",
        "adminalert: ERROR: could not bind UDP socket: 161. Attempting to continue",
    ]
    assert nothing_bound_line(Proto.TCP) == (
        "adminalert: ERROR: could not bind ANY TCP sockets. Shutting down."
    )


def test_active_and_shutdown_lines() -> None:
    assert ACTIVE == "adminalert: PortSentry is now active and listening."
    assert SHUTDOWN == (
        "securityalert: PortSentry is shutting down",
        "adminalert: PortSentry is shutting down",
    )
