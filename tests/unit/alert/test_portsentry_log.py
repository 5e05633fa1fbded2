"""PortSentry 1.2's attackalert lines, word for word (reference section (d))."""

from __future__ import annotations

import pytest

from portsentinel.alert.portsentry_log import detection_lines, held_back_line
from portsentinel.model import FIN, PSH, SYN, URG, Action, Decision, Proto, Reason, ScanKind


def decision(
    kind: ScanKind,
    *,
    proto: Proto = Proto.TCP,
    action: Action = Action.BLOCK,
    reason: Reason = Reason.TRIGGERED,
    flags: int = 0,
    ip_options: bool = False,
    port: int = 143,
) -> Decision:
    return Decision(
        time=0.0,
        src="192.0.2.7",
        dst="198.18.0.1",
        proto=proto,
        port=port,
        kind=kind,
        action=action,
        reason=reason,
        flags=flags,
        ip_options=ip_options,
    )


@pytest.mark.parametrize(
    ("kind", "flags", "line"),
    [
        (
            ScanKind.SYN,
            SYN,
            "attackalert: TCP SYN/Normal scan from host: 192.0.2.7/192.0.2.7 to TCP port: 143",
        ),
        (
            ScanKind.FIN,
            FIN,
            "attackalert: TCP FIN scan from host: 192.0.2.7/192.0.2.7 to TCP port: 143",
        ),
        (
            ScanKind.XMAS,
            FIN | URG | PSH,
            "attackalert: TCP XMAS scan from host: 192.0.2.7/192.0.2.7 to TCP port: 143",
        ),
        # 1.2's NULL label has a leading space: two spaces after the colon.
        (
            ScanKind.NULL,
            0,
            "attackalert:  TCP NULL scan from host: 192.0.2.7/192.0.2.7 to TCP port: 143",
        ),
        (
            ScanKind.UNKNOWN,
            SYN | FIN,
            "attackalert: Unknown Type: TCP Packet Flags: SYN: 1 FIN: 1 ACK: 0 PSH: 0 URG: 0 RST: 0"
            " from host: 192.0.2.7/192.0.2.7 to TCP port: 143",
        ),
    ],
)
def test_tcp_detection_line(kind: ScanKind, flags: int, line: str) -> None:
    assert detection_lines(decision(kind, flags=flags)) == [line]


def test_udp_and_connect_lines() -> None:
    assert detection_lines(decision(ScanKind.UDP, proto=Proto.UDP, port=53)) == [
        "attackalert: UDP scan from host: 192.0.2.7/192.0.2.7 to UDP port: 53"
    ]
    assert detection_lines(decision(ScanKind.CONNECT, proto=Proto.UDP, port=69)) == [
        "attackalert: Connect from host: 192.0.2.7/192.0.2.7 to UDP port: 69"
    ]


def test_resolved_name_goes_first_in_host_field() -> None:
    assert detection_lines(decision(ScanKind.SYN, flags=SYN), "scanner.example") == [
        "attackalert: TCP SYN/Normal scan from host: scanner.example/192.0.2.7 to TCP port: 143"
    ]


def test_ip_options_line_follows() -> None:
    lines = detection_lines(decision(ScanKind.SYN, flags=SYN, ip_options=True))
    assert lines[1] == (
        "attackalert: Packet from host: 192.0.2.7/192.0.2.7 to TCP port: 143 has IP options set"
        " (detection avoidance technique)."
    )


def test_already_blocked_stealth_and_classic_wording() -> None:
    stealth = decision(
        ScanKind.SYN, flags=SYN, action=Action.IGNORED, reason=Reason.ALREADY_BLOCKED
    )
    assert (
        detection_lines(stealth)[-1]
        == "attackalert: Host: 192.0.2.7/192.0.2.7 is already blocked Ignoring"
    )
    classic = decision(ScanKind.CONNECT, action=Action.IGNORED, reason=Reason.ALREADY_BLOCKED)
    assert (
        detection_lines(classic)[-1] == "attackalert: Host: 192.0.2.7 is already blocked. Ignoring"
    )


def test_block_zero_logs_ignoring_response() -> None:
    lines = detection_lines(decision(ScanKind.UDP, proto=Proto.UDP, action=Action.ALERT))
    assert lines[-1] == "attackalert: Ignoring UDP response per configuration file setting."


@pytest.mark.parametrize("reason", [Reason.BELOW_TRIGGER, Reason.IGNORE_LIST, Reason.OWN_ADDRESS])
def test_silent_like_12(reason: Reason) -> None:
    assert detection_lines(decision(ScanKind.SYN, action=Action.IGNORED, reason=reason)) == []


def test_fragment_line_names_the_evasion() -> None:
    assert detection_lines(decision(ScanKind.FRAGMENT, port=0)) == [
        "attackalert: Fragmented TCP packet from host: 192.0.2.7/192.0.2.7 to TCP port: 0"
        " (detection avoidance technique)"
    ]


def test_held_back_line_names_the_stretch_and_the_worst_sources() -> None:
    top = [("198.18.0.2 already blocked", 900), ("198.18.0.3 below trigger", 3)]
    assert held_back_line(903, 10.0, top) == (
        "adminalert: 903 repetitive records held back in the last 10s "
        "(most from 198.18.0.2 already blocked: 900, 198.18.0.3 below trigger: 3)"
    )
    assert "in the last 1.48s " in held_back_line(1, 1.4812, [("x", 1)])  # a capture's last
