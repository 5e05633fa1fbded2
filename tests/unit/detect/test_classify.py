"""TCP flag classification against an independent, set-based statement of PortSentry 1.2's rules."""

from __future__ import annotations

import pytest

from portsentinel.detect.classify import (
    TCP_KIND,
    UNSOLICITED_KIND,
    classify_tcp,
    portsentry_label,
)
from portsentinel.model import ACK, CWR, ECE, FIN, PSH, RST, SYN, URG, Proto, ScanKind, flag_names

SIX = {"SYN", "FIN", "ACK", "PSH", "RST", "URG"}


def expected_kind(flags: int) -> ScanKind | None:
    """The rules as the reference words them, over flag *names*, not bit masks."""
    names = set(flag_names(flags).split("|")) - {""}
    six = names & SIX
    if six & {"ACK", "RST"}:
        return None  # 1.2 drops these before classifying
    if not six:
        return ScanKind.NULL
    if {"FIN", "URG", "PSH"} <= six:
        return ScanKind.XMAS
    if six == {"FIN"}:
        return ScanKind.FIN
    if six == {"SYN"}:
        return ScanKind.SYN
    return ScanKind.UNKNOWN


@pytest.mark.parametrize("flags", range(256))
def test_every_flags_byte_matches_the_rules(flags: int) -> None:
    assert TCP_KIND[flags] is expected_kind(flags)
    assert classify_tcp(flags) is expected_kind(flags)


def test_table_shape() -> None:
    assert len(TCP_KIND) == 256
    # ACK or RST set in three quarters of all bytes; the rest are probes.
    assert sum(kind is None for kind in TCP_KIND) == 192


@pytest.mark.parametrize(
    ("flags", "kind"),
    [
        (0, ScanKind.NULL),
        (ECE | CWR, ScanKind.NULL),
        (FIN | URG | PSH, ScanKind.XMAS),
        (FIN | URG | PSH | SYN, ScanKind.XMAS),  # rule 2 wins before anything looks at SYN
        (FIN, ScanKind.FIN),
        (FIN | ECE, ScanKind.FIN),
        (SYN, ScanKind.SYN),
        (SYN | ECE | CWR, ScanKind.SYN),  # ECN-setup SYN is a normal SYN
        (SYN | FIN, ScanKind.UNKNOWN),
        (PSH, ScanKind.UNKNOWN),
        (URG, ScanKind.UNKNOWN),
        (FIN | PSH, ScanKind.UNKNOWN),
        (SYN | ACK, None),
        (FIN | ACK, None),  # Maimon: invisible, as in PortSentry
        (RST, None),
        (ACK, None),
    ],
)
def test_named_cases(flags: int, kind: ScanKind | None) -> None:
    assert classify_tcp(flags) is kind


def test_classify_masks_to_a_byte() -> None:
    assert classify_tcp(0x100 | SYN) is ScanKind.SYN


@pytest.mark.parametrize(
    ("kind", "label"),
    [
        (ScanKind.NULL, " TCP NULL scan"),
        (ScanKind.XMAS, "TCP XMAS scan"),
        (ScanKind.FIN, "TCP FIN scan"),
        (ScanKind.SYN, "TCP SYN/Normal scan"),
        (ScanKind.UDP, "UDP scan"),
        (ScanKind.CONNECT, "Connect"),
    ],
)
def test_fixed_labels(kind: ScanKind, label: str) -> None:
    assert portsentry_label(kind, 0) == label


def test_unknown_label_spells_out_each_flag() -> None:
    assert portsentry_label(ScanKind.UNKNOWN, SYN | FIN | URG) == (
        "Unknown Type: TCP Packet Flags: SYN: 1 FIN: 1 ACK: 0 PSH: 0 URG: 1 RST: 0"
    )
    assert portsentry_label(ScanKind.UNKNOWN, PSH | ACK | RST | CWR) == (
        "Unknown Type: TCP Packet Flags: SYN: 0 FIN: 0 ACK: 1 PSH: 1 URG: 0 RST: 1"
    )


def test_fragment_label_names_the_protocol() -> None:
    assert portsentry_label(ScanKind.FRAGMENT, 0) == "Fragmented TCP packet"
    assert portsentry_label(ScanKind.FRAGMENT, 0, Proto.UDP) == "Fragmented UDP packet"


def test_every_kind_has_a_label() -> None:
    for kind in ScanKind:
        assert portsentry_label(kind, SYN | FIN)


@pytest.mark.parametrize(("flags", "kind"), [
    (ACK, ScanKind.ACK), (ACK | PSH, ScanKind.UNKNOWN), (FIN | ACK, ScanKind.MAIMON),
    (FIN | ACK | URG | PSH, ScanKind.UNKNOWN), (SYN | ACK, None), (RST | ACK, None), (RST, None),
    (SYN, ScanKind.SYN), (FIN, ScanKind.FIN), (0, ScanKind.NULL),
])  # fmt: skip
def test_segments_of_no_connection_probe_with_ack_too(flags: int, kind: ScanKind | None) -> None:
    assert UNSOLICITED_KIND[flags] is kind
    assert UNSOLICITED_KIND[flags | 0xC0] is kind  # ECE and CWR take no part


def test_ack_kinds_have_their_own_labels() -> None:
    assert portsentry_label(ScanKind.ACK, ACK) == "TCP ACK scan"
    assert portsentry_label(ScanKind.MAIMON, FIN | ACK) == "TCP Maimon (FIN/ACK) scan"
