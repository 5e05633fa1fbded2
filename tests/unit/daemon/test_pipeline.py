"""The detection loop on fake sources (tests/unit/daemon/fakes.py), driven turn by turn with a
clock the test moves: what comes out of it (log lines, store rows, bans asked for), its
timers, the ring's linger, the worker's messages, a reload, and the stop."""

from __future__ import annotations

import io
import ipaddress
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest

from portsentinel.alert.notify import Notifier
from portsentinel.alert.sinks import LogSink
from portsentinel.capture.afpacket import RingConfig
from portsentinel.capture.bpf import Instruction
from portsentinel.capture.listeners import Listeners
from portsentinel.config.setup import Setup
from portsentinel.daemon import pipeline as pipeline_module
from portsentinel.daemon import sources as sources_module
from portsentinel.daemon.outputs import ROWS_EVERY
from portsentinel.daemon.pipeline import (
    ADDRESSES_EVERY,
    IN_USE_EVERY,
    NAT_EVERY,
    NEVER_BLOCK_EVERY,
    RING_LINGER,
    RING_TURN,
    TICK_EVERY,
    Pipeline,
)
from portsentinel.daemon.sources import StartupError, kernel_filter, ring_config
from portsentinel.decode import decode_ip
from portsentinel.host.neverblock import NeverBlock
from portsentinel.host.routes import NextHops, Route
from portsentinel.model import Mode, Proto
from portsentinel.ratelimit import SUMMARY_EVERY
from portsentinel.respond.worker import Responder, WorkerMessage
from unit.daemon.fakes import (
    WALL,
    Driver,
    FakeHost,
    FakeListeners,
    FakeResponder,
    FakeRing,
    FakeRouteWatcher,
    FakeSources,
    InUse,
    Parts,
    attach,
    build,
    setup,
    syn,
)
from unit.decode_frames import SRC4

SCANNER = ipaddress.ip_address(SRC4).compressed  # 198.18.0.1
OTHER = bytes([198, 18, 7, 7])
SYN_LINE = "attackalert: TCP SYN/Normal scan from host: 198.18.0.1/198.18.0.1 to TCP port: {}"

Step = Callable[[], None]


def check(condition: Callable[[], bool]) -> Step:
    """A step that asserts what the previous turns did."""

    def step() -> None:
        assert condition()

    return step


def nothing() -> None:
    """A turn in which nothing new arrives."""


@pytest.fixture
def parts(tmp_path: Path) -> Parts:
    return build(setup(tmp_path))


# --- a probe's way out ------------------------------------------------------------------------


def test_a_scan_is_logged_banned_and_stored_in_a_batch(tmp_path: Path, parts: Parts) -> None:
    responder = attach(parts, tmp_path / "state")
    assert responder.started
    assert parts.ring is not None
    ring = parts.ring
    Driver(parts).run(
        [
            lambda: ring.send(syn(1)),
            check(lambda: [b.address for b in responder.bans] == [SCANNER]),
            check(lambda: responder.rows() == []),  # the batch waits up to ROWS_EVERY
            lambda: parts.clock.advance(ROWS_EVERY),
            check(lambda: len(responder.rows()) == 1),
        ]
    )
    assert SYN_LINE.format(1) in parts.lines()
    ban = responder.bans[0]
    assert (ban.port, ban.proto, ban.mode, ban.level) == (1, Proto.TCP, Mode.ATCP, 1)
    assert ban.evidence["ports"] == ["tcp/1"]
    assert ban.evidence["first_seen"] == WALL  # the wall clock of the turn that read it
    row = responder.rows()[0]
    assert (row.src, row.port, row.action, row.time) == (SCANNER, 1, "block", WALL)


def test_lines_are_written_once_a_turn_and_line_by_line_after_the_loop(parts: Parts) -> None:
    assert parts.ring is not None
    ring = parts.ring
    Driver(parts).run(
        [
            lambda: ring.send(syn(1)),
            check(lambda: SYN_LINE.format(1) in parts.lines()),  # flushed at the turn's end
        ]
    )
    parts.pipeline.log.line("after")
    assert parts.lines()[-1] == "after"  # no batch left on


def test_a_packet_that_cannot_be_decoded_is_counted_and_the_loop_goes_on(parts: Parts) -> None:
    assert parts.ring is not None
    ring = parts.ring
    Driver(parts).run([lambda: ring.send(b"\x45\x00", b"\x00" * 20, syn(1))])
    stats = parts.pipeline.statistics()
    assert stats["decode_errors"] == 2
    assert stats["probes"] == 1
    assert SYN_LINE.format(1) in parts.lines()


