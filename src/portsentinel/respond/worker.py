"""Responses off the detection path: one worker thread applies, expires and repairs bans.

The detection loop must never wait for a firewall command, a KILL_RUN_CMD (up to its
timeout), a reverse-DNS lookup or the disk. It hands triggered decisions and event rows to
this worker through a queue and goes on; the worker owns the store connection and the
backends, and tells it back through a second queue and a wake-up socket (log lines to print,
sources whose response ended, bans the CLI changed). Start-up waits for the worker to have
restored the previous run's bans. With RESOLVE_HOST a ban's history lines go to ``names`` (a
thread that writes them once the name is known or 2 s passed). When the never-block set
changes (``protect``) the worker lifts the bans on addresses it now holds; at start-up those
are lifted, not restored. A dry run records would-be bans in an offline store.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import NamedTuple

from portsentinel.alert.notify import ban_info
from portsentinel.block.hold import HoldPlan, HoldTable
from portsentinel.block.libnft import select_runner
from portsentinel.block.runner import Runner
from portsentinel.block.table import ConntrackChain
from portsentinel.config.schema import Settings
from portsentinel.errors import PortSentinelError
from portsentinel.host.resolver import Resolver
from portsentinel.respond.backends import Backends, Network, files_for
from portsentinel.respond.bans import BanManager, BanRequest
from portsentinel.respond.decoys import CutRequest, cut_ban
from portsentinel.respond.first_ban import Evidence, FirstBan, eligible, install_conntrack
from portsentinel.respond.hold import HoldKeeper, Releases
from portsentinel.respond.names import Names
from portsentinel.respond.protected import Entries, lift_protected
from portsentinel.respond.retry import StoreRetry
from portsentinel.store.records import DamagedRowError, EventRow
from portsentinel.store.sqlite import Store

EXPIRE_EVERY, REPAIR_EVERY = 1.0, 10.0
POLL_EVERY = 1.0  # notices bans and allow entries changed by the CLI
PURGE_EVERY, ROLL_EVERY, ROLL_IDLE = 3600.0, 2.0, 4096  # a fold waits while rows queue up
START_TIMEOUT = 120.0
MAX_PENDING_ALERTS = 2_000  # alerts waiting for the worker before new ones are dropped
MAX_PENDING_ROWS = 20_000  # probe records waiting for the store before new ones are dropped
BAN_BATCH = 4096  # bans waiting in the queue that the worker applies in one go


@dataclass(frozen=True)
class Alert:
    request: BanRequest  # a BLOCK_x=0 trigger: only the history line


class WorkerMessage(NamedTuple):  # what the worker tells the detection loop (a burst: one a ban)
    kind: str  # "log" | "release" | "restore" | "allow" | "fatal"
    text: str = ""
    networks: tuple[str, ...] = ()


_STOP, _PROTECT = object(), object()  # stop; the never-block set changed


@dataclass(frozen=True)
class _HoldChange:  # KERNEL_HOLD's plan changed with a reload
    plan: HoldPlan | None


class Responder:
    def __init__(
        self,
        settings: Settings,
        state_dir: str,
        *,
        protected: Callable[[Network], bool] | None = None,
        on_ban: Callable[[str, Mapping[str, object] | None], None] | None = None,
        protection: Entries | None = None,
        conntrack: bool = False,
        hold: HoldPlan | None = None,
        dry_run: bool = False,
    ) -> None:
        """``protected``: does a network hold a never-block address (for IPv6 prefix bans);
        ``on_ban(address, ban info or None)`` is called from the worker after each attempt;
        ``protection``: the never-block set's entries now (asked from the worker's thread),
        whose addresses' bans are lifted at start-up and after each ``protect``;
        ``conntrack``: the detector asks conntrack about replies, so the worker installs the
        table's tracking chain at start and repairs it with the bans (``block/table.py``);
        ``hold``: KERNEL_HOLD's plan (``respond/hold.py``): the worker keeps the hold chain,
        the loop releases the sources it does not ban; ``dry_run``: an offline store, bans
        recorded with the ``dry_run`` backend, no kernel write and no file written."""
        self._dry_run = dry_run
        self.settings = settings
        self._conntrack = conntrack
        self._chain: ConntrackChain | None = None
        self._keeper: HoldKeeper | None = None  # KERNEL_HOLD's chain (worker thread only)
        self._protected = protected
        self._protection = protection
        self._on_ban = on_ban
        self.bans_added = 0
        self._health: dict[str, bool] = {}
        self.ingress_drops: tuple[int, int] | None = None  # set by the worker (block/ingress.py)
        self.quiet_counts: queue.SimpleQueue[dict[tuple[bytes, int], int]] = queue.SimpleQueue()
        self.state_dir = state_dir
        self._jobs: queue.Queue[object] = queue.Queue()
        self._messages: queue.SimpleQueue[WorkerMessage] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # A wake-up byte is on its way and the loop has not read the messages since: a burst's
        # thousands of log lines cost one byte, not a system call each. (Set by the worker,
        # cleared by the loop before it reads; each step is atomic under the GIL.)
        self._woken = False
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="responder", daemon=True)
        self._active: set[str] = set()
        self._protect_due = False
        self._allowed: tuple[str, ...] = ()
        self._data_version = -1
        # Backlog bounds for what may wait: alerts (BLOCK_x=0 has no ban budget, so a forged
        # flood brings one per source) and probe records. Each count is written by one thread
        # only (queued: the loop; done: the worker), so no lock is needed.
        self._alerts_queued = self._alerts_done = 0
        self._rows_queued = self._rows_done = 0
        self.alerts_dropped = 0
        self.rows_dropped = 0
        self._retry = StoreRetry(self._log, lambda: self._first is not None)
        self._names: Names | None = None  # RESOLVE_HOST: the history lines' own writer
        first = eligible(settings) and not dry_run  # the loop's own way to the kernel for bans
        self._first: FirstBan | None = FirstBan(settings, self._log) if first else None
        self._hold = hold  # the plan the worker applies (replaced by ``reload``)
        self._releases = Releases(hold.seconds, self._log) if hold is not None else None
        # The table's chain notes SSH peers in its sets (``block/table.py``): set once by the
        # worker, read by the loop's never-block check.
        self.notes_ssh_peers = False

    # --- detection-loop side ----------------------------------------------------------------

    def start(self) -> None:
        """Start the worker and wait until it restored the bans of the previous run."""
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise PortSentinelError("the response worker did not start in time")
        if self._failure is not None:
            raise PortSentinelError(f"cannot start responses: {self._failure}")

    def fileno(self) -> int:
        return self._wake_r.fileno()

    @property
    def bans_active(self) -> int:
        return len(self._active)

    def ban(self, request: BanRequest, evidence: Evidence | None = None) -> None:
        """A triggered source: its nftables element goes to the kernel from here when the
        settings allow (``first_ban``), the rest to the worker. ``evidence``: the request's
        evidence, gathered once the element is in the kernel (else at once)."""
        if self._first is not None:
            self._first.take(request, self._jobs.put, evidence)
        else:
            self._jobs.put(request if evidence is None else replace(request, evidence=evidence()))

    def end_turn(self) -> None:
        """Once a detection-loop turn: first bans held during the turn go to the kernel, and
        the turn's releases from KERNEL_HOLD."""
        if self._first is not None:
            self._first.end_turn(self._jobs.put)
        if self._releases is not None:
            self._releases.end_turn()

    @property
    def holds(self) -> bool:
        """Does KERNEL_HOLD hold sources the loop must release when it does not ban them?"""
        return self._releases is not None

    def release(self, address: str) -> None:
        """KERNEL_HOLD: the loop decided not to ban ``address``; the kernel lets it go."""
        if self._releases is not None:
            self._releases.add(address)

    @property
    def names_missed(self) -> tuple[int, int]:
        """History lines written with the address, not the name: (not looked up, late)."""
        names = self._names
        return (names.skipped, names.late) if names is not None else (0, 0)

    @property
    def first_bans(self) -> dict[str, int]:
        """Bans the detection loop sent to the kernel itself, and those it could not."""
        first = self._first
        return {"applied": first.applied, "refused": first.refused} if first else {}

    def cut(self, request: CutRequest) -> None:
        """A ban made before its source showed in a decoy group: cut (``respond/decoys``)."""
        self._jobs.put(request)

    def protect(self) -> None:
        """The never-block set changed: the worker lifts the bans on addresses it now holds."""
        self._jobs.put(_PROTECT)

    def alert(self, request: BanRequest) -> None:
        """Write the history/blocked lines of an alert; dropped (counted) while the worker is
        MAX_PENDING_ALERTS behind: bans are never dropped, and have a budget of their own."""
        if self._alerts_queued - self._alerts_done >= MAX_PENDING_ALERTS:
            self.alerts_dropped += 1
            return
        self._alerts_queued += 1
        self._jobs.put(Alert(request))

    def reload(self, settings: Settings, hold: HoldPlan | None = None) -> None:
        """New response settings (durations, backends, commands) for the next bans, and
        KERNEL_HOLD's new plan (the chain is built anew when it changed)."""
        self.end_turn()
        if self._first is not None:
            self._first.reconfigure(settings)
        elif eligible(settings) and not self._dry_run:
            self._first = FirstBan(settings, self._log)
        if hold != self._hold:
            if self._releases is not None:
                self._releases.close()
            self._releases = Releases(hold.seconds, self._log) if hold is not None else None
            self._jobs.put(_HoldChange(hold))
        self._hold = hold
        self._jobs.put(settings)

    def events(self, rows: Sequence[EventRow]) -> None:
        """Probe records for the store; dropped (counted) while MAX_PENDING_ROWS wait."""
        if not rows:
            return
        if self._rows_queued - self._rows_done >= MAX_PENDING_ROWS:
            self.rows_dropped += len(rows)
            return
        self._rows_queued += len(rows)
        self._jobs.put(tuple(rows))

    def messages(self) -> list[WorkerMessage]:
        """Everything the worker told since the last call (never blocks)."""
        self._woken = False  # before the queue is read: a message put later wakes again
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        out = []
        while True:
            try:
                out.append(self._messages.get_nowait())
            except queue.Empty:
                return out

    def close(self, timeout: float = 30.0) -> list[WorkerMessage]:
        """Finish the queued work (bounded by ``timeout``) and stop; the last messages."""
        self.end_turn()
        if self._first is not None:
            self._first.close()
        if self._releases is not None:
            self._releases.close()
        self._retry.closing.set()
        if self._thread.is_alive():
            self._jobs.put(_STOP)
            self._thread.join(timeout)
        last = self.messages()
        self._wake_r.close()
        self._wake_w.close()
        return last

    # --- worker side ------------------------------------------------------------------------
    def _tell(self, message: WorkerMessage) -> None:
        self._messages.put(message)
        if self._woken:
            return
        self._woken = True
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"!")

    def _log(self, line: str) -> None:  # a log line for the loop to write
        self._tell(WorkerMessage("log", line))

    def _run(self) -> None:
        try:
            store = Store.open(self.state_dir, offline=self._dry_run)
        except PortSentinelError as exc:
            self._failure = exc
            self._ready.set()
            return
        s = self.settings
        resolver = Resolver() if s.resolve_host else None
        names = self._names = Names(resolver, self._log) if resolver is not None else None
        files = None if self._dry_run else files_for(s)
        backends = Backends(s)
        manager = BanManager(s, store, backends, log=self._log, files=files, names=names,
                             protected=self._protected, dry_run=self._dry_run)  # fmt: skip
        try:
            self._startup(manager, store)
            self._ready.set()
            self._serve(manager, store)
        except BaseException as exc:  # the worker must report, never die silently
            self._failure = exc
            self._tell(WorkerMessage("fatal", f"the response worker stopped: {exc}"))
            self._ready.set()
        finally:
            if self._keeper is not None:
                self._keeper.stop()
            if self._chain is not None:
                self._chain.close()
            backends.stop()
            if names is not None:
                names.close()  # what waits for a name is written now, with the address
            if resolver is not None:
                resolver.close()
            store.close()

    def _startup(self, manager: BanManager, store: Store) -> None:
        if self._conntrack and not self._dry_run:
            self._track_connections()
        now = time.time()
        restored = manager.restore(now, self._protection() if self._protection else ())
        for record in restored:
            self._active.add(record.address)
            self._tell(WorkerMessage("restore", record.address))
        if restored:
            self._log(f"adminalert: {len(restored)} bans restored from the state store")
        self._sync_allowed(store)
        self._data_version = store.data_version()
        self._hold_with(self._hold)

    def _hold_with(self, plan: HoldPlan | None) -> None:
        """KERNEL_HOLD's chain as ``plan`` says: built, rebuilt or removed."""
        if self._keeper is not None:
            self._keeper.stop()
            self._keeper = None
        if plan is not None:
            self._keeper = HoldKeeper(HoldTable(select_runner(Runner()), plan), self._log)
            self._keeper.start(self._protection() if self._protection else ())

    def _track_connections(self) -> None:
        self._chain = install_conntrack(self.settings, self._log)  # repaired with the bans
        self.notes_ssh_peers = self._chain is not None and bool(self._chain.ssh_ports)

    def _repair(self, manager: BanManager, now: float) -> None:
        if self._dry_run:  # nothing applied, nothing to repair (a check would make the table)
            return
        manager.repair(now)
        self.ingress_drops = manager.ingress_drops(self.quiet_counts.put)  # the check read them
        if self._chain is not None:
            manager.repair_conntrack(self._chain)
        if self._keeper is not None:
            self._keeper.repair(self._protection() if self._protection else ())

    def _serve(self, manager: BanManager, store: Store) -> None:
        s = self.settings
        mono = time.monotonic()
        timers = {"expire": mono + EXPIRE_EVERY, "repair": mono + REPAIR_EVERY,
                  "poll": mono + POLL_EVERY, "purge": mono, "roll": mono + ROLL_EVERY}  # fmt: skip
        after: object = None  # a job taken while gathering bans, done next
        while True:
            if after is not None:
                job, after = after, None
            else:
                wait = max(0.0, min(timers.values()) - time.monotonic())
                try:
                    job = self._jobs.get(timeout=wait)
                except queue.Empty:
                    job = None
            if job is _STOP:  # the last counts, for the final statistics
                self.ingress_drops = manager.ingress_drops(self.quiet_counts.put, read=True)
                return
            now = time.time()
            if isinstance(job, (BanRequest, list)):  # a list: a loop turn's first bans
                batch = [job] if isinstance(job, BanRequest) else list(job)
                while len(batch) < BAN_BATCH:
                    try:
                        more = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(more, list):
                        batch += more
                    elif isinstance(more, BanRequest):
                        batch.append(more)
                    else:
                        after = more
                        break
                # Retried until the store takes it (a retry resumes what a refusal left).
                self._retry.until_stored(partial(self._ban, manager, batch), "bans")
            elif isinstance(job, Alert):
                try:
                    alert = partial(manager.record_alert, job.request, now)
                    self._retry.until_stored(alert, "alert")
                finally:
                    self._alerts_done += 1
            elif isinstance(job, tuple):
                try:
                    self._retry.until_stored(partial(store.add_events, job), "records")
                finally:
                    self._rows_done += len(job)
            elif isinstance(job, CutRequest):
                self._retry.until_stored(partial(cut_ban, manager, job, now), "cut")
            elif isinstance(job, Settings):
                manager.reconfigure(job)
            elif isinstance(job, _HoldChange):
                self._hold_with(job.plan)
            elif job is _PROTECT:
                self._protect_due = True
                if self._keeper is not None:
                    self._keeper.keep(self._protection() if self._protection else ())
            if self._protect_due:  # until the store takes the lifts
                self._protect_due = not self._retry.once(
                    partial(self._lift_protected, manager, now), "lift"
                )
            mono = time.monotonic()
            # Timed steps: one refused by the store is tried again at its next time.
            if mono >= timers["expire"]:
                timers["expire"] = mono + EXPIRE_EVERY
                self._retry.once(partial(self._expire, manager, now), "expiry")
            if mono >= timers["poll"]:
                timers["poll"] = mono + POLL_EVERY
                self._retry.once(partial(self._poll, store, now), "poll")
            if mono >= timers["repair"]:
                timers["repair"] = mono + REPAIR_EVERY
                self._retry.once(partial(self._repair, manager, now), "repair")
            if mono >= timers["roll"]:  # the report's rollups; not while records queue up
                timers["roll"] = mono + ROLL_EVERY
                if self._rows_queued - self._rows_done < ROLL_IDLE:
                    self._retry.once(partial(store.roll_up, 1), "rollups")
            if mono >= timers["purge"]:
                timers["purge"] = mono + PURGE_EVERY
                self._retry.once(partial(store.purge_events, now - s.event_retention), "purge")
            manager.settle_damaged(now)  # rows any step above found damaged: said once

    # --- the store refusing: retried, reported, fatal only when it is damaged ---------------

    def _expire(self, manager: BanManager, now: float) -> None:
        manager.follow_interfaces()  # cheap when no interface came or went
        for record in manager.expire(now):
            self._release(record.address)

    @property
    def store_outage(self) -> tuple[float, str] | None:
        """Since when, and why, the store refuses writes (None: it does not); for status."""
        return self._retry.outage

    def health(self) -> dict[str, bool]:
        """Each backend built so far: True unless marked degraded (for the metrics)."""
        return dict(self._health)

    def _ban(self, manager: BanManager, requests: list[BanRequest]) -> None:
        try:
            records = manager.ban_many(requests, time.time(), resume=True)
        except DamagedRowError as exc:  # a live ban's row damaged since start: set aside
            manager.store.note(exc)
            manager.settle_damaged(time.time())
            records = manager.ban_many(requests, time.time(), resume=True)
        self._health = {
            name: backend.degraded is None for name, backend in manager.backends.built().items()
        }
        for request, record in zip(requests, records, strict=True):
            if self._on_ban is not None:
                self._on_ban(request.address, ban_info(record) if record is not None else None)
            if record is None:
                if manager.store.ban_for(request.address) is None:
                    self._release(request.address)  # nothing applied: the next probe tries
                continue
            self.bans_added += 1
            self._active.add(record.address)
        self._data_version = manager.store.data_version()

    def _lift_protected(self, manager: BanManager, now: float) -> None:
        if self._protection is None:
            return
        entries = self._protection()
        for record in lift_protected(manager, manager.store.active_bans(now), entries, now):
            self._release(record.address)

    def _release(self, address: str) -> None:
        self._active.discard(address)
        self._tell(WorkerMessage("release", address))

    def _poll(self, store: Store, now: float) -> None:
        """Bans lifted or added and allow entries changed by the CLI (another connection)."""
        version = store.data_version()
        if version == self._data_version:
            return
        self._data_version = version
        # Allow entries first: the detector must protect an address before it forgets its ban.
        self._sync_allowed(store)
        current = {r.address for r in store.active_bans(now)}
        for address in self._active - current:
            self._release(address)
        for address in current - self._active:
            self._active.add(address)
            self._tell(WorkerMessage("restore", address))

    def _sync_allowed(self, store: Store) -> None:
        allowed = tuple(store.allowed())
        if allowed != self._allowed:
            self._allowed = allowed
            self._tell(WorkerMessage("allow", networks=allowed))
