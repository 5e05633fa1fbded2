"""The shared vocabulary: protocols, modes, scan kinds, actions, the decoded packet, decisions.

Every room of the house may import this module; it imports nothing of the project.

The per-packet path passes plain tuples (see ``Packet``); objects are built only for the rare
packets that reach a decision (``Decision``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Final

# --- TCP flag bits (byte 13 of the TCP header) ---------------------------------------------
FIN: Final = 0x01
SYN: Final = 0x02
RST: Final = 0x04
PSH: Final = 0x08
ACK: Final = 0x10
URG: Final = 0x20
ECE: Final = 0x40
CWR: Final = 0x80


class Proto(IntEnum):
    """Transport protocols PortSentinel watches; values are IP protocol numbers."""

    TCP = 6
    UDP = 17

    @property
    def label(self) -> str:
        """Upper-case name as PortSentry writes it (``TCP``/``UDP``)."""
        return self.name

    @property
    def key(self) -> str:
        """Lower-case name as events write it (``tcp``/``udp``)."""
        return self.name.lower()


class Mode(StrEnum):
    """PortSentry's six modes: bound (tcp/udp), stealth (s*), advanced stealth (a*)."""

    TCP = "tcp"
    STCP = "stcp"
    ATCP = "atcp"
    UDP = "udp"
    SUDP = "sudp"
    AUDP = "audp"

    @property
    def proto(self) -> Proto:
        return Proto.TCP if self.value.endswith("tcp") else Proto.UDP

    @property
    def bound(self) -> bool:
        """Classic modes: PortSentry binds the ports and sees full connects/datagrams."""
        return self in (Mode.TCP, Mode.UDP)

    @property
    def stealth(self) -> bool:
        """Raw view of incoming packets (stcp/sudp and the advanced atcp/audp)."""
        return not self.bound

    @property
    def advanced(self) -> bool:
        """Every port below a limit, minus exclusions and ports in use."""
        return self in (Mode.ATCP, Mode.AUDP)


QUIET_MARK: Final = 0x50534E51  # "PSNQ": a value nobody else is likely to use whole
"""The packet mark the daemon's ingress chains give a quiet source's probes, which the
capture's kernel filter leaves out of the ring (``block/quiet.py``, ``capture/bpf.py``)."""

UNSOLICITED_GROUP: Final = 5051
"""The NFLOG group the daemon's table logs ACK-bearing segments of no connection to
(``block/table.py``), read by ``capture/nflog.py``: one per network namespace."""


class ScanKind(StrEnum):
    """What a probe looked like. Values are the event schema's ``kind`` strings."""

    SYN = "SYN"
    FIN = "FIN"
    NULL = "NULL"
    XMAS = "XMAS"
    UNKNOWN = "UNKNOWN"
    UDP = "UDP"
    CONNECT = "CONNECT"
    # An IP fragment built to hide the transport header (nmap -f): a first fragment too short
    # to hold it, or a later fragment whose offset lands inside it (RFC 1858).
    FRAGMENT = "FRAGMENT"
    # ACK-bearing probes with no connection before them (the kernel's conntrack said so, or,
    # in replay, the capture): a bare ACK (nmap -sA and -sW), FIN+ACK (nmap -sM, Maimon's);
    # other flag sets with ACK are UNKNOWN.
    ACK = "ACK"
    MAIMON = "MAIMON"


class Action(StrEnum):
    """The decision's ``action`` in the event schema."""

    ALERT = "alert"
    BLOCK = "block"
    COMMAND = "command"
    IGNORED = "ignored"


class Reason(StrEnum):
    """Why a decision was taken; the event schema's ``reason`` strings."""

    TRIGGERED = "scan trigger reached"
    BELOW_TRIGGER = "below trigger"
    IGNORE_LIST = "ignore list"
    OWN_ADDRESS = "own address"
    ALREADY_BLOCKED = "already blocked"
    NEVER_BLOCK = "never-block set"
    BAN_BUDGET = "ban budget"
    WEAK_EVIDENCE = "too few ports for a block"


