"""The fleet link: one thread beside the daemon's loop that pushes and pulls (``push``,
``pull``, ``sweep``), with its own store connection and its own ``nft`` process, so neither
the packet path nor the response worker ever waits on the network.

Its steps run on timers: push every ``SEND_EVERY`` (the outbox; a batch gathers meanwhile),
pull every ``CROWDSEC_POLL_INTERVAL``, a full re-pull every ``CROWDSEC_RESYNC_INTERVAL`` and
after any failed pull, a check of the fleet sets every ``CHECK_EVERY`` (a flushed ruleset
brings a full re-pull). A failing step is logged once per kind of failure and tried again on
its timer; the thread itself never dies of one (``alive`` is watched by the loop).
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Final

from portsentinel.block.fleet_sets import FleetSets
from portsentinel.config.schema import Settings
from portsentinel.errors import PortSentinelError
from portsentinel.fleet import sweep
from portsentinel.fleet.credentials import FleetConfig
from portsentinel.fleet.lapi import Lapi, LapiError
from portsentinel.fleet.pull import Puller
from portsentinel.fleet.push import Pusher
from portsentinel.host.neverblock import Entry
from portsentinel.store.sqlite import Store

SEND_EVERY: Final = 0.5
CHECK_EVERY: Final = 10.0
SCAN_EVERY: Final = 1.0
MAX_LINES: Final = 1000


class FleetLink:
    """See the module docstring."""

    def __init__(
        self, settings: Settings, state_dir: str, config: FleetConfig, *,
        protection: Callable[[], Sequence[Entry]], sweep_length: float = 3600.0,
        host: str | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.state_dir = state_dir
        self.config = config
        self.protection = protection
        self.host = host or socket.gethostname()
        self.sweep_length = sweep_length
        self._lines: collections.deque[str] = collections.deque(maxlen=MAX_LINES)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet", daemon=True)
        self.pusher: Pusher | None = None
        self.puller: Puller | None = None
        self.sweeper: sweep.SweepRule | None = None
        self.connected: bool | None = None
        self.last_error: str | None = None
        self._said: set[str] = set()
        self._events_after = time.time()
        self._outbox: dict[str, int] = {}
        self.reporter = sweep.Reporter(window=settings.fleet_sweep_window,
                                       per_hour=settings.fleet_sweep_reports)  # fmt: skip

    # --- the loop's side ----------------------------------------------------------------------
    def start(self) -> None:
        for warning in self.config.warnings:
            self._log(f"adminalert: WARNING: {warning}")
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive() or self._stop.is_set()

    def lines(self) -> list[str]:
        out = []
        while self._lines:
            out.append(self._lines.popleft())
        return out

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def status(self) -> dict[str, Any]:
        """What ``status`` and the metrics show (read from the loop's or the metrics' thread)."""
        push = self.pusher.stats if self.pusher is not None else None
        pull = self.puller.stats if self.puller is not None else None
        return {
            "lapi": self.config.url,
            "connected": self.connected,
            "push": self.config.machine is not None,
            "pull": self.config.api_key is not None,
            "last_push": push.last_push if push else None,
            "last_pull": pull.last_pull if pull else None,
            "last_error": self.last_error,
            "outbox": dict(self._outbox),
            "outbox_depth": sum(self._outbox.values()),
            "pushed": push.pushed if push else 0,
            "withdrawn": push.withdrawn if push else 0,
            "withheld": push.withheld if push else 0,
            "reports": push.reports if push else 0,
            "outbox_refused": push.refused if push else 0,
            "duplicates_avoided": push.duplicates_avoided if push else 0,
            "push_failures": push.failures if push else 0,
            "fleet_bans_applied": pull.applied if pull else 0,
            "fleet_refused": pull.refused if pull else 0,
            "pulls": pull.pulls if pull else 0,
            "resyncs": pull.resyncs if pull else 0,
            "reports_dropped": self.reporter.dropped,
            "sweeps_banned": self.sweeper.banned if self.sweeper else 0,
            "sweep_checks": self.sweeper.checks if self.sweeper else 0,
            "sweep_check_seconds": self.sweeper.check_seconds if self.sweeper else 0.0,
        }

    # --- the thread ---------------------------------------------------------------------------
    def _log(self, line: str) -> None:
        self._lines.append(line)

    def _run(self) -> None:
        try:
            store = Store.open(self.state_dir)
        except PortSentinelError as exc:
            self._log(f"adminalert: ERROR: fleet link: cannot open the state store: {exc}")
            return
        try:
            self._serve(store)
        finally:
            store.close()

    def _serve(self, store: Store) -> None:
        s, c = self.settings, self.config
        lapi = Lapi(c.url, machine=c.machine, api_key=c.api_key, ca_file=c.ca_file,
                    timeout=s.crowdsec_timeout)  # fmt: skip
        if c.machine is not None:
            self.pusher = Pusher(store, lapi, host=self.host, delay=s.fleet_push_delay,
                                 cap=s.crowdsec_permanent_cap, batch=s.crowdsec_batch_max,
                                 outbox_max=s.crowdsec_outbox_max, log=self._log)  # fmt: skip
            self.sweeper = sweep.SweepRule(lapi, hosts=s.fleet_sweep_hosts,
                                           window=s.fleet_sweep_window,
                                           length=self.sweep_length, log=self._log)  # fmt: skip
        if c.api_key is not None:
            self.puller = Puller(store, lapi, FleetSets(), protection=self.protection,
                                 log=self._log)  # fmt: skip
        mono = time.monotonic()
        timers = {"send": mono, "pull": mono, "check": mono + CHECK_EVERY, "scan": mono}
        resync_at = mono  # the first pull is a full one
        while not self._stop.is_set():
            mono = time.monotonic()
            now = time.time()
            if mono >= timers["scan"]:
                timers["scan"] = mono + SCAN_EVERY
                self._step("scan", partial(self._scan, store, now))
            if mono >= timers["send"]:
                timers["send"] = mono + SEND_EVERY
                self._step("push", partial(self._send, now))
            if self.puller is not None and mono >= timers["pull"]:
                timers["pull"] = mono + s.crowdsec_poll_interval
                full = mono >= resync_at
                if self._step("pull", partial(self._pull, now, full)):
                    if full:
                        resync_at = mono + s.crowdsec_resync_interval
                else:
                    resync_at = mono  # a failed pull may have lost deltas: all again
            if self.puller is not None and mono >= timers["check"]:
                timers["check"] = mono + CHECK_EVERY
                if not self.puller.sets.present():
                    self._log("adminalert: fleet sets missing, or their ingress copies changed: "
                              "rebuilt with every decision")  # fmt: skip
                    resync_at = mono
            self._step("outbox", partial(self._depth, store))
            self._stop.wait(max(0.05, min(timers.values()) - time.monotonic()))

    def _step(self, name: str, fn: Callable[[], None]) -> bool:
        try:
            fn()
        except LapiError as exc:
            self._failed(name, str(exc))
            return False
        except (PortSentinelError, OSError, ValueError) as exc:
            self._failed(name, f"{type(exc).__name__}: {exc}")
            return False
        return True

    def _failed(self, name: str, error: str) -> None:
        self.last_error = f"{name}: {error}"
        if name in ("push", "pull"):
            self.connected = False
        key = f"{name}:{error[:60]}"
        if key not in self._said:
            self._said.add(key)
            self._log(f"adminalert: fleet {name} failed: {error}; retried")

    def _ok(self) -> None:
        if self.connected is False:
            self._log(f"adminalert: fleet link to {self.config.url} is back")
            self._said.clear()
        self.connected = True

    def _scan(self, store: Store, now: float) -> None:
        if self.pusher is None:
            return
        self.pusher.scan(now)
        events = store.events_between(self._events_after, now + 1.0)
        if events:
            self._events_after = max(e.time for e in events) + 1e-6
            window = self.settings.fleet_sweep_window
            items = sweep.reports(events, now, host=self.host, window=window,
                                  banned=partial(_banned, store, now))  # fmt: skip
            for item in self.reporter.admit(items, now):
                self.pusher.report(item)

    def _send(self, now: float) -> None:
        pusher = self.pusher
        if pusher is None:
            return
        before = pusher.stats.failures
        reported = [i for i in pusher.store.outbox_due(now, pusher.batch) if i.kind == "report"]
        accepted = pusher.send(now)
        if accepted and pusher.stats.failures == before:
            self._ok()
        if reported and self.sweeper is not None and pusher.stats.failures == before:
            self.sweeper.check([i.address for i in reported], now, time.monotonic)

    def _pull(self, now: float, full: bool) -> None:
        if self.puller is None:
            return
        self.puller.pull(now, full=full)
        if self.connected is False and self.pusher is not None:
            # LAPI is back: what waits out a back-off (up to BACKOFF_MAX) goes now.
            woken = self.puller.store.outbox_wake(now)
            if woken:
                self._log(f"adminalert: fleet: {woken} messages for LAPI sent again now")
        self._ok()

    def _depth(self, store: Store) -> None:
        self._outbox = store.outbox_depth()


def _banned(store: Store, now: float, address: str) -> bool:
    """Banned here or by the fleet already: nothing to report."""
    if store.ban_for(address) is not None:
        return True
    return any(d.until > now for d in store.fleet_decisions(address=address))
