"""The shared vocabulary: the names events and log lines print, mode properties, address text,
flag names, and the decision's defaults."""

from __future__ import annotations

import ipaddress

import pytest

from portsentinel.model import (
    ACK,
    CWR,
    ECE,
    FIN,
    PSH,
    RST,
    SYN,
    URG,
    Action,
    Decision,
    Frag,
    Mode,
    Proto,
    Reason,
    ScanKind,
    addr_text,
    flag_names,
)


def test_protocols_are_ip_protocol_numbers_with_both_spellings() -> None:
    assert (int(Proto.TCP), int(Proto.UDP)) == (6, 17)
    assert (Proto.TCP.label, Proto.UDP.label) == ("TCP", "UDP")
    assert (Proto.TCP.key, Proto.UDP.key) == ("tcp", "udp")


@pytest.mark.parametrize(
    ("mode", "proto", "bound", "advanced"),
    [
        (Mode.TCP, Proto.TCP, True, False),
        (Mode.STCP, Proto.TCP, False, False),
        (Mode.ATCP, Proto.TCP, False, True),
        (Mode.UDP, Proto.UDP, True, False),
        (Mode.SUDP, Proto.UDP, False, False),
        (Mode.AUDP, Proto.UDP, False, True),
    ],
)
def test_modes(mode: Mode, proto: Proto, bound: bool, advanced: bool) -> None:
    assert mode.proto is proto
    assert (mode.bound, mode.stealth, mode.advanced) == (bound, not bound, advanced)


def test_event_schema_strings() -> None:
    # The event schema's ``kind``, ``action`` and ``reason`` values: never renamed.
    assert [k.value for k in ScanKind] == [
        "SYN", "FIN", "NULL", "XMAS", "UNKNOWN", "UDP", "CONNECT", "FRAGMENT", "ACK", "MAIMON",
    ]  # fmt: skip
    assert [a.value for a in Action] == ["alert", "block", "command", "ignored"]
    assert Reason.TRIGGERED.value == "scan trigger reached"
    assert Reason.NEVER_BLOCK.value == "never-block set"
    assert (Frag.NONE, Frag.TINY, Frag.OVERLAP) == (0, 1, 2)


def test_flag_bits_are_the_tcp_header_order() -> None:
    assert [1 << i for i in range(8)] == [FIN, SYN, RST, PSH, ACK, URG, ECE, CWR]


@pytest.mark.parametrize(
    ("flags", "names"),
    [(0, ""), (SYN, "SYN"), (SYN | ACK, "SYN|ACK"), (FIN | PSH | URG, "FIN|PSH|URG"),
     (0xFF, "FIN|SYN|RST|PSH|ACK|URG|ECE|CWR")],
)  # fmt: skip
def test_flag_names(flags: int, names: str) -> None:
    assert flag_names(flags) == names


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("198.18.0.7", "198.18.0.7"),
        ("0.0.0.0", "0.0.0.0"),
        ("2001:db8::1", "2001:db8::1"),
        ("::ffff:198.18.0.7", "198.18.0.7"),  # IPv4-mapped: shown as IPv4
        ("::1", "::1"),
    ],
)
def test_addr_text(text: str, shown: str) -> None:
    assert addr_text(ipaddress.ip_address(text).packed) == shown


def test_decision_defaults_are_those_of_an_unremarkable_probe() -> None:
    d = Decision(
        1.0, "198.18.0.7", "198.18.0.1", Proto.UDP, 53, ScanKind.UDP, Action.ALERT,
        Reason.BELOW_TRIGGER,
    )  # fmt: skip
    assert (d.flags, d.ip_options, d.mode, d.rule, d.hits, d.ports_seen, d.first) == (
        0, False, None, None, 0, 0, False,
    )  # fmt: skip