def test_without_responses_a_ban_is_only_logged_as_a_dry_run(parts: Parts) -> None:
    assert parts.ring is not None
    ring = parts.ring
    Driver(parts).run([lambda: ring.send(syn(1))])
    assert "attackalert: Host 198.18.0.1 not blocked (dry run)" in parts.lines()


# --- the linger ---------------------------------------------------------------------------------


def test_the_ring_lingers_while_it_brings_only_repeats(tmp_path: Path, parts: Parts) -> None:
    attach(parts, tmp_path / "state")
    assert parts.ring is not None
    ring, clock = parts.ring, parts.clock
    Driver(parts).run(
        [
            lambda: ring.send(syn(1)),  # a new source: read at once, watched on
            lambda: ring.send(syn(2)),  # a repeat of a banned source: read, then linger
            check(lambda: ring.handled == 2),
            lambda: ring.send(syn(3)),
            check(lambda: ring.handled == 2),  # lingering: not read although it is there
            lambda: clock.advance(RING_LINGER),  # the linger is over: read, still repeats
            check(lambda: ring.handled == 3),
            lambda: ring.send(syn(4, src=OTHER)),  # a new source, but the linger goes on
            check(lambda: ring.handled == 3),
            lambda: clock.advance(RING_LINGER),  # read: it was fresh, so watched again
            check(lambda: ring.handled == 4),
            lambda: ring.send(syn(5)),  # read in the same turn
            check(lambda: ring.handled == 5),
        ]
    )
    assert ring.reads == 5


def test_a_flood_of_repeats_is_read_turn_after_turn_without_lingering(
    tmp_path: Path, parts: Parts
) -> None:
    """The linger lets repeats gather while the ring is drained; a turn that ended with
    frames still waiting is followed by the next at once (a banned scanner going on at full
    speed would otherwise be read RING_TURN frames per RING_LINGER)."""
    attach(parts, tmp_path / "state")
    assert parts.ring is not None
    ring = parts.ring
    repeats = [syn(2 + i % 900) for i in range(RING_TURN + 5)]
    Driver(parts).run(
        [
            lambda: ring.send(syn(1)),  # banned
            lambda: ring.send(*repeats),
            check(lambda: ring.handled == 1 + RING_TURN),
            check(lambda: ring.handled == 1 + RING_TURN + 5),  # no clock moved: no linger
            lambda: ring.send(syn(999)),
            check(lambda: ring.handled == 1 + RING_TURN + 5),  # drained: it lingers now
        ]
    )


def test_a_turn_reads_at_most_ring_turn_packets_and_writes_what_it_decided(parts: Parts) -> None:
    """Under a flood the ring always holds more: a turn still ends after RING_TURN packets,
    with its lines written (and its held bans sent to the kernel) before the next is read."""
    assert parts.ring is not None
    ring = parts.ring
    flood = [syn(i, src=bytes([198, 19, i >> 8, i & 255])) for i in range(1, RING_TURN + 1)]
    first = "attackalert: TCP SYN/Normal scan from host: 198.19.0.1/198.19.0.1 to TCP port: 1"
    Driver(parts).run(
        [
            lambda: ring.send(*flood, syn(7)),
            check(lambda: ring.handled == RING_TURN and first in parts.lines()),
            check(lambda: ring.handled == RING_TURN + 1 and SYN_LINE.format(7) in parts.lines()),
        ]
    )


# --- the timers ---------------------------------------------------------------------------------


def test_a_watched_thread_that_stopped_ends_the_loop_at_the_next_tick(parts: Parts) -> None:
    """No thread dies silently: the notifier's and the metrics endpoint's threads are asked
    every tick; one that ended unasked ends the daemon (exit 1, restarted by its manager)."""
    alive = {"metrics": True}
    parts.pipeline.watched["metrics"] = lambda: alive["metrics"]
    steps = [
        nothing,
        lambda: parts.clock.advance(TICK_EVERY),
        check(lambda: not parts.pipeline.fatal),
    ]
    steps += [lambda: alive.update(metrics=False), nothing]  # dead, but no tick yet
    steps += [check(lambda: not parts.pipeline.fatal), lambda: parts.clock.advance(TICK_EVERY)]
    steps += [nothing, check(lambda: False)]  # the loop ends before the next turn's step
    Driver(parts).run(steps)
    assert parts.pipeline.fatal == "the metrics thread stopped"


