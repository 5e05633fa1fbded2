"""Offline analysis: run a pcap/pcapng capture through the whole core as if it were live.

Two passes, one read of the file. The first decodes every frame once: it approximates the live
socket table (a port counts as in use when a watched host answers on it anywhere in the
capture, a SYN-ACK or UDP sent from it, because a live daemon would have seen that socket
open) and keeps the packets that may be probes (the detector's ``screen``: a probe's kind, to
a watched port). The second feeds those to the detector, the in-use view now complete, with the
capture's own timestamps as the clock. With ACK probes on, pass one also keeps a TCP segment
with ACK (no SYN, no RST) to a watched port when no packet of its connection came before it in
the capture, either way: the live daemon asks conntrack that question, a capture answers it
itself (a capture that starts in the middle of a connection to a watched port no service
answers on shows it as a probe; the live daemon would not). Ordinary traffic, answers and
probes to ports nobody watches are read once and never reach the detector. At most KEEP_MAX
packets wait between the passes; past that, the second pass reads the rest of the file again
(without the ACK-bearing ones). Nothing here touches a firewall.
"""

from __future__ import annotations

import ipaddress
import math
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Final

from portsentinel.capture.pcapfile import CaptureReader, CorruptCaptureError, open_capture
from portsentinel.cli.replay_repeats import Held, Repeats
from portsentinel.decode import decoder_for_linktype
from portsentinel.detect.classify import UNSOLICITED_KIND
from portsentinel.detect.detector import Detector
from portsentinel.detect.fingerprint import scanner_of_frame
from portsentinel.detect.screen import ProbeScreen
from portsentinel.errors import CaptureError, ConfigError, DecodeError
from portsentinel.files import check_regular
from portsentinel.model import ACK, SYN, Decision, DecoyCut, Packet, Proto, addr_text

Decoder = Callable[[bytes | memoryview], Packet | None]

# How often (in capture seconds) the detector's idle-state expiry runs.
_TICK_INTERVAL = 1.0
# Packets kept between the two passes: about 300 bytes each (measured: +20 MB for the 65,533
# probes of a full-range scan with every port watched), so ~40 MB at most.
KEEP_MAX: Final = 1 << 17
MARK_TRIES: Final = 4  # a source's first probes looked at for a scanner's marks
MARKED_MAX: Final = 65536  # sources looked at, at most
_SYN_ACK: Final = SYN | ACK
_FLOWS_MAX: Final = 1 << 21  # connections remembered by pass one; forgotten all at once past it
_TCP: Final = int(Proto.TCP)


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
    """Ports the watched host answered on (or that ``--in-use`` names), per protocol."""

    tcp: frozenset[int] = frozenset()
    udp: frozenset[int] = frozenset()

    def __or__(self, other: InUse) -> InUse:
        return InUse(self.tcp | other.tcp, self.udp | other.udp)


@dataclass
class Survey:
    """Pass one's findings: the frames counted, the ports in use, the packets kept and their
    times (in an array: a float object and a pair per packet cost a fifth more, measured)."""

    stats: ReplayStats
    in_use: InUse
    kept: list[Packet]
    times: array[float]
    # The first frame whose packet could not be kept (KEEP_MAX reached): pass two reads the
    # file again from there.
    resume: int | None = None
    scanners: dict[bytes, str] = field(default_factory=dict)  # the tool per source


class _Marks:
    """The tool each source's probes look made by (``fingerprint``), from its first
    ``MARK_TRIES`` probes, for at most ``MARKED_MAX`` sources."""

    def __init__(self) -> None:
        self.tools: dict[bytes, str] = {}
        self.tries: dict[bytes, int] = {}

    def look(self, src: bytes, frame: bytes, linktype: int) -> None:
        tries = self.tries
        n = tries.get(src, 0)
        if n >= MARK_TRIES or (n == 0 and len(tries) >= MARKED_MAX):
            return
        tries[src] = n + 1
        tool = scanner_of_frame(frame, linktype)
        if tool is not None:
            self.tools[src] = tool
            tries[src] = MARK_TRIES


