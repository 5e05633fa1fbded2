"""PortSentry 2.0's ``Scan from:`` line, word for word (reference section (c)/(d)), with
each field as PortSentinel decided it, and the history file's ISO 8601 time."""

from __future__ import annotations

import time

import pytest

from portsentinel.alert import portsentry2_log as ps2
from portsentinel.model import FIN, PSH, SYN, URG, Action, Decision, Proto, Reason, ScanKind


def decision(
    kind: ScanKind = ScanKind.SYN,
    *,
    proto: Proto = Proto.TCP,
    action: Action = Action.BLOCK,
    reason: Reason = Reason.TRIGGERED,
    flags: int = SYN,
    ip_options: bool = False,
    src: str = "192.0.2.7",
) -> Decision:
    return Decision(
        time=0.0, src=src, dst="198.18.0.1", proto=proto, port=111, kind=kind, action=action,
        reason=reason, flags=flags, ip_options=ip_options,
    )  # fmt: skip


def test_the_line_word_for_word() -> None:
    assert ps2.scan_from_line(decision(action=Action.ALERT)) == (
        "Scan from: [192.0.2.7] (192.0.2.7) protocol: [TCP] port: [111] type: "
        "[TCP SYN/Normal scan] IP opts: [not set] ignored: [false] triggered: [true] "
        "noblock: [true] blocked: [false]"
    )


@pytest.mark.parametrize(
    ("action", "reason", "expected"),
    [
        (Action.IGNORED, Reason.IGNORE_LIST, ("true", "unset", "unset", "unset")),
        (Action.IGNORED, Reason.OWN_ADDRESS, ("true", "unset", "unset", "unset")),
        (Action.IGNORED, Reason.BELOW_TRIGGER, ("false", "false", "unset", "unset")),
        (Action.IGNORED, Reason.NEVER_BLOCK, ("true", "true", "true", "false")),
        (Action.IGNORED, Reason.ALREADY_BLOCKED, ("false", "true", "false", "true")),
        (Action.IGNORED, Reason.BAN_BUDGET, ("false", "true", "false", "false")),
        (Action.ALERT, Reason.WEAK_EVIDENCE, ("false", "true", "false", "false")),
        (Action.ALERT, Reason.TRIGGERED, ("false", "true", "true", "false")),
        (Action.BLOCK, Reason.TRIGGERED, ("false", "true", "false", "true")),
        (Action.COMMAND, Reason.TRIGGERED, ("false", "true", "false", "true")),
    ],
)
def test_each_field_says_what_was_decided(
    action: Action, reason: Reason, expected: tuple[str, str, str, str]
) -> None:
    assert ps2.fields(decision(action=action, reason=reason)) == expected


def test_a_dry_run_blocks_nothing() -> None:
    assert ps2.fields(decision(), dry_run=True) == ("false", "true", "false", "false")
    assert ps2.fields(decision(action=Action.ALERT), dry_run=True)[3] == "false"


@pytest.mark.parametrize(
    ("made", "label"),
    [
        (decision(ScanKind.NULL, flags=0), "TCP NULL scan"),  # 2.0: no leading space
        (decision(ScanKind.FIN, flags=FIN), "TCP FIN scan"),
        (decision(ScanKind.XMAS, flags=FIN | URG | PSH), "TCP XMAS scan"),
        (
            decision(ScanKind.UNKNOWN, flags=SYN | FIN),
            "Unknown Type: TCP Packet Flags: SYN: 1 FIN: 1 ACK: 0 PSH: 0 URG: 0 RST: 0",
        ),
        (decision(ScanKind.UDP, proto=Proto.UDP, flags=0), "UDP"),
        (decision(ScanKind.CONNECT, flags=0), "Connect"),
        (decision(ScanKind.CONNECT, proto=Proto.UDP, flags=0), "Connect"),
        (decision(ScanKind.FRAGMENT, flags=0), "Fragmented TCP packet"),
    ],
)
def test_type(made: Decision, label: str) -> None:
    assert ps2.scan_type(made) == label
    assert f" type: [{label}] " in ps2.scan_from_line(made)


def test_ip_options() -> None:
    assert "IP opts: [set]" in ps2.scan_from_line(decision(ip_options=True))
    assert "IP opts: [unknown]" in ps2.scan_from_line(decision(ScanKind.CONNECT, flags=0))
    udp = decision(ScanKind.UDP, proto=Proto.UDP, flags=0, src="fd00:5e::2")
    assert ps2.scan_from_line(udp).startswith(
        "Scan from: [fd00:5e::2] (fd00:5e::2) protocol: [UDP] port: [111] type: [UDP] IP opts: "
        "[not set]"
    )


def test_already_blocked_says_so_first_as_2_0_does() -> None:
    lines = ps2.detection_lines(decision(action=Action.IGNORED, reason=Reason.ALREADY_BLOCKED))
    assert lines[0] == "attackalert: Host: 192.0.2.7/192.0.2.7 is already blocked Ignoring"
    assert lines[1].startswith("Scan from: [192.0.2.7]")
    assert len(ps2.detection_lines(decision())) == 1


def test_history_time_is_local_iso_8601_with_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "CET-1")  # a POSIX rule: no tzdata needed
    time.tzset()
    try:
        wall = 1753084923.456  # 2025-07-21T08:02:03.456Z
        assert ps2.history_stamp(wall) == "2025-07-21T09:02:03.456+0100"
        assert ps2.history_line(decision(), wall).startswith(
            "2025-07-21T09:02:03.456+0100 Scan from: [192.0.2.7] (192.0.2.7) protocol: [TCP]"
        )
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_start_and_stop_in_2_0s_words() -> None:
    assert ps2.ACTIVE == "Portsentry is now active and listening."
    assert ps2.SHUTDOWN == ("Portsentry is shutting down",)
    assert ps2.starting_line("1.0") == "PortSentinel 1.0 (PortSentry 2.0 compatible) is starting."


def test_with_block_0_a_source_answered_before_is_reported_again_not_already_blocked() -> None:
    again = decision(action=Action.IGNORED, reason=Reason.ALREADY_BLOCKED)
    assert ps2.fields(again, log_only=True) == ("false", "true", "true", "false")
    assert ps2.detection_lines(again, log_only=True) == [ps2.scan_from_line(again, log_only=True)]
    assert ps2.history_line(again, 0.0, log_only=True).endswith("noblock: [true] blocked: [false]")
    # the other fields do not depend on it
    assert ps2.fields(decision(action=Action.ALERT), log_only=True)[2:] == ("true", "false")


def test_connect_modes_binding_lines() -> None:
    lines = ps2.bound_startup_lines(Proto.TCP, {(11, True), (1, False), (1, True)}, {11})
    assert lines == [
        "Listen on AF_INET: TCP port: 1",
        "Listen on AF_INET6: TCP port: 1",
        "Listen on AF_INET6: TCP port: 11",
        "Could not bind TCP socket on port 11. Attempting to continue",
    ]
    assert ps2.bound_startup_lines(Proto.UDP, {(7, False)}, ()) == [
        "Listen on AF_INET: UDP port: 7"
    ]
