"""Stand-ins for the daemon's I/O, so that its loop runs in a unit test: no root, no network
namespace, nothing of the host's read.

- ``FakeRing``: the capture ring as a datagram socketpair the loop's selector watches; each
  datagram is one IP packet, handed on at an offset inside a bigger buffer as the ring does.
- ``FakeListeners``: the bound sockets of the classic modes, with the hits a test queues.
- ``FakeHost``: the host view (addresses, ports in use) as plain attributes.
- ``FakeResponder``: the response worker without firewall: bans and alerts are recorded,
  probe records go to a real SQLite store, messages come back through a socketpair.
- ``Clock``: monotonic time that moves only when the test says so.
- ``Driver``: runs ``Pipeline.loop`` one turn per scripted step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import ipaddress
import queue
import socket
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from portsentinel.alert.sinks import EventSink, LogSink
from portsentinel.capture.afpacket import CaptureStats
from portsentinel.capture.bpf import Instruction
from portsentinel.capture.listeners import Hit, Listeners, ListenerStats
from portsentinel.capture.rings import ProtocolRings
from portsentinel.config.schema import Settings
from portsentinel.config.setup import Setup, detector_config, load_setup
from portsentinel.daemon.control import ControlServer
from portsentinel.daemon.pipeline import Pipeline
from portsentinel.detect.detector import Detector
from portsentinel.host.addresses import AddrInfo
from portsentinel.host.neverblock import NeverBlock
from portsentinel.host.resolvconf import Resolvers, parse_resolv_conf
from portsentinel.host.routes import NextHops, RouteWatcher
from portsentinel.host.view import HostView
from portsentinel.model import Proto
from portsentinel.respond.bans import BanRequest
from portsentinel.respond.decoys import CutRequest
from portsentinel.respond.worker import Responder, WorkerMessage
from portsentinel.store.records import EventRow
from portsentinel.store.sqlite import Store
from unit.decode_frames import DST4, SRC4, TCP, ipv4, tcp

START = 1000.0  # the fake monotonic clock's first reading
WALL = 1_700_000_000.0  # wall time at START
HOST = ipaddress.ip_address(DST4)  # this host's address in every test
PAD = 64  # bytes before each packet in the fake ring's buffer


def syn(port: int, src: bytes = SRC4) -> bytes:
    """A bare SYN from ``src`` to this host's ``port``."""
    return ipv4(TCP, tcp(dport=port), src=src, dst=DST4)


class Clock:
    """Monotonic seconds that move only by ``advance``; ``wall`` keeps its offset."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now - START + WALL

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeRing:
    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._reader.setblocking(False)
        self.reads = 0  # calls of read_batch that found packets
        self.handled = 0
        self.filters: list[list[Instruction]] = []
        self.closed = False

    def send(self, *packets: bytes) -> None:
        for packet in packets:
            self._writer.send(packet)

    def fileno(self) -> int:
        return self._reader.fileno()

    def read_batch(
        self, handler: Callable[[memoryview, int, int, int], None], timeout: float, limit: int = 0
    ) -> int:
        assert timeout == 0.0  # the loop only reads what is there
        count = 0
        while limit <= 0 or count < limit:
            try:
                packet = self._reader.recv(65536)
            except BlockingIOError:
                break
            buf = memoryview(bytearray(PAD) + packet + bytearray(PAD))
            handler(buf, PAD, len(packet), 2)
            count += 1
        if count:
            self.reads += 1
        self.handled += count
        return count

    def set_filter(self, program: Sequence[Instruction]) -> None:
        self.filters.append(list(program))

    def stats(self) -> CaptureStats:
        return CaptureStats(self.handled + 2, 2, 1, self.handled, 0, 0)

    def close(self) -> None:
        self.closed = True
        self._reader.close()
        self._writer.close()


class FakeListeners:
    """Each watched port is one end of a socketpair; a test queues hits and pokes it."""

    def __init__(self, ports: Iterable[tuple[Proto, int]]) -> None:
        self._pairs = {key: socket.socketpair() for key in ports}
        self.queued: dict[int, list[Hit]] = {}
        self.answered: list[tuple[Hit, str | None]] = []
        self.aborted: list[int] = []
        self.expired_at: list[float] = []
        self.stats = ListenerStats(accepted=0, datagrams=0)
        self.closed = False

    def connect(self, proto: Proto, port: int, src: bytes = SRC4) -> None:
        """A connection (tcp) or datagram (udp) from ``src`` on ``port``, ready to be read."""
        ours, theirs = self._pairs[(proto, port)]
        self.queued.setdefault(ours.fileno(), []).append(
            Hit(proto, src, 40000, DST4, port, handle=port)
        )
        theirs.send(b"!")

    def sockets(self) -> list[socket.socket]:
        return [ours for ours, _theirs in self._pairs.values()]

    def handle(self, sock: socket.socket, now: float) -> list[Hit]:
        sock.recv(64)
        hits = self.queued.pop(sock.fileno(), [])
        self.stats = ListenerStats(accepted=self.stats.accepted + len(hits), datagrams=0)
        return hits

    def respond(self, hit: Hit, banner: str | None) -> None:
        self.answered.append((hit, banner))

    def expire(self, now: float) -> int:
        self.expired_at.append(now)
        return 0

    def take_aborted(self) -> list[int]:
        aborted, self.aborted = self.aborted, []
        return aborted

    def close(self) -> None:
        self.closed = True
        for ours, theirs in self._pairs.values():
            ours.close()
            theirs.close()


@dataclass
class InUse:
    """One protocol's ports in use, as ``host.inuse.InUseView`` shows them."""

    ports: frozenset[int] = frozenset()

    @property
    def cached(self) -> frozenset[int]:
        return self.ports

    def recheck(self, port: int) -> bool:
        return port in self.ports


