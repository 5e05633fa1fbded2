"""PortSentry 1.2's own settings: the base of ``Settings``, first in every listing, all of
them marked as 1.2's, with Debian's port lists as defaults."""

from __future__ import annotations

import dataclasses

from portsentinel.config.portsentry12 import (
    DEBIAN_TCP_PORTS,
    PortSentry12Settings,
)
from portsentinel.config.schema import SETTINGS, Settings
from portsentinel.config.types import port_list

PORTSENTRY_12_KEYS = [
    "TCP_PORTS",
    "UDP_PORTS",
    "ADVANCED_PORTS_TCP",
    "ADVANCED_PORTS_UDP",
    "ADVANCED_EXCLUDE_TCP",
    "ADVANCED_EXCLUDE_UDP",
    "IGNORE_FILE",
    "HISTORY_FILE",
    "BLOCKED_FILE",
    "RESOLVE_HOST",
    "BLOCK_TCP",
    "BLOCK_UDP",
    "KILL_ROUTE",
    "KILL_HOSTS_DENY",
    "KILL_RUN_CMD_FIRST",
    "KILL_RUN_CMD",
    "SCAN_TRIGGER",
    "PORT_BANNER",
]


def test_portsentrys_settings_come_first_and_are_marked_as_its_own() -> None:
    assert issubclass(Settings, PortSentry12Settings)
    first = SETTINGS[: len(PORTSENTRY_12_KEYS)]
    assert [spec.key for spec in first] == PORTSENTRY_12_KEYS
    assert {spec.origin for spec in first} == {"portsentry-1.2"}
    rest = {spec.key for spec in SETTINGS[len(PORTSENTRY_12_KEYS) :]}
    assert not rest & set(PORTSENTRY_12_KEYS)


def test_debians_port_lists_are_the_defaults() -> None:
    assert Settings().tcp_ports == port_list.parse(DEBIAN_TCP_PORTS)
    assert 31337 in Settings().udp_ports
    base = {f.name for f in dataclasses.fields(PortSentry12Settings)}
    assert base <= {f.name for f in dataclasses.fields(Settings)}