def test_each_timer_fires_at_its_period(parts: Parts) -> None:
    host, clock, sources = parts.host, parts.clock, parts.sources
    reads = sources.reads
    steps: list[Step] = [check(lambda: host.refreshed == [])]
    for _second in range(int(NAT_EVERY)):
        steps.append(lambda: clock.advance(TICK_EVERY))
    Driver(parts).run(steps)
    assert host.refreshed.count("in_use") == NAT_EVERY // IN_USE_EVERY
    assert host.refreshed.count("addresses") == NAT_EVERY // ADDRESSES_EVERY  # no watcher
    assert host.refreshed.count("nat") == 1  # the ring is open: stealth modes
    assert sources.reads - reads == NAT_EVERY // NEVER_BLOCK_EVERY


def test_with_an_address_watcher_addresses_follow_its_events(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair()
    host = FakeHost(watcher=ours)
    parts = build(setup(tmp_path), host=host, ring=False)
    reads = parts.sources.reads

    def change(changed: bool) -> Step:
        def step() -> None:
            host.address_changed = changed
            theirs.send(b"!")

        return step

    with ours, theirs:
        steps = [change(False), change(True), *[lambda: parts.clock.advance(1.0)] * 12]
        Driver(parts).run(steps)
    assert host.refreshed.count("address event") == 2
    assert "addresses" not in host.refreshed  # no periodic re-read
    assert "nat" not in host.refreshed  # no ring: no NAT rules to follow
    # the changed addresses and the two periodic refreshes re-read the never-block set
    assert parts.sources.reads - reads == 1 + 12 // NEVER_BLOCK_EVERY


def test_a_route_changed_before_a_probe_protects_its_gateway_in_the_same_turn(
    tmp_path: Path,
) -> None:
    routes = FakeRouteWatcher()
    parts = build(setup(tmp_path), routes=routes)
    responder = attach(parts, tmp_path / "state")
    ring, sources = parts.ring, parts.sources
    assert ring is not None
    gateway = Route(2, bytes(4), 0, 254, (OTHER,))

    def route_then_probe() -> None:
        sources.hops = NextHops(routes=(gateway,))
        # A forged SYN from the new gateway and the kernel's notification, ready in one turn
        # (in this order, so that the selector would hand the ring over first).
        ring.send(syn(1, src=OTHER))
        routes.theirs.send(b"!")

    Driver(parts).run([route_then_probe, nothing])
    assert responder.bans == []
    other = ipaddress.ip_address(OTHER).compressed
    assert (
        f"attackalert: Host {other} not blocked: never-block set (gateway of the default route)"
        in parts.lines()
    )
    assert responder.protected == 1  # the worker is told: bans on it are lifted
    parts.pipeline.close()
    assert routes.closed


def test_an_ssh_peer_of_a_moment_ago_is_asked_for_before_the_ban(
    tmp_path: Path, parts: Parts
) -> None:
    responder = attach(parts, tmp_path / "state")
    assert parts.ring is not None
    parts.sources.peers = frozenset({OTHER})  # the session opened since the last refresh
    Driver(parts).run([lambda: parts.ring.send(syn(1, src=OTHER)) if parts.ring else None])
    assert responder.bans == []
    assert any("not blocked: never-block set (SSH peer)" in line for line in parts.lines())
    assert responder.protected == 1


def test_held_records_are_summarised_every_ten_seconds(tmp_path: Path, parts: Parts) -> None:
    attach(parts, tmp_path / "state")
    assert parts.ring is not None
    ring = parts.ring
    steps: list[Step] = [lambda: ring.send(*[syn(port) for port in range(1, 50)])]
    steps += [lambda: parts.clock.advance(1.0)] * int(SUMMARY_EVERY)
    Driver(parts).run(steps)
    held = parts.pipeline.statistics()["records_held"]
    assert held > 0
    summary = [line for line in parts.lines() if "repetitive records held back" in line]
    assert summary == [
        f"adminalert: {held} repetitive records held back in the last 10s "
        f"(most from {SCANNER} already blocked: {held})"
    ]


def test_the_notifiers_lines_are_logged_on_the_tick(parts: Parts) -> None:
    class Lines:
        def __init__(self) -> None:
            self.waiting = ["adminalert: WARNING: webhook failed"]

        def lines(self) -> list[str]:
            out, self.waiting = self.waiting, []
            return out

    parts.pipeline.outputs.notifier = cast(Notifier, Lines())
    Driver(parts).run([lambda: parts.clock.advance(TICK_EVERY), nothing])
    assert parts.lines().count("adminalert: WARNING: webhook failed") == 1


# --- the response worker's messages ---------------------------------------------------------


def test_the_workers_messages_reach_the_log_the_detector_and_the_never_block_set(
    tmp_path: Path, parts: Parts
) -> None:
    responder = attach(parts, tmp_path / "state")
    assert parts.ring is not None
    ring = parts.ring
    other = ipaddress.ip_address(OTHER).compressed
    Driver(parts).run(
        [
            lambda: responder.tell(
                WorkerMessage("log", "attackalert: restored"),
                WorkerMessage("restore", other),  # a ban of the previous run
                WorkerMessage("allow", networks=("198.18.0.0/30",)),
            ),
            lambda: ring.send(syn(1), syn(1, src=OTHER)),
            lambda: responder.tell(WorkerMessage("release", other)),  # its ban expired
            lambda: ring.send(syn(2, src=OTHER)),
        ]
    )
    assert "attackalert: restored" in parts.lines()
    # allowed: not banned; restored: already blocked until released, then banned again
    assert [b.address for b in responder.bans] == [other]
    assert (
        "attackalert: Host 198.18.0.1 not blocked: never-block set (allowed by operator)"
        in parts.lines()
    )
    assert parts.pipeline.protection.protects(ipaddress.ip_network("198.18.0.0/24"))
    assert not parts.pipeline.protection.protects(ipaddress.ip_network("198.18.9.0/24"))
    assert not parts.pipeline.protection.protects(ipaddress.ip_network("fd00::/64"))


def test_attach_applies_what_the_worker_restored_before_the_first_packet(
    tmp_path: Path, parts: Parts
) -> None:
    responder = FakeResponder(tmp_path / "state")
    responder.tell(WorkerMessage("log", "adminalert: 1 ban restored"))
    parts.pipeline.attach(cast(Responder, responder))
    assert "adminalert: 1 ban restored" in parts.lines()


# --- reload -------------------------------------------------------------------------------------


def test_a_reload_applies_ports_trigger_and_responses_and_reopens_the_events(
    tmp_path: Path,
) -> None:
    events = tmp_path / "events.jsonl"
    first = setup(tmp_path, 'TCP_PORTS="1,2,3"\n')
    parts = build(first, events=str(events))
    responder = attach(parts, tmp_path / "state")
    assert parts.ring is not None
    ring = parts.ring
    driver = Driver(parts)
    fresh = setup(tmp_path, 'SCAN_TRIGGER="2"\n')

    def rotate_and_reload() -> None:
        events.rename(tmp_path / "events.jsonl.1")
        driver.reloads.append(fresh)

    driver.run(
        [
            lambda: ring.send(syn(1)),
            rotate_and_reload,
            lambda: ring.send(syn(7, src=OTHER)),  # one probe: below the new trigger
        ]
    )
    assert parts.pipeline.setup is fresh
    assert len(ring.filters) == 1  # the kernel filter follows the ports
    assert responder.reloaded == [fresh.settings]
    assert f"adminalert: configuration reloaded from {fresh.config.path}" in parts.lines()
    assert [b.address for b in responder.bans] == [SCANNER]
    rotated = (tmp_path / "events.jsonl.1").read_text().splitlines()
    assert [json.loads(line)["port"] for line in rotated] == [1]
    after = [json.loads(line) for line in events.read_text().splitlines()]
    assert [(e["src"], e["port"], e["action"]) for e in after] == [("198.18.7.7", 7, "ignored")]


def test_a_reload_keeps_the_modes(tmp_path: Path, parts: Parts) -> None:
    other_modes = setup(tmp_path, modes="stcp")
    driver = Driver(parts)
    driver.reloads.append(other_modes)
    driver.run([nothing])
    assert "adminalert: WARNING: a mode change needs a restart; modes kept" in parts.lines()
    assert parts.pipeline.setup.tcp_mode is Mode.ATCP
    assert parts.pipeline.setup.settings is other_modes.settings


# --- the bound modes ----------------------------------------------------------------------------


def bound(tmp_path: Path, text: str = "") -> tuple[Parts, FakeListeners]:
    the_setup = setup(tmp_path, 'TCP_PORTS="23,79"\nPORT_BANNER="go away"\n' + text, "tcp")
    listeners = FakeListeners([(Proto.TCP, 23), (Proto.TCP, 79)])
    return build(the_setup, ring=False, listeners=listeners), listeners


def test_a_connect_is_judged_and_answered_with_the_banner_once_it_triggered(
    tmp_path: Path,
) -> None:
    parts, listeners = bound(tmp_path, 'SCAN_TRIGGER="2"\n')
    Driver(parts).run(
        [
            lambda: listeners.connect(Proto.TCP, 23),
            lambda: listeners.connect(Proto.TCP, 79),
        ]
    )
    assert [(hit.dport, banner) for hit, banner in listeners.answered] == [
        (23, None),  # below the trigger: no banner, as PortSentry
        (79, "go away"),
    ]
    assert parts.pipeline.statistics()["connects"] == 2
    assert any(
        "Connect from host: 198.18.0.1/198.18.0.1 to TCP port: 79" in line for line in parts.lines()
    )


def test_the_tick_expires_connections_and_logs_aborted_accepts(tmp_path: Path) -> None:
    parts, listeners = bound(tmp_path)
    listeners.aborted = [79]
    Driver(parts).run([lambda: parts.clock.advance(TICK_EVERY)])
    assert listeners.expired_at == [parts.clock.now]
    assert any("79" in line and "accept" in line.lower() for line in parts.lines())


def test_a_reload_with_other_ports_rebinds_the_listeners(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts, listeners = bound(tmp_path)
    fresh_listeners = FakeListeners([(Proto.TCP, 25)])
    opened: list[list[Mode]] = []

    def open_listeners(new: Setup, _log: object, modes: list[Mode]) -> Listeners:
        opened.append(modes)
        return cast(Listeners, fresh_listeners)

    monkeypatch.setattr(pipeline_module, "open_listeners", open_listeners)
    same = setup(tmp_path, 'TCP_PORTS="23,79"\n', "tcp")
    other = setup(tmp_path, 'TCP_PORTS="25"\n', "tcp")
    driver = Driver(parts)
    driver.reloads += [same, other]
    driver.run([nothing, nothing, lambda: fresh_listeners.connect(Proto.TCP, 25)])
    assert opened == [[Mode.TCP]]  # the same ports: nothing reopened
    assert listeners.closed
    assert parts.pipeline.listeners is cast(Listeners, fresh_listeners)
    assert [hit.dport for hit, _banner in fresh_listeners.answered] == [25]


def test_a_reload_whose_ports_cannot_be_bound_keeps_the_old_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts, listeners = bound(tmp_path)

    def refuse(_new: Setup, _log: object, _modes: list[Mode]) -> Listeners:
        raise StartupError("adminalert: ERROR: could not bind any TCP sockets.")

    monkeypatch.setattr(pipeline_module, "open_listeners", refuse)
    driver = Driver(parts)
    driver.reloads.append(setup(tmp_path, 'TCP_PORTS="25"\n', "tcp"))
    driver.run([nothing, lambda: listeners.connect(Proto.TCP, 23)])
    assert (
        "adminalert: ERROR: could not bind any TCP sockets. Keeping the previous ports."
        in parts.lines()
    )
    assert not listeners.closed
    assert [hit.dport for hit, _banner in listeners.answered] == [23]


def test_a_listener_handler_needs_listeners(parts: Parts) -> None:
    with pytest.raises(ValueError, match="no listeners"):
        parts.pipeline._listener_handler(socket.socket())


# --- status, metrics, statistics, close ---------------------------------------------------------


def test_close_stores_what_waits_logs_the_workers_last_words_and_closes_every_part(
    tmp_path: Path, parts: Parts
) -> None:
    responder = attach(parts, tmp_path / "state")
    assert parts.ring is not None
    ring = parts.ring
    Driver(parts).run([lambda: ring.send(syn(1))])
    responder.tell(WorkerMessage("log", "adminalert: 1 ban kept"), last=True)
    responder.tell(WorkerMessage("release", SCANNER), last=True)  # not a log line: ignored
    rows = responder.rows
    assert rows() == []
    parts.pipeline.close()
    assert [r.port for r in rows()] == [1]  # stored before the worker closed
    assert responder.closed
    assert parts.lines()[-1] == "adminalert: 1 ban kept"
    assert ring.closed
    assert parts.host.closed
    assert parts.sources.closed


# --- start --------------------------------------------------------------------------------------


class Opened:
    """``Pipeline.start``'s host view, ring and never-block set, replaced by fakes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, tracks_replies: bool = False) -> None:
        self.host = FakeHost(tracks_replies=tracks_replies)
        self.host.in_use[Proto.TCP] = InUse(frozenset({22}))
        self.conntrack: list[bool] = []
        self.rings: list[tuple[RingConfig, list[Instruction]]] = []
        self.sources = FakeSources()
        self.never_block: list[dict[str, object]] = []
        opened = self

        def host_view(_log: object, *, use_conntrack: bool) -> FakeHost:
            opened.conntrack.append(use_conntrack)
            return opened.host

        def packet_ring(config: RingConfig, program: list[Instruction]) -> FakeRing:
            opened.rings.append((config, program))
            return FakeRing()

        class ForHost:
            @staticmethod
            def for_host(**kwargs: object) -> NeverBlock:
                opened.never_block.append(kwargs)
                return NeverBlock(opened.sources)

        monkeypatch.setattr(sources_module, "HostView", host_view)
        monkeypatch.setattr(sources_module, "ProtocolRings", packet_ring)
        monkeypatch.setattr(pipeline_module, "NeverBlock", ForHost)
        # No NFLOG group of the host's is read by a unit test (the e2e tests read the lab's).
        monkeypatch.setattr(pipeline_module, "open_reader", lambda _setup, _log: None)


def test_start_opens_the_ring_for_the_stealth_modes_and_says_what_it_watches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = Opened(monkeypatch, tracks_replies=True)
    log = io.StringIO()
    the_setup = setup(tmp_path, 'ADVANCED_PORTS_TCP="2000"\nNEVER_BLOCK_SSH_PEERS="0"\n')
    started = Pipeline.start(the_setup, LogSink(log), None)
    assert opened.conntrack == [True]
    assert opened.host.refreshed == ["in_use", "nat"]
    [(config, program)] = opened.rings
    assert config == ring_config(the_setup)
    assert program == kernel_filter(the_setup)
    assert started.listeners is None
    assert opened.never_block[0]["ssh_ports"] == ()
    assert opened.never_block[0]["resolv_conf"] == f"{tmp_path}/resolv.conf"
    assert opened.sources.reads > 0  # read before the first packet
    # PortSentry's start-up lines, with the port in use the host view reported
    assert log.getvalue().splitlines() == [
        "adminalert: Advanced mode will monitor first 2000 ports",
        "adminalert: Advanced mode will manually exclude port: 113 ",
        "adminalert: Advanced mode will manually exclude port: 139 ",
        "adminalert: Advanced Stealth scan detection mode activated. Ignored TCP port: 22",
    ]
    assert started.detector.watched_ports(Proto.TCP) == [
        p for p in range(2000) if p not in (113, 139)
    ]
    opened.host.replying = True  # connection tracking is asked about would-be probes
    pkt = decode_ip(syn(1500))
    assert pkt is not None
    assert started.detector.feed(pkt, 0.0) == []
    assert started.detector.stats.replies == 1


def test_start_binds_the_bound_modes_without_a_ring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = Opened(monkeypatch)
    listeners = FakeListeners([(Proto.TCP, 23)])
    monkeypatch.setattr(
        sources_module, "open_listeners", lambda _s, _l, modes: cast(Listeners, listeners)
    )
    started = Pipeline.start(
        setup(tmp_path, 'TCP_PORTS="23"\n', "tcp"), LogSink(io.StringIO()), None
    )
    assert opened.conntrack == [False]
    assert opened.host.refreshed == ["in_use"]  # no NAT rules without a capture
    assert opened.rings == []
    assert started.ring is None
    assert started.listeners is cast(Listeners, listeners)


def test_start_lets_the_host_view_go_when_nothing_can_be_watched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = Opened(monkeypatch)

    def refuse(_setup: Setup, _log: object, _modes: list[Mode]) -> Listeners:
        raise StartupError("adminalert: ERROR: could not bind any TCP sockets.")

    monkeypatch.setattr(sources_module, "open_listeners", refuse)
    with pytest.raises(StartupError):
        Pipeline.start(setup(tmp_path, modes="tcp"), LogSink(io.StringIO()), None)
    assert opened.host.closed
    assert opened.never_block == []