@dataclass
class FakeHost:
    local: set[bytes] = field(default_factory=lambda: {DST4})
    in_use: dict[Proto, InUse] = field(default_factory=lambda: {p: InUse() for p in Proto})
    refreshed: list[str] = field(default_factory=list)
    watcher: socket.socket | None = None
    address_changed: bool = False
    tracks_replies: bool = False
    replying: bool = False  # what is_reply answers
    reply_checks: int = 0
    reply_checks_skipped: int = 0
    closed: bool = False

    def watcher_fd(self) -> int | None:
        return self.watcher.fileno() if self.watcher is not None else None

    def on_address_event(self) -> bool:
        if self.watcher is not None:
            self.watcher.recv(64)
        self.refreshed.append("address event")
        return self.address_changed

    def is_reply(self, pkt: object) -> bool:
        return self.replying

    def refresh_addresses(self) -> None:
        self.refreshed.append("addresses")

    def refresh_in_use(self) -> None:
        self.refreshed.append("in_use")

    def refresh_nat(self) -> None:
        self.refreshed.append("nat")

    def close(self) -> None:
        self.closed = True


class FakeSources:
    """The never-block set's live sources: this host's address, nothing else."""

    def __init__(self) -> None:
        self.reads = 0
        self.closed = False
        self.hops = NextHops(routes=(), routers=(), objects=())
        self.peers: frozenset[bytes] = frozenset()

    def addresses(self) -> Sequence[AddrInfo]:
        self.reads += 1
        return [AddrInfo(2, DST4, 24, 0)]

    def next_hops(self) -> NextHops:
        return self.hops

    def resolvers(self) -> Resolvers:
        return parse_resolv_conf("", "/test/resolv.conf")

    def ssh_peers(self) -> Collection[bytes]:
        return self.peers

    def close(self) -> None:
        self.closed = True


class FakeRouteWatcher:
    """The never-block set's route watcher: readable when the test pokes ``theirs``."""

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)
        self.closed = False

    def fileno(self) -> int:
        return self.ours.fileno()

    def poll(self) -> bool:
        changed = False
        with contextlib.suppress(BlockingIOError):
            while self.ours.recv(64):
                changed = True
        return changed

    def close(self) -> None:
        self.closed = True
        self.ours.close()
        self.theirs.close()


class FakeResponder:
    def __init__(self, state_dir: Path) -> None:
        self.store = Store.open(str(state_dir))
        self.bans: list[BanRequest] = []
        self.cuts: list[CutRequest] = []
        self.alerts: list[BanRequest] = []
        self.reloaded: list[Settings] = []
        self._messages: list[WorkerMessage] = []
        self._last: list[WorkerMessage] = []
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self.started = self.closed = False
        self.bans_active = self.bans_added = 0
        self.alerts_dropped = self.rows_dropped = 0
        self.notes_ssh_peers = False
        self.names_missed = (0, 0)
        self.ingress_drops: tuple[int, int] | None = None
        self.quiet_counts: queue.SimpleQueue[dict[tuple[bytes, int], int]] = queue.SimpleQueue()
        self.turns_ended = 0
        self.protected = 0  # times the loop said the never-block set changed
        self.store_outage: tuple[float, str] | None = None
        self.first_bans: dict[str, int] = {}
        self.holds = False  # KERNEL_HOLD: the loop releases what it does not ban
        self.released: list[str] = []
        self.holding: list[object] = []  # the hold plans given with each reload

    def tell(self, *messages: WorkerMessage, last: bool = False) -> None:
        """What the worker tells the loop (``last``: only when it is closed)."""
        if last:
            self._last.extend(messages)
            return
        self._messages.extend(messages)
        self._writer.send(b"!")

    def start(self) -> None:
        self.started = True

    def fileno(self) -> int:
        return self._reader.fileno()

    def ban(
        self, request: BanRequest, evidence: Callable[[], Mapping[str, object]] | None = None
    ) -> None:
        """As the real one: the evidence goes with the request (gathered after the element)."""
        if evidence is not None:
            request = dataclasses.replace(request, evidence=evidence())
        self.bans.append(request)

    def cut(self, request: CutRequest) -> None:
        self.cuts.append(request)

    def protect(self) -> None:
        self.protected += 1

    def alert(self, request: BanRequest) -> None:
        self.alerts.append(request)

    def end_turn(self) -> None:
        self.turns_ended += 1

    def events(self, rows: Sequence[EventRow]) -> None:
        self.store.add_events(rows)

    def release(self, address: str) -> None:
        self.released.append(address)

    def reload(self, settings: Settings, hold: object = None) -> None:
        self.reloaded.append(settings)
        self.holding.append(hold)

    def messages(self) -> list[WorkerMessage]:
        with contextlib.suppress(BlockingIOError):
            self._reader.recv(4096)
        messages, self._messages = self._messages, []
        return messages

    def health(self) -> dict[str, bool]:
        return {"nftables": True}

    def close(self, timeout: float = 30.0) -> list[WorkerMessage]:
        self.closed = True
        self._reader.close()
        self._writer.close()
        return self._last

    def rows(self) -> list[EventRow]:
        return self.store.events_between(0.0, 1e12)