class Frag(IntEnum):
    """Fragment status in a decoded packet."""

    NONE = 0  # not a fragment, or a first fragment that holds the whole transport header
    TINY = 1  # first fragment too short to hold the transport header (ports may be 0)
    OVERLAP = 2  # later fragment whose offset falls inside the transport header


# --- The decoded packet: a plain tuple, no object per packet ---------------------------------
# (proto, src, dst, sport, dport, flags, ttl, ip_options, frag)
#   proto       6 or 17 (int, compare with Proto members)
#   src, dst    packed addresses: 4 bytes (IPv4) or 16 bytes (IPv6)
#   sport/dport ports, 0 when the fragment does not carry them
#   flags       the TCP flags byte, 0 for UDP
#   ttl         TTL or hop limit
#   ip_options  True when IPv4 options or IPv6 hop-by-hop/destination options are present
#   frag        a Frag value (plain int)
# Read its fields by name with one unpacking,
#   proto, src, dst, sport, dport, flags, ttl, ip_options, frag = pkt
# which costs about what two literal indexes cost (CPython 3.11: ~19 ns for all nine, ~8 ns
# an index); an index through a module constant would add a LOAD_GLOBAL, ~4 ns a field.
Packet = tuple[int, bytes, bytes, int, int, int, int, bool, int]


def addr_text(packed: bytes) -> str:
    """The text form of a packed IPv4 or IPv6 address (IPv4-mapped IPv6 shown as IPv4)."""
    if len(packed) == 4:
        return f"{packed[0]}.{packed[1]}.{packed[2]}.{packed[3]}"  # 4x cheaper than ipaddress
    v6 = ipaddress.IPv6Address(packed)
    mapped = v6.ipv4_mapped
    return str(mapped) if mapped is not None else str(v6)


def flag_names(flags: int) -> str:
    """Flags as ``SYN|FIN``; empty string for none."""
    names = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")
    return "|".join(n for i, n in enumerate(names) if flags >> i & 1)


@dataclass(slots=True)
class Decision:
    """A probe that reached a decision, as plain data. Built only off the hot path.

    ``time`` is the time the detector was fed with (monotonic live, capture time in replay);
    records map it to wall-clock time.
    """

    time: float
    src: str
    dst: str
    proto: Proto
    port: int
    kind: ScanKind
    action: Action
    reason: Reason
    flags: int = 0
    ip_options: bool = False
    mode: Mode | None = None
    rule: str | None = None
    hits: int = 0
    ports_seen: int = 0
    # True on the decision that first crossed the trigger for this source and protocol:
    # the one that writes PortSentry's history line and runs the response.
    first: bool = False
    # A ban admitted while the ban budget was pressed, without a handshake: it is short
    # (``detect.budget.SHORT_BAN``), so a forged flood's chosen addresses get no long bans.
    provisional: bool = False
    # SCAN_RULE="trw": the source's likelihood ratio and the first contacts it took (None
    # and 0 under the trigger rule).
    score: float | None = None
    contacts: int = 0
    # The tool the source's probes look made by (``nmap``, ``masscan``...): told, never
    # used to decide. Set outside the detector, from the probe's own bytes.
    scanner: str | None = None
    # The sources that probed the same ports at the same moments as this one (``nmap -D``),
    # this one included; empty when it probed alone (``detect/decoys.py``).
    group: tuple[str, ...] = ()
    # In such a group without proof of its address (no completed handshake): its ban lasts
    # DECOY_BAN_DURATION at most.
    decoy: bool = False


@dataclass(slots=True)
class DecoyCut:
    """A source banned before its group showed, without proof of its address: its ban is
    cut to DECOY_BAN_DURATION (the detector's ``take_cuts``). ``time`` as in ``Decision``."""

    time: float
    src: str
    group: tuple[str, ...]
    evidence: dict[str, object]
