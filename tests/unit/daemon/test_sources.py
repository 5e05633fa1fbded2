"""Settings into packet sources: the ring's geometry, the kernel filter's ports per mode, and
the bound sockets with PortSentry's start-up lines (binding faked: no port is bound here)."""

from __future__ import annotations

import io
import socket
from pathlib import Path
from typing import ClassVar, cast

import pytest

from portsentinel.alert.sinks import LogSink
from portsentinel.capture.bpf import PortFilter, build_filter
from portsentinel.capture.listeners import BindResult, Listeners
from portsentinel.config.setup import Invocation, load_setup
from portsentinel.daemon import sources
from portsentinel.daemon.sources import (
    RING_BLOCK,
    RING_FRAME,
    StartupError,
    excluded_ports,
    kernel_filter,
    open_listeners,
    port_limit,
    ring_config,
)
from portsentinel.errors import PortSentinelError
from portsentinel.model import Mode, Proto
from unit.daemon.fakes import setup


def test_the_ring_holds_capture_ring_mib_in_frames_read_one_by_one(tmp_path: Path) -> None:
    config = ring_config(setup(tmp_path, 'CAPTURE_RING_MIB="4"\nINTERFACES="eth0,eth1"\n'))
    assert config.version == 2  # a wake-up per packet, not per block
    assert config.block_size == RING_BLOCK
    assert RING_BLOCK % RING_FRAME == 0
    assert config.frame_size == RING_FRAME
    assert config.block_count == 4 * (1 << 20) // RING_BLOCK
    assert list(config.interfaces) == ["eth0", "eth1"]
    assert not config.include_loopback


def test_2_0s_interface_all_counts_loopback_too(tmp_path: Path) -> None:
    conf = tmp_path / "p.conf"
    conf.write_text('TCP_PORTS="1"\n')
    every = Invocation(portsentry2=True, interfaces=(), loopback=True)
    config = ring_config(load_setup(str(conf), "stcp", every))
    assert (config.interfaces, config.include_loopback) == ((), True)


def test_the_advanced_modes_watch_below_the_limit_minus_the_exclusions(tmp_path: Path) -> None:
    the_setup = setup(
        tmp_path,
        'ADVANCED_PORTS_TCP="2000"\nADVANCED_EXCLUDE_TCP="113"\n'
        'ADVANCED_PORTS_UDP="500"\nADVANCED_EXCLUDE_UDP="137"\n',
        "atcp,audp",
    )
    assert (port_limit(the_setup, Mode.ATCP), port_limit(the_setup, Mode.AUDP)) == (2000, 500)
    assert excluded_ports(the_setup, Mode.ATCP) == {113}
    assert excluded_ports(the_setup, Mode.AUDP) == {137}
    assert excluded_ports(the_setup, Mode.STCP) == frozenset()  # only advanced modes exclude
    assert kernel_filter(the_setup) == build_filter(
        PortFilter.under(500, frozenset({137})), PortFilter.under(2000, frozenset({113}))
    )


def test_the_stealth_modes_watch_their_port_lists(tmp_path: Path) -> None:
    the_setup = setup(tmp_path, 'TCP_PORTS="1,22"\nUDP_PORTS="53"\n', "stcp,sudp")
    assert kernel_filter(the_setup) == build_filter(
        PortFilter.of(frozenset({53})), PortFilter.of(frozenset({1, 22}))
    )


def test_bound_modes_and_absent_modes_let_no_port_through(tmp_path: Path) -> None:
    nothing = build_filter(PortFilter(), PortFilter())
    assert kernel_filter(setup(tmp_path, modes="tcp,udp")) == nothing
    only_tcp = kernel_filter(setup(tmp_path, modes="atcp"))
    assert only_tcp != nothing
    assert only_tcp == build_filter(PortFilter(), PortFilter.under(1024, frozenset({113, 139})))


class Binder:
    """``Listeners`` with binding faked: each port's outcome is given."""

    refused: ClassVar[frozenset[tuple[Proto, int]]] = frozenset()
    made: ClassVar[list[Binder]] = []

    def __init__(self, tcp: frozenset[int], udp: frozenset[int]) -> None:
        self.ports = [(Proto.TCP, p) for p in sorted(tcp)] + [(Proto.UDP, p) for p in sorted(udp)]
        self.closed = False
        Binder.made.append(self)

    def open(self) -> list[BindResult]:
        return [
            BindResult(proto, port, socket.AF_INET, (proto, port) not in self.refused, None)
            for proto, port in self.ports
        ]

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def binder(monkeypatch: pytest.MonkeyPatch) -> type[Binder]:
    monkeypatch.setattr(sources, "Listeners", Binder)
    monkeypatch.setattr(Binder, "made", [])
    return Binder


def test_the_bound_modes_bind_their_ports_and_say_so(tmp_path: Path, binder: type[Binder]) -> None:
    out = io.StringIO()
    the_setup = setup(tmp_path, 'TCP_PORTS="1,2"\nUDP_PORTS="3"\n', "tcp,udp")
    listeners = open_listeners(the_setup, LogSink(out), [Mode.TCP, Mode.UDP])
    assert listeners is cast(Listeners, binder.made[0])
    assert binder.made[0].ports == [(Proto.TCP, 1), (Proto.TCP, 2), (Proto.UDP, 3)]
    assert "adminalert: Going into listen mode on TCP port: 1" in out.getvalue()
    assert "adminalert: Going into listen mode on UDP port: 3" in out.getvalue()


def test_only_the_modes_asked_for_are_bound(tmp_path: Path, binder: type[Binder]) -> None:
    the_setup = setup(tmp_path, 'TCP_PORTS="1,2"\nUDP_PORTS="3"\n', "tcp,sudp")
    open_listeners(the_setup, LogSink(io.StringIO()), [Mode.TCP])
    assert binder.made[0].ports == [(Proto.TCP, 1), (Proto.TCP, 2)]
    assert open_listeners(the_setup, LogSink(io.StringIO()), []) is None


def test_a_protocol_with_no_port_bound_is_a_startup_error(
    tmp_path: Path, binder: type[Binder], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Binder, "refused", frozenset({(Proto.UDP, 3)}))
    out = io.StringIO()
    the_setup = setup(tmp_path, 'TCP_PORTS="1"\nUDP_PORTS="3"\n', "tcp,udp")
    with pytest.raises(StartupError, match="UDP") as caught:
        open_listeners(the_setup, LogSink(out), [Mode.TCP, Mode.UDP])
    assert isinstance(caught.value, PortSentinelError)
    assert binder.made[0].closed  # the TCP sockets that were bound are let go
    assert "adminalert: Going into listen mode on TCP port: 1" in out.getvalue()
