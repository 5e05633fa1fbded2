"""Offline analysis: run a pcap/pcapng capture through the whole core as if it were live.

Two passes over the file. The first approximates the live socket table: a port counts as in
use when a watched host answers on it anywhere in the capture (a SYN-ACK, or UDP sent from it),
because a live daemon would have seen that socket open. The second feeds every packet to the
detector with the capture's own timestamps as the clock. Nothing here touches a firewall.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from portsentinel.capture.pcapfile import CorruptCaptureError, open_capture
from portsentinel.decode import decoder_for_linktype
from portsentinel.detect.detector import Detector
from portsentinel.errors import CaptureError, ConfigError, DecodeError
from portsentinel.files import check_regular
from portsentinel.model import ACK, SYN, Decision, Frag, Packet, Proto

Decoder = Callable[[bytes | memoryview], Packet | None]

# How often (in capture seconds) the detector's idle-state expiry runs.
_TICK_INTERVAL = 1.0


@dataclass
class ReplayStats:
    """What one pass saw; printed as the replay summary."""

    frames: int = 0
    packets: int = 0  # TCP/UDP packets decoded
    skipped: int = 0  # frames that are not TCP/UDP over IP (ARP, ICMP, later fragments)
    decode_errors: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    # A capture cut short (tcpdump killed, disk full) is replayed up to the cut, with a warning.
    truncated: str | None = None


@dataclass(frozen=True)
class InUse:
    """Ports the watched host answered on, per protocol."""

    tcp: frozenset[int]
    udp: frozenset[int]


def parse_in_use(values: Sequence[str]) -> tuple[frozenset[int], frozenset[int]]:
    """``--in-use tcp:22,80 --in-use udp:53`` -> (tcp ports, udp ports)."""
    tcp: set[int] = set()
    udp: set[int] = set()
    for value in values:
        proto, sep, ports = value.partition(":")
        target = {"tcp": tcp, "udp": udp}.get(proto.strip().lower())
        if not sep or target is None:
            raise ConfigError(
                f"bad value {value!r}", key="--in-use", expected="tcp:PORTS or udp:PORTS"
            )
        target.update(_ports(value, ports))
    return frozenset(tcp), frozenset(udp)


def _ports(value: str, text: str) -> set[int]:
    found: set[int] = set()
    for item in text.split(","):
        low, dash, high = item.strip().partition("-")
        try:
            first, last = int(low), int(high) if dash else int(low)
        except ValueError:
            first, last = -1, -1
        if not 0 <= first <= last <= 65535:
            raise ConfigError(
                f"bad port {item!r} in {value!r}", key="--in-use", expected="ports 0-65535"
            )
        found.update(range(first, last + 1))
    return found


def parse_local(values: Sequence[str]) -> frozenset[bytes]:
    """``--local ADDR`` values as packed addresses."""
    packed = set()
    for value in values:
        try:
            packed.add(ipaddress.ip_address(value.strip()).packed)
        except ValueError:
            raise ConfigError(
                f"not an address: {value!r}", key="--local", expected="an IPv4 or IPv6 address"
            ) from None
    return frozenset(packed)


class _Decoders:
    """One decoder per link type, looked up once per type."""

    def __init__(self) -> None:
        self._by_type: dict[int, Decoder] = {}

    def __call__(self, linktype: int) -> Decoder:
        decoder = self._by_type.get(linktype)
        if decoder is None:
            decoder = self._by_type[linktype] = decoder_for_linktype(linktype)
        return decoder


def _packets(path: str, stats: ReplayStats) -> Iterable[tuple[float, Packet]]:
    """Decoded TCP/UDP packets with their timestamps; counts what it skips."""
    decoders = _Decoders()
    check_capture(path)
    with open_capture(path) as reader:
        try:
            yield from _decoded(reader, decoders, stats)
        except CorruptCaptureError as exc:
            if not exc.truncated:
                raise
            stats.truncated = str(exc)


def check_capture(path: str) -> None:
    """``CaptureError`` unless ``path`` is a regular file: the capture reader would wait for
    a writer on a FIFO for ever. (It maps the file, so its size needs no cap here.)"""
    try:
        check_regular(path)
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read capture: {exc.strerror or exc}") from None


def _decoded(
    frames: Iterable[tuple[float, int, bytes]], decoders: _Decoders, stats: ReplayStats
) -> Iterable[tuple[float, Packet]]:
    for ts, linktype, frame in frames:
        stats.frames += 1
        try:
            pkt = decoders(linktype)(frame)
        except DecodeError:
            stats.decode_errors += 1
            continue
        if pkt is None:
            stats.skipped += 1
            continue
        stats.packets += 1
        yield ts, pkt


def survey_in_use(path: str, local: frozenset[bytes] | None) -> InUse:
    """Pass one: ports the watched hosts (``local``, or any host) answered on."""
    tcp: set[int] = set()
    udp: set[int] = set()
    for _ts, pkt in _packets(path, ReplayStats()):
        proto, src, _dst, sport, _dport, flags, _ttl, _options, frag = pkt
        if local is not None and src not in local:
            continue
        if proto == Proto.TCP and flags & (SYN | ACK) == SYN | ACK:
            tcp.add(sport)
        elif proto == Proto.UDP and frag == Frag.NONE:
            udp.add(sport)
    return InUse(frozenset(tcp), frozenset(udp))


def run_replay(path: str, detector: Detector, emit: Callable[[Decision], None]) -> ReplayStats:
    """Pass two: feed every packet to the detector, hand each decision to ``emit``."""
    stats = ReplayStats()
    counts = stats.decisions
    feed = detector.feed
    next_tick = None
    for ts, pkt in _packets(path, stats):
        for decision in feed(pkt, ts):
            key = decision.action.value
            counts[key] = counts.get(key, 0) + 1
            emit(decision)
        if next_tick is None or ts >= next_tick:
            for decision in detector.tick(ts):
                emit(decision)
            next_tick = ts + _TICK_INTERVAL
    return stats


def summary(path: str, stats: ReplayStats) -> str:
    """One human line for stderr."""
    actions = ", ".join(f"{n} {k}" for k, n in sorted(stats.decisions.items())) or "none"
    line = (
        f"replayed {path}: {stats.frames} frames, {stats.packets} TCP/UDP packets, "
        f"{stats.skipped} other, {stats.decode_errors} malformed; decisions: {actions}"
    )
    if stats.truncated:
        line += f"\nwarning: capture cut short, replayed up to the cut: {stats.truncated}"
    return line
