"""The packet sources the settings ask for: the capture ring and its kernel prefilter (the
stealth modes), the bound sockets (the classic modes), and PortSentry's start-up lines for each.

The settings are read here, not in ``capture/``, which knows ports and sizes but no
configuration (the rooms' layering): this module turns one into the other.
"""

from __future__ import annotations

import socket

from portsentinel.alert import portsentry2_log
from portsentinel.alert.portsentry_log import (
    bound_startup_lines,
    nothing_bound_line,
    stealth_startup_lines,
)
from portsentinel.alert.sinks import LogSink
from portsentinel.capture.afpacket import RingConfig
from portsentinel.capture.bpf import Instruction, PortFilter, build_filter
from portsentinel.capture.listeners import Listeners
from portsentinel.capture.rings import ProtocolRings
from portsentinel.config.setup import Setup, detector_config
from portsentinel.detect.detector import Detector
from portsentinel.errors import PortSentinelError
from portsentinel.host.view import HostView
from portsentinel.model import Mode, Proto

# The ring is read frame by frame (TPACKET_V2, ``capture/frames.py``): the kernel wakes the
# loop for each packet it queues, so a scan's first probe is read ~0.1 ms after it arrived
# (V3 blocks waited for their retire timer, or on 6.18 for the next packet). A frame holds the
# headers and the filter's snap length (256 bytes); 32 frames fill a 12 KiB block exactly.
RING_FRAME = 384
RING_BLOCK = 32 * RING_FRAME


class StartupError(PortSentinelError):
    """The daemon cannot watch anything (no port could be bound, no capture)."""


def open_listeners(setup: Setup, log: LogSink, modes: list[Mode]) -> Listeners | None:
    """Bind the ports of the bound ``modes`` and log what was bound; None without such a mode.

    StartupError when not one port of a protocol could be bound (PortSentry exits then too).
    """
    if not modes:
        return None
    s = setup.settings
    tcp = s.tcp_ports if Mode.TCP in modes else frozenset[int]()
    udp = s.udp_ports if Mode.UDP in modes else frozenset[int]()
    listeners = Listeners(tcp, udp)
    results = listeners.open()
    for proto in (Proto.TCP, Proto.UDP):
        mine = [r for r in results if r.proto is proto]
        if not mine:
            continue
        ok = {r.port for r in mine if r.ok}
        if s.log_format == "2.0":
            bound = {(r.port, r.family == socket.AF_INET6) for r in mine if r.ok}
            lines = portsentry2_log.bound_startup_lines(proto, bound, {r.port for r in mine} - ok)
        else:
            lines = bound_startup_lines(proto, ok, {r.port for r in mine} - ok)
        for line in lines:
            log.line(line)
        if not ok:
            listeners.close()
            raise StartupError(nothing_bound_line(proto))
    return listeners


def port_limit(setup: Setup, mode: Mode) -> int:
    """The advanced modes' ADVANCED_PORTS_x: every port below it is watched."""
    s = setup.settings
    return s.advanced_ports_tcp if mode.proto is Proto.TCP else s.advanced_ports_udp


def excluded_ports(setup: Setup, mode: Mode) -> frozenset[int]:
    """The advanced modes' ADVANCED_EXCLUDE_x (the other modes exclude nothing)."""
    if not mode.advanced:
        return frozenset()
    s = setup.settings
    return s.advanced_exclude_tcp if mode.proto is Proto.TCP else s.advanced_exclude_udp


def ring_config(setup: Setup) -> RingConfig:
    """The capture ring's geometry: CAPTURE_RING_MIB in RING_BLOCK blocks, on INTERFACES."""
    s = setup.settings
    blocks = max(2, s.capture_ring_mib * (1 << 20) // RING_BLOCK)
    return RingConfig(
        block_size=RING_BLOCK,
        block_count=blocks,
        frame_size=RING_FRAME,
        interfaces=s.interfaces,
        version=2,
        include_loopback=setup.invocation.loopback,
    )


def kernel_filter(setup: Setup) -> list[Instruction]:
    """The kernel prefilter: only what can be a probe for the stealth modes reaches Python."""
    return build_filter(_port_filter(setup, setup.udp_mode), _port_filter(setup, setup.tcp_mode))


def _port_filter(setup: Setup, mode: Mode | None) -> PortFilter:
    if mode is None or not mode.stealth:
        return PortFilter()  # nothing of that protocol (evasive fragments still pass)
    if mode.advanced:
        return PortFilter.under(port_limit(setup, mode), excluded_ports(setup, mode))
    s = setup.settings
    return PortFilter.of(s.tcp_ports if mode.proto is Proto.TCP else s.udp_ports)


def open_parts(
    setup: Setup, log: LogSink
) -> tuple[HostView, Detector, ProtocolRings | None, Listeners | None]:
    """The host view, the detector, the capture ring (stealth modes) and the bound sockets
    (classic modes), with PortSentry's start-up lines; StartupError if nothing works."""
    modes = [m for m in (setup.tcp_mode, setup.udp_mode) if m is not None]
    stealth = [m for m in modes if m.stealth]
    host = HostView(log.line, use_conntrack=bool(stealth))
    try:
        host.refresh_in_use()
        if stealth:
            host.refresh_nat()
        detector = Detector(
            detector_config(setup),
            ignore=setup.ignore,
            local=host.local,
            in_use_tcp=host.in_use[Proto.TCP].cached,
            in_use_udp=host.in_use[Proto.UDP].cached,
        )
        service_check = setup.invocation.service_check
        for proto in (Proto.TCP, Proto.UDP):
            if service_check:
                detector.set_in_use_recheck(proto, host.in_use[proto].recheck)
            else:  # PortSentry 2.0's -S: ports in use are watched like the others
                detector.set_in_use(proto, frozenset())
        if host.tracks_replies:
            detector.set_reply_check(host.is_reply)
        ring = None
        if stealth:
            # 2.0 names no port at the start (it checks each packet for a service instead)
            for mode in stealth if setup.settings.log_format != "2.0" else ():
                lines = stealth_startup_lines(
                    mode,
                    detector.watched_ports(mode.proto),
                    excluded_ports(setup, mode),
                    host.in_use[mode.proto].ports if service_check else frozenset(),
                    port_limit(setup, mode),
                )
                for line in lines:
                    log.line(line)
            ring = ProtocolRings(ring_config(setup), kernel_filter(setup))
        listeners = open_listeners(setup, log, [m for m in modes if m.bound])
    except BaseException:
        host.close()
        raise
    return host, detector, ring, listeners