def write_config(tmp_path: Path, text: str = "") -> str:
    """A configuration whose every host path is under ``tmp_path``, plus ``text``."""
    conf = tmp_path / "portsentinel.conf"
    conf.write_text(
        f'DEFAULTS_FILE="{tmp_path}/default-portsentry"\n'
        f'IGNORE_FILE=""\n'
        f'RESOLV_CONF="{tmp_path}/resolv.conf"\n'
        f'HOSTS_DENY_FILE="{tmp_path}/hosts.deny"\n'
        f'HISTORY_FILE="{tmp_path}/history"\n'
        f'BLOCKED_FILE="{tmp_path}/blocked"\n' + text
    )
    return str(conf)


def setup(tmp_path: Path, text: str = "", modes: str = "atcp") -> Setup:
    return load_setup(write_config(tmp_path, text), modes)


@dataclass
class Parts:
    """A pipeline on fakes, and the fakes, for a test to drive and inspect."""

    pipeline: Pipeline
    clock: Clock
    log: io.StringIO
    host: FakeHost
    ring: FakeRing | None
    listeners: FakeListeners | None
    sources: FakeSources

    def lines(self) -> list[str]:
        return self.log.getvalue().splitlines()


def build(
    the_setup: Setup,
    *,
    ring: bool = True,
    listeners: FakeListeners | None = None,
    events: str | EventSink | None = None,
    host: FakeHost | None = None,
    log: LogSink | None = None,
    routes: FakeRouteWatcher | None = None,
) -> Parts:
    """A pipeline as ``Pipeline.start`` wires it, on fakes (``log``: else one to a string)."""
    clock = Clock()
    out = io.StringIO()
    if log is None:
        log = LogSink(out)
    sink = EventSink(events) if isinstance(events, str) else events
    fake_host = host if host is not None else FakeHost()
    detector = Detector(
        detector_config(the_setup),
        ignore=the_setup.ignore,
        local=fake_host.local,
        in_use_tcp=fake_host.in_use[Proto.TCP].cached,
        in_use_udp=fake_host.in_use[Proto.UDP].cached,
    )
    sources = FakeSources()
    never_block = NeverBlock(
        sources, ignore=the_setup.ignore, watcher=cast(RouteWatcher | None, routes)
    )
    never_block.refresh()
    fake_ring = FakeRing() if ring else None
    pipeline = Pipeline(
        the_setup,
        log,
        sink,
        host=cast(HostView, fake_host),
        detector=detector,
        ring=cast(ProtocolRings, fake_ring),
        listeners=cast(Listeners, listeners),
        never_block=never_block,
        clock=clock,
        wall_clock=clock.wall,
    )
    return Parts(pipeline, clock, out, fake_host, fake_ring, listeners, sources)


def attach(parts: Parts, state_dir: Path) -> FakeResponder:
    responder = FakeResponder(state_dir)
    parts.pipeline.attach(cast(Responder, responder))
    return responder


class Driver:
    """Runs ``parts.pipeline.loop`` with one loop turn after each step; the wake-up socket is
    poked after every step so that no turn waits for the selector's timeout."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self._wake_r, self._wake_w = socket.socketpair()
        self.reloads: list[Setup] = []

    def run(
        self, steps: Sequence[Callable[[], None]], control: ControlServer | None = None
    ) -> None:
        pending = list(steps)

        def stopping() -> bool:
            if not pending:
                return True
            pending.pop(0)()
            self._wake_w.send(b"!")
            return False

        def reloading() -> Setup | None:
            return self.reloads.pop(0) if self.reloads else None

        try:
            self.parts.pipeline.loop(self._wake_r, stopping, reloading, control)
        finally:
            self._wake_r.close()
            self._wake_w.close()
