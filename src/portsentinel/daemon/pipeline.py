"""The detection loop: capture -> decode -> detect -> outputs, single-threaded, and its timers.

Every source is a file descriptor in one selector: the capture ring (stealth modes), the bound
sockets (classic modes), the address and route watchers (served first in a turn), the response
worker's messages, the control socket and a wake-up socket for signals. Timers refresh what the
detector knows about the host; ``protection.Protection`` keeps the never-block set.
What the detector decides goes to ``outputs.Outputs`` (log lines, events, store rows,
responses). The process around it (lock, signals, start and stop) is ``service.Daemon``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import selectors
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from portsentinel.alert.portsentry_log import accept_failed_line
from portsentinel.alert.sinks import EventSink, LogSink
from portsentinel.capture.listeners import Listeners
from portsentinel.capture.rings import ProtocolRings
from portsentinel.config.setup import Setup, detector_config
from portsentinel.daemon.control import ControlServer
from portsentinel.daemon.outputs import Outputs
from portsentinel.daemon.protection import Protection
from portsentinel.daemon.reports import Reports
from portsentinel.daemon.sdnotify import ServiceManager
from portsentinel.daemon.sources import StartupError, kernel_filter, open_listeners, open_parts
from portsentinel.daemon.unsolicited import UnsolicitedSource, open_reader
from portsentinel.decode import decode_ip
from portsentinel.detect.detector import Detector
from portsentinel.detect.fingerprint import ScannerMarks, scanner_of
from portsentinel.errors import DecodeError
from portsentinel.host.neverblock import NeverBlock
from portsentinel.host.view import HostView
from portsentinel.model import Action, Proto
from portsentinel.ratelimit import SUMMARY_EVERY
from portsentinel.respond.hold import hold_plan
from portsentinel.respond.worker import Responder, WorkerMessage

if TYPE_CHECKING:
    from portsentinel.fleet.link import FleetLink

# Timer periods, in seconds.
TICK_EVERY = 1.0  # idle-source expiry, pending-connection expiry
IN_USE_EVERY = 2.0  # full re-read of the socket table (misses re-check the kernel anyway)
NAT_EVERY = 30.0  # NAT rules (runs nft / iptables-save)
ADDRESSES_EVERY = 10.0  # only when address changes cannot be followed
NEVER_BLOCK_EVERY = 5.0  # the safety net: routes and addresses follow their watchers
# While the ring brings only repeats (probes from sources already responded to, nothing else
# that counts), it is read at most this often instead of as each block closes: one wake-up
# per 10 ms, not per ms (shared/reference/capture-perf.md: retire timeout <= 10 ms). A new
# source's first probe arriving meanwhile waits up to this long more.
RING_LINGER = 0.010
RING_TURN = 256  # frames a turn reads: then held bans go out (a 16 MiB ring's lap took ~2 s)

Timer = tuple[float, float, Callable[[], None]]  # next run, period, what


class Pipeline(Reports):
    """The running parts, all present: built by ``start``, driven by ``loop``."""

    def __init__(
        self,
        setup: Setup,
        log: LogSink,
        events: EventSink | None,
        *,
        host: HostView,
        detector: Detector,
        ring: ProtocolRings | None,
        listeners: Listeners | None,
        never_block: NeverBlock,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` (monotonic seconds) times windows and timers, ``wall_clock`` the records;
        both are arguments so that the loop can be driven with a clock a test controls."""
        self.setup = setup
        self.log = log
        self.events = events
        self.host = host
        self.detector = detector
        self.ring = ring
        self.listeners = listeners
        self.unsolicited: UnsolicitedSource | None = None  # ACK_PROBES (``start``)
        self.decode_errors = 0
        self._selector: selectors.BaseSelector | None = None
        self.responder: Responder | None = None
        self.fleet: FleetLink | None = None  # the fleet link's thread (service.py starts it)
        self.dry_run = False  # run --dry-run: the responder records would-be bans only
        self.never_block = never_block
        self.protection = Protection(never_block, detector)
        self._clock = clock
        self._wall_clock = wall_clock
        self._ring_back_at: float | None = None  # the ring lingers out of the selector
        self.fatal: str | None = None  # why the loop must end although no stop was asked
        # Threads beside the loop (notifier, metrics), asked every tick: one that ended unasked
        # ends the daemon (exit 1). The response worker says so itself ("fatal").
        self.watched: dict[str, Callable[[], bool]] = {}
        # The service manager (systemd's $NOTIFY_SOCKET): the loop's own timer feeds its
        # watchdog, so a loop that is stuck stops feeding it and is restarted.
        self.manager = ServiceManager(None)
        self.outputs = Outputs(log, events, detector, never_block)
        self.outputs.set_words(setup.settings, dry_run=False)
        self._next_summary = clock() + SUMMARY_EVERY
        self._banner = setup.settings.port_banner or None
        self._now = 0.0
        self._marks = ScannerMarks()  # which tool each source's probes look made by
        self._set_clock()
        for proto, view in host.in_use.items():  # the ports in use at start: RECENTLY_IN_USE
            if setup.invocation.service_check:  # (2.0's -S watches them all)
                detector.note_in_use(proto, view.cached, self._now)

    @classmethod
    def start(cls, setup: Setup, log: LogSink, events: EventSink | None) -> Pipeline:
        """Open every source, log PortSentry's start-up lines; StartupError if nothing works."""
        host, detector, ring, listeners = open_parts(setup, log)
        s = setup.settings
        never_block = NeverBlock.for_host(
            resolv_conf=s.resolv_conf,
            ssh_ports=s.ssh_ports if s.never_block_ssh_peers else (),
            ignore=setup.ignore,
            warn=lambda w: log.line(f"adminalert: WARNING: never-block set: {w}"),
            resolved_conf=s.resolved_conf,
            watch=True,
        )
        never_block.refresh()
        pipeline = cls(
            setup,
            log,
            events,
            host=host,
            detector=detector,
            ring=ring,
            listeners=listeners,
            never_block=never_block,
        )
        reader = open_reader(setup, log) if ring is not None else None
        if reader is not None:
            pipeline.unsolicited = UnsolicitedSource(
                reader, detector, pipeline.outputs.emit, lambda: pipeline._now, host.knows_flow
            )
        return pipeline

    def attach(self, responder: Responder) -> None:
        """Responses on: restore the previous run's bans before the first packet is read."""
        responder.start()
        self.responder = self.outputs.responder = self.protection.responder = responder
        if responder.notes_ssh_peers:  # a refresh begun after the chain: its set is usable
            self.protection.refresh()
        self._on_messages()

    def _on_messages(self) -> None:
        responder = self.responder
        if responder is None:
            return
        for message in responder.messages():
            self._apply_message(message)

    def _apply_message(self, message: WorkerMessage) -> None:
        if message.kind == "log":
            self.log.line(message.text)
        elif message.kind == "release":
            src = ipaddress.ip_address(message.text).packed
            self.detector.release(src)
            self.outputs.unquiet(src)
        elif message.kind == "restore":
            self.detector.restore(
                ipaddress.ip_address(message.text).packed, Proto.TCP, Action.BLOCK
            )
        elif message.kind == "allow":
            self.protection.set_allow(message.networks)
        elif message.kind == "fatal":  # no more bans can be made: stop, to be restarted
            self.fatal = message.text

    # --- the loop ---------------------------------------------------------------------------

    def loop(
        self,
        wake: socket.socket,
        stopping: Callable[[], bool],
        reloading: Callable[[], Setup | None] = lambda: None,
        control: ControlServer | None = None,
    ) -> None:
        selector = self._selector = selectors.DefaultSelector()
        if control is not None:
            control.register(selector)
        wake.setblocking(False)
        selector.register(wake, selectors.EVENT_READ, lambda: _drain(wake))
        if self.ring is not None:
            selector.register(self.ring.fileno(), selectors.EVENT_READ, self._on_ring)
        if self.unsolicited is not None:
            selector.register(self.unsolicited.fileno(), selectors.EVENT_READ,
                              self.unsolicited.on_ready)  # fmt: skip
        if self.listeners is not None:
            for sock in self.listeners.sockets():
                selector.register(sock, selectors.EVENT_READ, self._listener_handler(sock))
        watcher, routes = self.host.watcher_fd(), self.protection.fileno()
        if watcher is not None:
            selector.register(watcher, selectors.EVENT_READ, self._on_address_event)
        if routes is not None:
            selector.register(routes, selectors.EVENT_READ, self.protection.on_event)
        first = {watcher, routes} - {None}  # a change read before a probe of the same turn
        if self.responder is not None:
            selector.register(self.responder.fileno(), selectors.EVENT_READ, self._on_messages)
        timers = self._timers(watching=watcher is not None)
        if control is not None:
            timers["control"] = (self._clock(), TICK_EVERY, lambda: control.expire(self._now))
        self.log.batch(True)  # written once a turn, by outputs.flush
        try:
            while not stopping() and self.fatal is None:
                due = min(at for at, _every, _fn in timers.values())
                back = self._ring_back_at
                if back is not None:
                    due = min(due, back)
                ready = selector.select(max(0.0, min(due - self._clock(), 1.0)))
                for key, _mask in sorted(ready, key=lambda item: item[0].fd not in first):
                    self._set_clock()
                    key.data()
                self._set_clock()
                if back is not None and self._now >= back:
                    self._ring_back()
                fresh = reloading()
                if fresh is not None:
                    self.manager.send("RELOADING=1")
                    self.reload(fresh)
                    self.manager.ready()
                _run_timers(timers, self._now)
                self.outputs.flush()
        finally:
            self.log.batch(False)
            selector.close()

    def reload(self, setup: Setup) -> None:
        """Apply a re-read configuration without losing evidence, bans or sockets that stay.

        The modes stay as started (a mode change needs a restart: other sockets); ports,
        trigger, levels, caps, ignore list, banner and the response settings change at once.
        """
        old = self.setup
        if (setup.tcp_mode, setup.udp_mode) != (old.tcp_mode, old.udp_mode):
            self.log.line("adminalert: WARNING: a mode change needs a restart; modes kept")
            setup = dataclasses.replace(setup, tcp_mode=old.tcp_mode, udp_mode=old.udp_mode)
        self.setup = setup
        self.outputs.set_words(setup.settings, dry_run=self.dry_run)
        self.detector.reconfigure(detector_config(setup))
        self.detector.set_ignore(setup.ignore)
        self.protection.set_ignore(setup.ignore)
        if self.ring is not None:
            self.ring.set_filter(kernel_filter(setup))
        self._banner = setup.settings.port_banner or None
        self._reopen_listeners(old, setup)
        if self.responder is not None:
            self.responder.reload(setup.settings, hold_plan(setup))
        if self.events is not None:
            self.events.reopen()
        source = setup.config.path or "embedded defaults"
        self.log.line(f"adminalert: configuration reloaded from {source}")

    def _reopen_listeners(self, old: Setup, new: Setup) -> None:
        modes = [m for m in (new.tcp_mode, new.udp_mode) if m is not None and m.bound]
        if not modes:
            return
        s0, s1 = old.settings, new.settings
        if (s0.tcp_ports, s0.udp_ports) == (s1.tcp_ports, s1.udp_ports):
            return
        try:
            fresh = open_listeners(new, self.log, modes)
        except StartupError as exc:
            self.log.line(f"{exc} Keeping the previous ports.")
            return
        selector = self._selector
        if self.listeners is not None:
            for sock in self.listeners.sockets():
                if selector is not None:
                    with contextlib.suppress(KeyError, ValueError):
                        selector.unregister(sock)
            self.listeners.close()
        self.listeners = fresh
        if fresh is not None and selector is not None:
            for sock in fresh.sockets():
                selector.register(sock, selectors.EVENT_READ, self._listener_handler(sock))

    def _timers(self, *, watching: bool) -> dict[str, Timer]:
        now = self._clock()
        timers: dict[str, Timer] = {
            "tick": (now + TICK_EVERY, TICK_EVERY, self._on_tick),
            "in_use": (now + IN_USE_EVERY, IN_USE_EVERY, self._refresh_in_use),
            "never_block": (now + NEVER_BLOCK_EVERY, NEVER_BLOCK_EVERY, self.protection.refresh),
        }
        if self.ring is not None:
            timers["nat"] = (now + NAT_EVERY, NAT_EVERY, self.host.refresh_nat)
        every = self.manager.feed_every
        if every is not None:
            timers["watchdog"] = (now + every, every, self._feed_watchdog)
        if not watching:
            timers["addresses"] = (
                now + ADDRESSES_EVERY,
                ADDRESSES_EVERY,
                self.host.refresh_addresses,
            )
        return timers

    def _feed_watchdog(self) -> None:
        self.manager.watchdog()

    def _refresh_in_use(self) -> None:
        """Re-read the ports in use; the detector remembers them for RECENTLY_IN_USE (those
        a re-check found since the last read too, though they may have closed already)."""
        before = {proto: set(view.cached) for proto, view in self.host.in_use.items()}
        self.host.refresh_in_use()
        if not self.setup.invocation.service_check:
            return  # 2.0's -S: ports in use are targets, and so are those used lately
        now = self._clock()
        for proto, view in self.host.in_use.items():
            self.detector.note_in_use(proto, before[proto] | view.cached, now)

    def _set_clock(self) -> None:
        now = self._now = self.outputs.now = self._clock()
        self.outputs.wall_offset = self._wall_clock() - now

    def _on_ring(self) -> None:
        selector = self._selector
        lingers = self._read_ring()
        if lingers is not None and selector is not None and self.ring is not None:
            selector.unregister(self.ring.fileno())  # only repeats: linger (see RING_LINGER)
            self._ring_back_at = self._now + lingers

    def _ring_back(self) -> None:
        """The linger is over: read what came meanwhile; while it is still only repeats,
        linger on without asking the selector, else watch the ring again."""
        self._ring_back_at = None
        lingers = self._read_ring()
        if lingers is not None:
            self._ring_back_at = self._now + lingers
        elif self.ring is not None and self._selector is not None:
            self._selector.register(self.ring.fileno(), selectors.EVENT_READ, self._on_ring)

    def _read_ring(self) -> float | None:
        """Hand on what the ring holds (one turn's worth). When it brought packets and all
        were repeats: how long to linger before the next read (none when the turn ended with
        frames still waiting: a flood of repeats is read at full speed); else None."""
        ring = self.ring
        if ring is None:
            return None
        fresh = self.detector.fresh_probes
        before = fresh()
        handled = ring.read_batch(self._on_packet, 0.0, RING_TURN)
        if not handled or fresh() != before:
            return None
        return 0.0 if handled >= RING_TURN else RING_LINGER

    def _on_packet(self, ring: memoryview, start: int, length: int, _ifindex: int) -> None:
        """Per packet, decoded in place: keep it lean (the kernel filter already dropped
        ordinary traffic)."""
        try:
            pkt = decode_ip(ring, start, length)
        except DecodeError:
            self.decode_errors += 1
            return
        if pkt is not None:
            decisions = self.detector.feed(pkt, self._now)
            if decisions:
                tool = scanner_of(ring, start)  # only for what became a decision
                for decision in decisions:
                    decision.scanner = self._marks.tell(decision.src, tool)
                self.outputs.emit(decisions)

    def _listener_handler(self, sock: socket.socket) -> Callable[[], None]:
        listeners = self.listeners
        if listeners is None:
            raise ValueError("no listeners")

        def handle() -> None:
            for hit in listeners.handle(sock, self._now):
                decisions = self.detector.feed_connect(
                    hit.proto, hit.src, hit.dst, hit.dport, self._now
                )
                self.outputs.emit(decisions)
                # PortSentry sends the banner only once the trigger has fired.
                fired = any(d.action is not Action.IGNORED for d in decisions)
                listeners.respond(hit, self._banner if fired else None)

        return handle

    def _on_address_event(self) -> None:
        if self.host.on_address_event():
            self.protection.refresh()

    def _on_tick(self) -> None:
        for name, alive in self.watched.items():
            if self.fatal is None and not alive():
                self.fatal = f"the {name} thread stopped"
        self.outputs.emit(self.detector.tick(self._now))
        for part in (self.outputs.notifier, self.fleet):
            if part is not None:
                for line in part.lines():
                    self.log.line(line)
        if self._now >= self._next_summary:
            self._next_summary = self._now + SUMMARY_EVERY
            self.outputs.summarise()
        if self.listeners is not None:
            self.listeners.expire(self._now)
            for port in self.listeners.take_aborted():
                self.log.line(accept_failed_line(port))

    def close(self) -> None:
        if self.responder is not None:
            self.outputs.flush(everything=True)
            for message in self.responder.close():  # it reads the kernel's counts last
                if message.kind == "log":
                    self.log.line(message.text)
        self.outputs.summarise()  # what was held back or dropped since the last summary
        parts = (self.ring, self.unsolicited, self.listeners, self.host, self.never_block,
                 self.outputs.quiet)  # fmt: skip
        for part in (*parts, self.protection):
            if part is not None:
                with contextlib.suppress(OSError):
                    part.close()


# --- helpers ----------------------------------------------------------------------------------


def _run_timers(timers: dict[str, Timer], now: float) -> None:
    for name, (at, every, fn) in list(timers.items()):
        if now >= at:
            timers[name] = (now + every, every, fn)
            fn()


def _drain(sock: socket.socket) -> None:
    """Empty the signal wake-up socket; the handlers already set the flags."""
    with contextlib.suppress(BlockingIOError):
        while sock.recv(64):
            pass