def parse_in_use(values: Sequence[str]) -> InUse:
    """``--in-use tcp:22,80 --in-use udp:53`` -> the ports per protocol."""
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
    return InUse(frozenset(tcp), frozenset(udp))


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


def survey(
    path: str,
    local: frozenset[bytes] | None,
    screen: ProbeScreen,
    limit: int = KEEP_MAX,
    watch: Callable[[CaptureReader], None] | None = None,
    *,
    unsolicited: bool = False,
) -> Survey:
    """Pass one: count and decode every frame, note the ports the watched hosts (``local``,
    or any host) answered on, keep the packets ``screen`` passes (``limit`` at most).
    ``watch`` is given the open reader (whose ``progress`` another thread may show).
    ``unsolicited``: keep the ACK-bearing segments that open no connection (module docstring)."""
    stats = ReplayStats()
    tcp: set[int] = set()
    udp: set[int] = set()
    kept: list[Packet] = []
    times = array("d")
    resume = None
    decoders = _Decoders()
    marks = _Marks()
    look = marks.look
    check_capture(path)
    frames = skipped = errors = 0
    linktype, decode = None, None
    # One flat loop, counters and tables in locals: it runs for every frame of the file. The
    # screen is read inline (``ProbeScreen.__call__``'s test): a call per frame cost 10 %.
    tcp_proto, syn_ack = _TCP, _SYN_ACK
    watch_tcp, watch_udp, kinds, fragments = screen.tcp, screen.udp, screen.kinds, screen.fragments
    flows: set[tuple[bytes, int, bytes, int]] = set()
    ack_kinds = UNSOLICITED_KIND if unsolicited else (None,) * 256
    with open_capture(path) as reader:
        if watch is not None:
            watch(reader)
        try:
            for ts, frame_type, frame in reader:
                frames += 1
                if frame_type != linktype or decode is None:
                    linktype, decode = frame_type, decoders(frame_type)
                try:
                    pkt = decode(frame)
                except DecodeError:
                    errors += 1
                    continue
                if pkt is None:
                    skipped += 1
                    continue
                proto, src, dst, sport, dport, flags, _ttl, _options, frag = pkt
                if frag:
                    wanted = proto in fragments
                elif proto == tcp_proto:
                    if unsolicited and (watch_tcp[dport] or watch_tcp[sport]):
                        # A connection to a watched port, keyed from its client's side.
                        key = (src, sport, dst, dport) if watch_tcp[dport] else (
                            dst, dport, src, sport)  # fmt: skip
                        fresh = key not in flows
                        if fresh:
                            if len(flows) >= _FLOWS_MAX:
                                flows.clear()
                            flows.add(key)
                    else:
                        fresh = False
                    if kinds[flags] is None:  # not a probe; a SYN-ACK says a port is in use
                        if flags & syn_ack == syn_ack and (local is None or src in local):
                            tcp.add(sport)
                        if not (fresh and ack_kinds[flags] is not None and watch_tcp[dport]):
                            continue
                    wanted = watch_tcp[dport] == 1
                else:
                    if local is None or src in local:
                        udp.add(sport)
                    wanted = watch_udp[dport] == 1
                if wanted:
                    look(src, frame, frame_type)
                    if len(kept) < limit:
                        kept.append(pkt)
                        times.append(ts)
                    elif resume is None:
                        resume = frames - 1
        except CorruptCaptureError as exc:
            if not exc.truncated:
                raise
            stats.truncated = str(exc)
    stats.frames, stats.skipped, stats.decode_errors = frames, skipped, errors
    stats.packets = frames - skipped - errors
    return Survey(stats, InUse(frozenset(tcp), frozenset(udp)), kept, times, resume, marks.tools)


def check_capture(path: str) -> None:
    """``CaptureError`` unless ``path`` is a regular file: the capture reader would wait for
    a writer on a FIFO for ever. (It maps the file, so its size needs no cap here.)"""
    try:
        check_regular(path)
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read capture: {exc.strerror or exc}") from None


