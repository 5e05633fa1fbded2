"""What a probe looks like: PortSentry 1.2's TCP flag rules as a 256-entry table, and its labels.

The table is built once from the rules below, so the per-packet cost is one tuple index.
1.2 drops every TCP packet with ACK or RST before classifying it (they answer something, they
do not probe), so those entries are ``None``; ACK, Window and Maimon scans stay invisible, as
in PortSentry (portsentry/portsentry#5).

``UNSOLICITED_KIND`` classifies the packets known to open no connection (the kernel's
conntrack found none for them, or a capture showed none before them): there a segment with
ACK probes too. A bare ACK (nmap -sA and -sW look the same on the wire) is ACK, FIN+ACK
(nmap -sM) is MAIMON, any other set with ACK but neither SYN nor RST is UNKNOWN; a SYN+ACK
(backscatter of someone else's spoofed SYNs) and anything with RST probe nothing.
"""

from __future__ import annotations

from typing import Final

from portsentinel.model import ACK, FIN, PSH, RST, SYN, URG, Proto, ScanKind

# The six flags 1.2 looks at; ECE and CWR (ECN) take no part in any rule.
_SIX: Final = SYN | FIN | ACK | PSH | RST | URG
_XMAS: Final = FIN | URG | PSH


def _rule(flags: int) -> ScanKind | None:
    """PortSentry 1.2's classification of one flags byte; the first matching rule wins."""
    if flags & (ACK | RST):
        return None
    six = flags & _SIX
    if six == 0:
        return ScanKind.NULL
    if six & _XMAS == _XMAS:
        return ScanKind.XMAS
    if six == FIN:
        return ScanKind.FIN
    if six == SYN:
        return ScanKind.SYN
    return ScanKind.UNKNOWN


TCP_KIND: Final[tuple[ScanKind | None, ...]] = tuple(_rule(flags) for flags in range(256))
"""Scan kind per TCP flags byte; ``None`` for packets that are not probes (ACK or RST set)."""


def _unsolicited(flags: int) -> ScanKind | None:
    """The kind of a segment that opens no connection; see the module docstring."""
    if not flags & ACK:
        return _rule(flags)
    six = flags & _SIX
    if six & (SYN | RST):
        return None
    if six == ACK:
        return ScanKind.ACK
    if six == FIN | ACK:
        return ScanKind.MAIMON
    return ScanKind.UNKNOWN


UNSOLICITED_KIND: Final[tuple[ScanKind | None, ...]] = tuple(
    _unsolicited(flags) for flags in range(256)
)
"""Scan kind per TCP flags byte of a segment that opens no connection."""


def classify_tcp(flags: int) -> ScanKind | None:
    """The scan kind of a TCP flags byte, or None when ACK or RST is set."""
    return TCP_KIND[flags & 0xFF]


_FIXED_LABELS: Final[dict[ScanKind, str]] = {
    # 1.2's NULL label starts with a space, so its log line has two after "attackalert:";
    # log parsers written against 1.2 may depend on it.
    ScanKind.NULL: " TCP NULL scan",
    ScanKind.XMAS: "TCP XMAS scan",
    ScanKind.FIN: "TCP FIN scan",
    ScanKind.SYN: "TCP SYN/Normal scan",
    ScanKind.UDP: "UDP scan",
    ScanKind.CONNECT: "Connect",
    ScanKind.ACK: "TCP ACK scan",
    ScanKind.MAIMON: "TCP Maimon (FIN/ACK) scan",
}


def portsentry_label(kind: ScanKind, flags: int, proto: Proto = Proto.TCP) -> str:
    """The packet-type text of PortSentry's detection line for a probe.

    ``flags`` matters only for UNKNOWN (1.2 spells each flag out); ``proto`` only for
    FRAGMENT, a kind 1.2 does not have.
    """
    if kind is ScanKind.UNKNOWN:
        return (
            "Unknown Type: TCP Packet Flags: "
            f"SYN: {_bit(flags, SYN)} FIN: {_bit(flags, FIN)} ACK: {_bit(flags, ACK)} "
            f"PSH: {_bit(flags, PSH)} URG: {_bit(flags, URG)} RST: {_bit(flags, RST)}"
        )
    if kind is ScanKind.FRAGMENT:
        return f"Fragmented {proto.label} packet"
    return _FIXED_LABELS[kind]


def _bit(flags: int, mask: int) -> int:
    return 1 if flags & mask else 0
