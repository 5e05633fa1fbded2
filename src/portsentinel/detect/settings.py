"""The detector's settings and counters: plain data, shared by the detector and its readers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from portsentinel.detect.budget import BudgetConfig
from portsentinel.detect.ports import mode_ports
from portsentinel.model import Action, Mode, Proto, Reason, ScanKind

SCAN_RULES: Final = ("trigger", "trw")
"""SCAN_RULE's values: PortSentry's SCAN_TRIGGER count, or the sequential test (TRW)."""


@dataclass(frozen=True)
class DetectorConfig:
    """The settings the detector needs, already validated and converted by the config room.

    Caps are the named settings MAX_TRACKED_SOURCES, MAX_PORTS_PER_SOURCE,
    SOURCE_IDLE_TIMEOUT (seconds, 0 = never) and MAX_ACTIVE_BANS (responses remembered).
    """

    tcp_mode: Mode | None = Mode.ATCP
    udp_mode: Mode | None = Mode.AUDP
    tcp_ports: frozenset[int] = frozenset()
    udp_ports: frozenset[int] = frozenset()
    advanced_tcp_limit: int = 1024
    advanced_udp_limit: int = 1024
    advanced_exclude_tcp: frozenset[int] = frozenset()
    advanced_exclude_udp: frozenset[int] = frozenset()
    scan_trigger: int = 0
    scan_window: float = 0.0
    block_tcp: int = 1
    block_udp: int = 1
    max_sources: int = 65536
    max_ports_per_source: int = 64
    idle_timeout: float = 3600.0
    max_responded: int = 10000
    max_destinations_per_source: int = 64
    # The ban budget (see detect/budget.py) and the evidence floor for blocks.
    ban_rate: float = 20.0
    ban_burst: int = 100
    ban_strong_ports: int = 5
    block_min_ports: int = 1
    # Sequential scoring (SCAN_RULE "trw", see detect/trw.py) and restarting services.
    scan_rule: str = "trigger"
    trw_false_positive: float = 0.01
    trw_detection: float = 0.99
    trw_success_benign: float = 0.8
    trw_success_scanner: float = 0.2
    recently_in_use: float = 600.0
    trigger_per_protocol: bool = False  # SCAN_TRIGGER counts TCP and UDP apart (1.2's way)

    def __post_init__(self) -> None:
        for name, mode, proto in (
            ("tcp_mode", self.tcp_mode, Proto.TCP),
            ("udp_mode", self.udp_mode, Proto.UDP),
        ):
            if mode is not None and mode.proto is not proto:
                raise ValueError(f"{name}: {mode} is not a {proto.key} mode")
        floors = (  # (names, lowest allowed value, what the error says)
            (
                ("max_sources", "max_ports_per_source", "max_responded",
                 "max_destinations_per_source"),
                1,
                "must be at least 1",
            ),
            (
                ("advanced_tcp_limit", "advanced_udp_limit", "scan_trigger", "scan_window",
                 "idle_timeout", "recently_in_use"),
                0,
                "must not be negative",
            ),
        )  # fmt: skip
        for names, lowest, what in floors:
            for name in names:
                if getattr(self, name) < lowest:
                    raise ValueError(f"{name} {what}")
        if self.scan_rule not in SCAN_RULES:
            raise ValueError(f"scan_rule {self.scan_rule!r} is not one of {', '.join(SCAN_RULES)}")
        if not 0 < self.trw_false_positive < self.trw_detection < 1:
            raise ValueError("trw: 0 < false positive < detection < 1 is needed")
        if not 0 < self.trw_success_scanner < self.trw_success_benign < 1:
            raise ValueError("trw: 0 < scanner success < benign success < 1 is needed")

    def watched_ports(self, proto: Proto) -> list[int]:
        """The ports the protocol's mode watches, before the in-use check (ascending)."""
        if proto == Proto.TCP:
            return mode_ports(
                self.tcp_mode, self.tcp_ports, self.advanced_tcp_limit, self.advanced_exclude_tcp
            )
        return mode_ports(
            self.udp_mode, self.udp_ports, self.advanced_udp_limit, self.advanced_exclude_udp
        )


@dataclass(slots=True)
class DetectorStats:
    """Plain counters, cheap to bump on the hot path; the daemon exports them."""

    packets: int = 0
    connects: int = 0
    not_probe: int = 0
    unwatched: int = 0
    in_use: int = 0
    recently_in_use: int = 0  # to ports closed within RECENTLY_IN_USE: not probes either
    not_local: int = 0
    replies: int = 0
    probes: int = 0
    probes_by_kind: dict[ScanKind, int] = field(default_factory=lambda: dict.fromkeys(ScanKind, 0))
    decisions_by_action: dict[Action, int] = field(default_factory=lambda: dict.fromkeys(Action, 0))
    # Why probes were not acted on (IGNORED decisions), counted whether or not a record was
    # built for them; ``held`` counts those the record gate kept from becoming records.
    ignored_by_reason: dict[Reason, int] = field(default_factory=lambda: dict.fromkeys(Reason, 0))
    held: int = 0
    sources_evicted: int = 0
    sources_expired: int = 0
    tracked_sources: int = 0


def budget_config(c: DetectorConfig) -> BudgetConfig:
    return BudgetConfig(
        max_active=c.max_responded,
        rate=c.ban_rate,
        burst=c.ban_burst,
        strong_ports=c.ban_strong_ports,
    )