def _rest(path: str, start: int, screen: ProbeScreen) -> Iterator[tuple[float, Packet]]:
    """Pass two past KEEP_MAX: the packets ``screen`` passes from frame ``start`` on, read
    again (pass one counted them, and any damage)."""
    decoders = _Decoders()
    with open_capture(path) as reader:
        try:
            for ts, linktype, frame in islice(reader, start, None):
                try:
                    pkt = decoders(linktype)(frame)
                except DecodeError:
                    continue
                if pkt is not None and screen(pkt):
                    yield ts, pkt
        except CorruptCaptureError:
            return  # pass one reported it


def run_replay(
    path: str,
    detector: Detector,
    emit: Callable[[Decision], None],
    *,
    local: frozenset[bytes] | None = None,
    in_use: InUse = InUse(),
    summarise: Callable[[Held], None] | None = None,
    limit: int = KEEP_MAX,
    watch: Callable[[CaptureReader], None] | None = None,
    unsolicited: bool = True,
    on_cut: Callable[[DecoyCut], None] | None = None,
) -> ReplayStats:
    """Both passes: the detector's in-use view is what the capture shows plus ``in_use``;
    each decision goes to ``emit``. With ``summarise``, a source's repeats are held back as
    the daemon holds them and ``summarise`` gets what was held (see ``replay_repeats``);
    without it every decision is built and emitted. ``on_cut`` gets each ban the detector
    cuts as a decoy's (``detect/grouping.py``), at its time in the capture."""
    found = survey(path, local, detector.screen, limit, watch, unsolicited=unsolicited)
    if found.scanners:
        emit = _telling(emit, {addr_text(src): tool for src, tool in found.scanners.items()})
    seen = found.in_use | in_use
    detector.set_in_use(Proto.TCP, seen.tcp)
    detector.set_in_use(Proto.UDP, seen.udp)
    before = detector.stats.decisions_by_action
    repeats = Repeats(detector, summarise) if summarise is not None else None
    packets: Iterable[tuple[float, Packet]] = zip(found.times, found.kept, strict=True)
    if found.resume is not None:
        packets = chain(packets, _rest(path, found.resume, detector.screen))
    end = _feed(packets, detector, emit, repeats, on_cut)
    if repeats is not None and end is not None:
        repeats.finish(end)
    after = detector.stats.decisions_by_action
    stats = found.stats
    stats.decisions = {a.value: after[a] - before[a] for a in after if after[a] > before[a]}
    return stats


def _telling(emit: Callable[[Decision], None], tools: dict[str, str]) -> Callable[[Decision], None]:
    """``emit`` with each decision's ``scanner`` told from its source's marks."""

    def emit_told(decision: Decision) -> None:
        decision.scanner = tools.get(decision.src)
        emit(decision)

    return emit_told


def _feed(
    packets: Iterable[tuple[float, Packet]],
    detector: Detector,
    emit: Callable[[Decision], None],
    repeats: Repeats | None,
    on_cut: Callable[[DecoyCut], None] | None = None,
) -> float | None:
    """Pass two: each packet to the detector, its decisions to ``emit``; the detector's
    expiry and the summaries of held records on the capture's clock. The last packet's time."""
    feed, tick, unsolicited = detector.feed, detector.tick, detector.feed_unsolicited
    next_timer = -math.inf
    ts = None
    for ts, pkt in packets:  # the last ts is returned
        if ts >= next_timer:
            for decision in tick(ts):
                emit(decision)
            next_timer = ts + _TICK_INTERVAL
            if repeats is not None:
                if ts >= repeats.due:
                    repeats.next_stretch(ts)
                next_timer = min(next_timer, repeats.due)
        # Pass one kept a segment with ACK only when it opened no connection.
        judge = unsolicited if pkt[0] == _TCP and pkt[5] & ACK and not pkt[8] else feed
        for decision in judge(pkt, ts):
            emit(decision)
        if on_cut is not None:
            for cut in detector.take_cuts():
                on_cut(cut)
    return ts


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
