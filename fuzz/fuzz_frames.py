"""Fuzz every frame decoder and the detection core behind it: bytes in, invariants checked.

Run: ``python fuzz/fuzz_frames.py [libFuzzer options] [CORPUS...]`` (needs ``atheris``;
``fuzz/run.py`` runs it for a set number of frames and reports the figures).

An input is two control bytes and a frame:

- byte 0, low nibble, picks the decoder: ``decoder_for_linktype(SUPPORTED_LINKTYPES[n % 10])``;
- byte 1 drives the core: bits 0-3 advance the clock by that many quarter seconds, bit 4
  calls ``tick``, bit 5 releases the source of any block (a ban ending);
- with byte 0's high nibble and byte 1's bits 6-7 all set, the detectors that can swap to
  their other configuration do (a reload: caps shrink or grow under load). Rare on purpose:
  a reload rebuilds 64 KiB port tables, which costs a hundred times a frame;
- the rest is the frame.

Every decoded packet goes to each of a few long-lived detectors with small caps, so state
builds up across inputs as it does in a daemon, and the caps are hit all the time. After each
input: only ``DecodeError`` left the decoder, and a ``bytes`` and a ``memoryview`` of the same
frame decoded alike; the packet is well formed; no detector raised; each returned at most one
decision, well formed (action and reason agree, ports in range, addresses parse back to the
packet's); the tracked sources, per-source evidence and remembered responses stay within
their caps; every probe produced exactly one decision.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from fuzzing import Violation, require, run_libfuzzer

from portsentinel.decode import Decoder, decoder_for_linktype
from portsentinel.detect.classify import TCP_KIND
from portsentinel.detect.decide import BLOCK_ACTIONS
from portsentinel.detect.detector import Detector
from portsentinel.detect.mute import MUTED_CAP
from portsentinel.detect.settings import DetectorConfig
from portsentinel.errors import DecodeError
from portsentinel.model import Action, Decision, Frag, Mode, Packet, Proto, Reason, ScanKind
from portsentinel.networks import AddressSet

SUPPORTED_LINKTYPES: Final = (0, 1, 12, 14, 101, 108, 113, 228, 229, 276)
"""Every LINKTYPE ``decoder_for_linktype`` accepts (the CI slice checks the list is whole)."""

DECODERS: Final[tuple[Decoder, ...]] = tuple(decoder_for_linktype(t) for t in SUPPORTED_LINKTYPES)
HEADER: Final = 2  # control bytes before the frame
QUARTER: Final = 0.25
TICK: Final = 0x10
RELEASE: Final = 0x20
HOLD: Final = 0x40  # the gated detectors hold every ignored probe's record
RELOAD: Final = (0xF0, 0xC0)  # (byte 0 mask, byte 1 mask), both all set

_TCP: Final = int(Proto.TCP)
_UDP: Final = int(Proto.UDP)
# Refused before the probe is counted: no evidence, no rule.
_UNCOUNTED: Final = frozenset({Reason.IGNORE_LIST, Reason.OWN_ADDRESS})
# Taken after a rule fired.
_FIRED: Final = frozenset(
    {
        Reason.TRIGGERED,
        Reason.ALREADY_BLOCKED,
        Reason.NEVER_BLOCK,
        Reason.BAN_BUDGET,
        Reason.WEAK_EVIDENCE,
    }
)
_V4_MAPPED: Final = bytes(10) + b"\xff\xff"


def _packed(*texts: str) -> frozenset[bytes]:
    return frozenset(ipaddress.ip_address(t).packed for t in texts)


def _networks(*texts: str) -> AddressSet:
    return AddressSet(ipaddress.ip_network(t) for t in texts)


@dataclass
class Variant:
    """One long-lived detector and the two configurations it swaps between."""

    name: str
    detector: Detector
    configs: tuple[DetectorConfig, DetectorConfig]
    current: int = 0
    reloads: int = 0

    @property
    def config(self) -> DetectorConfig:
        return self.configs[self.current]

    def reload(self) -> None:
        if self.configs[0] == self.configs[1]:
            return  # its port tables span every port: too dear to rebuild per input
        self.current ^= 1
        self.reloads += 1
        self.detector.reconfigure(self.config)

    def cap(self, name: str) -> int:
        """The larger of both configurations' caps: evidence kept over a shrinking reload
        may stay up to the old cap (documented), but never above it."""
        values: list[int] = [getattr(c, name) for c in self.configs]
        return max(values)


def _variant(
    name: str,
    config: DetectorConfig,
    other: DetectorConfig,
    *,
    ignore: AddressSet | None = None,
    local: frozenset[bytes] | None = None,
    never_block: frozenset[bytes] | None = None,
    in_use_tcp: frozenset[int] = frozenset(),
    in_use_udp: frozenset[int] = frozenset(),
    reply_sport: int | None = None,
    gated: bool = False,
) -> Variant:
    detector = Detector(
        config,
        ignore=ignore,
        local=local,
        never_block=never_block,
        in_use_tcp=in_use_tcp,
        in_use_udp=in_use_udp,
    )
    if reply_sport is not None:
        # A stand-in for conntrack: "answers a flow we started" for one source port.
        detector.set_reply_check(lambda pkt: pkt[3] == reply_sport)
    if gated:
        detector.set_record_gate(_gate)
    return Variant(name, detector, (config, other))


def _gate(src: bytes, reason: Reason, now: float) -> bool:
    """The record gate of the gated detectors: the input says whether records are held (the
    daemon's is its repeat limiter), so held records and muted sources are reachable."""
    return not WORLD.hold


def build_variants() -> tuple[Variant, ...]:
    """Four detectors that between them reach every branch of the core, caps kept small."""
    every = DetectorConfig(
        advanced_tcp_limit=65536,
        advanced_udp_limit=65536,
        max_sources=16,
        max_ports_per_source=4,
        max_destinations_per_source=3,
        max_responded=8,
        idle_timeout=2.0,
        ban_rate=0.5,
        ban_burst=2,
        ban_strong_ports=3,
    )
    listed = DetectorConfig(
        tcp_mode=Mode.STCP,
        udp_mode=Mode.SUDP,
        tcp_ports=frozenset({21, 22, 23, 25, 80, 111, 143, 443, 1080, 31337}),
        udp_ports=frozenset({53, 69, 111, 137, 161, 31337}),
        scan_trigger=3,
        scan_window=4.0,
        block_tcp=2,
        block_udp=0,
        max_sources=8,
        max_ports_per_source=3,
        max_destinations_per_source=2,
        max_responded=4,
        idle_timeout=3.0,
        block_min_ports=2,
    )
    quiet = DetectorConfig(
        advanced_exclude_tcp=frozenset({113, 139}),
        udp_mode=None,
        scan_trigger=2,
        block_tcp=0,
        block_udp=0,
        max_sources=4,
        max_ports_per_source=2,
        max_destinations_per_source=2,
        max_responded=2,
        idle_timeout=0.0,
    )
    tiny = DetectorConfig(
        advanced_tcp_limit=65536,
        advanced_udp_limit=65536,
        scan_trigger=1,
        scan_window=1.0,
        block_tcp=1,
        block_udp=2,
        max_sources=1,
        max_ports_per_source=1,
        max_destinations_per_source=1,
        max_responded=1,
        idle_timeout=0.5,
        ban_rate=0.001,
        ban_burst=1,
    )
    return (
        _variant("every", every, every, gated=True),
        _variant(
            "listed",
            listed,
            replace(listed, max_sources=12, max_ports_per_source=6, scan_trigger=0),
            local=_packed("198.18.0.1", "fd00:5e::1"),
            never_block=_packed("198.18.0.254", "fd00:5e::fe"),
            in_use_tcp=frozenset({22, 80}),
            in_use_udp=frozenset({53}),
            reply_sport=123,
        ),
        _variant(
            "quiet",
            quiet,
            replace(quiet, tcp_mode=Mode.STCP, tcp_ports=frozenset({1, 2, 3}), max_sources=2),
            ignore=_networks("198.18.0.0/31", "fd00:5e::/127", "10.0.0.0/8"),
        ),
        _variant("tiny", tiny, tiny, gated=True),
    )


@dataclass
class World:
    """The state that lives across inputs, and counts that show what the inputs reached."""

    variants: tuple[Variant, ...] = field(default_factory=build_variants)
    now: float = 0.0
    inputs: int = 0
    hold: bool = False  # this input's records are held by the gated detectors
    packets: int = 0
    ignored_frames: int = 0  # decoded to None: not TCP/UDP, later fragments
    decode_errors: int = 0
    decisions: dict[Action, int] = field(default_factory=lambda: dict.fromkeys(Action, 0))
    kinds: dict[ScanKind, int] = field(default_factory=lambda: dict.fromkeys(ScanKind, 0))

    def evicted(self) -> int:
        return sum(v.detector.stats.sources_evicted for v in self.variants)

    def expired(self) -> int:
        return sum(v.detector.stats.sources_expired for v in self.variants)


WORLD = World()


def reset() -> World:
    """Start over with fresh detectors and clock (for tests); returns the new world."""
    global WORLD  # noqa: PLW0603 - libFuzzer calls a plain function; the state lives here
    WORLD = World()
    return WORLD


# --- the checks ------------------------------------------------------------------------------


def decode_both(decoder: Decoder, frame: bytes) -> Packet | None:
    """Decode ``frame`` as ``bytes`` and as a ``memoryview`` (as the live ring hands it);
    only ``DecodeError`` may escape, and both must agree."""
    try:
        packet = decoder(frame)
    except DecodeError:
        try:
            again = decoder(memoryview(frame))
        except DecodeError:
            raise
        raise Violation(f"bytes raised DecodeError, memoryview gave {again!r}") from None
    try:
        again = decoder(memoryview(frame))
    except DecodeError as exc:
        raise Violation(f"bytes gave {packet!r}, memoryview raised {exc}") from None
    require(again == packet, f"bytes gave {packet!r}, memoryview {again!r}")
    return packet


def check_packet(packet: Packet) -> None:
    """A decoded packet is the 9-tuple the model promises, every field in its range."""
    require(type(packet) is tuple and len(packet) == 9, f"not a Packet: {packet!r}")
    proto, src, dst, sport, dport, flags, ttl, options, frag = packet
    require(proto in (_TCP, _UDP), f"protocol {proto}")
    require(type(src) is bytes and type(dst) is bytes, "addresses are not bytes")
    require(len(src) == len(dst) and len(src) in (4, 16), f"address lengths {len(src)}/{len(dst)}")
    require(0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF, f"ports {sport}/{dport}")
    require(0 <= flags <= 0xFF and (flags == 0 or proto == _TCP), f"flags {flags} for {proto}")
    require(0 <= ttl <= 0xFF, f"ttl {ttl}")
    require(type(options) is bool, f"options {options!r}")
    require(frag in tuple(Frag), f"frag {frag}")
    if frag == Frag.OVERLAP:
        require(sport == dport == flags == 0 and proto == _TCP, "an overlap carries no header")


def _same_address(text: str, packed: bytes) -> bool:
    """``text`` parses, and names ``packed`` (an IPv4-mapped address is shown as IPv4)."""
    parsed = ipaddress.ip_address(text).packed
    return parsed == packed or (len(packed) == 16 and packed == _V4_MAPPED + parsed)


def _expected_kind(packet: Packet) -> ScanKind | None:
    if packet[8]:
        return ScanKind.FRAGMENT
    return TCP_KIND[packet[5]] if packet[0] == _TCP else ScanKind.UDP


def check_decision(decision: Decision, packet: Packet, now: float, variant: Variant) -> None:
    """One decision, judged against the packet that caused it and the detector's config."""
    d, config = decision, variant.config
    proto = Proto(packet[0])
    require(type(d.action) is Action and type(d.reason) is Reason, f"types: {d!r}")
    require(d.proto is proto and d.port == packet[4], f"proto/port {d.proto}/{d.port}")
    require(0 <= d.port <= 0xFFFF, f"port {d.port}")
    require(d.time == now, f"time {d.time} != {now}")
    require(_same_address(d.src, packet[1]), f"src {d.src!r} != {packet[1].hex()}")
    require(_same_address(d.dst, packet[2]), f"dst {d.dst!r} != {packet[2].hex()}")
    require(d.kind is _expected_kind(packet), f"kind {d.kind} for {packet!r}")
    require(d.flags == packet[5] and d.ip_options is packet[7], "flags/options not carried")
    mode = config.tcp_mode if proto is Proto.TCP else config.udp_mode
    require(d.mode is mode, f"mode {d.mode} != {mode}")
    triggered = d.reason is Reason.TRIGGERED
    require(triggered is (d.action is not Action.IGNORED), f"{d.action} with {d.reason!r}")
    require(d.first is triggered, f"first={d.first} with {d.reason!r}")
    if triggered:
        level = config.block_tcp if proto is Proto.TCP else config.block_udp
        require(d.action is BLOCK_ACTIONS[level], f"{d.action} for level {level}")
    if d.reason in _UNCOUNTED:
        require(d.rule is None and d.hits == 0 and d.ports_seen == 0, f"counted: {d!r}")
        return
    require(d.reason in _FIRED or d.reason is Reason.BELOW_TRIGGER, f"reason {d.reason!r}")
    require((d.rule is not None) is (d.reason in _FIRED), f"rule {d.rule} with {d.reason!r}")
    require(d.hits >= 1, f"hits {d.hits}")
    require(1 <= d.ports_seen <= variant.cap("max_ports_per_source"), f"ports {d.ports_seen}")
    if config.scan_trigger <= 1:
        require(d.reason is not Reason.BELOW_TRIGGER, "trigger 0/1 fires on every probe")


def check_bounds(variant: Variant, src: bytes | None) -> None:
    """The caps hold, and every probe made exactly one decision."""
    det, config = variant.detector, variant.config
    stats = det.stats
    # The tracker itself against today's cap (a reload evicts at once); the counter is only
    # refreshed by the next probe or tick, so it may still show the old cap's figure.
    tracked = len(det._tracker)
    require(tracked <= config.max_sources, f"{variant.name}: {tracked} sources tracked")
    require(stats.tracked_sources <= variant.cap("max_sources"), "tracked sources counter")
    require(len(det.policy.responses) <= variant.cap("max_responded"), "responses over cap")
    budget = det.policy.budget
    require(budget is None or budget.active <= variant.cap("max_responded"), "bans over cap")
    require(sum(stats.probes_by_kind.values()) == stats.probes, "probes by kind")
    require(sum(stats.decisions_by_action.values()) == stats.probes, "one decision per probe")
    ignored = stats.decisions_by_action[Action.IGNORED]
    require(stats.held <= ignored, "more records held than probes ignored")
    require(sum(stats.ignored_by_reason.values()) == ignored, "ignored by reason")
    require(0 <= det.fresh_probes() <= stats.probes, "fresh probes out of range")
    require(all(len(m) <= MUTED_CAP for m in det._muted.values()), "muted sources over cap")
    state = det.source(src) if src is not None else None
    if state is not None:
        require(state.ports_seen <= variant.cap("max_ports_per_source"), "ports per source")
        dsts = variant.cap("max_destinations_per_source")
        require(state.destinations <= dsts, "destinations per source")
        require(state.first_seen <= state.last_seen <= WORLD.now, "source times out of order")


# --- one input -------------------------------------------------------------------------------


def test_one_input(data: bytes) -> None:
    """The libFuzzer entry point: decode the frame, feed the core, check everything."""
    world = WORLD
    world.inputs += 1
    if len(data) < HEADER:
        return
    decoder = DECODERS[(data[0] & 0x0F) % len(DECODERS)]
    control = data[1]
    world.hold = bool(control & HOLD)
    world.now += (control & 0x0F) * QUARTER
    if data[0] & RELOAD[0] == RELOAD[0] and control & RELOAD[1] == RELOAD[1]:
        for variant in world.variants:
            variant.reload()
    packet = _decoded(world, decoder, data[HEADER:])
    for variant in world.variants:
        _feed(world, variant, packet, control)
        check_bounds(variant, packet[1] if packet is not None else None)


def _decoded(world: World, decoder: Decoder, frame: bytes) -> Packet | None:
    try:
        packet = decode_both(decoder, frame)
    except DecodeError:
        world.decode_errors += 1
        return None
    if packet is None:
        world.ignored_frames += 1
        return None
    check_packet(packet)
    world.packets += 1
    return packet


def _feed(world: World, variant: Variant, packet: Packet | None, control: int) -> None:
    det = variant.detector
    if packet is not None:
        decisions = det.feed(packet, world.now)
        require(len(decisions) <= 1, f"{len(decisions)} decisions for one packet")
        for decision in decisions:
            check_decision(decision, packet, world.now, variant)
            world.decisions[decision.action] += 1
            world.kinds[decision.kind] += 1
            if control & RELEASE and decision.action is Action.BLOCK:
                det.release(packet[1])
    if control & TICK:
        require(det.tick(world.now) == [], "tick decided something")


def main(argv: Sequence[str]) -> None:
    run_libfuzzer(test_one_input, argv)


if __name__ == "__main__":
    main(sys.argv)
