"""The daemon as a process: the state directory's lock, start-up, signals, the control
socket's verbs, the metrics endpoint, and PortSentry's shutdown lines; the loop itself is
``pipeline.Pipeline``.
"""

from __future__ import annotations

import gc
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

from portsentinel import __version__
from portsentinel.alert import portsentry2_log, portsentry_log
from portsentinel.alert.notify import Notifier, NotifyConfig
from portsentinel.alert.sinks import EventSink, LogSink
from portsentinel.block.plan import kill_route_replaced
from portsentinel.config.setup import Invocation, Setup, load_setup
from portsentinel.daemon.control import ControlError, ControlServer
from portsentinel.daemon.metrics import MetricsServer
from portsentinel.daemon.pipeline import Pipeline
from portsentinel.daemon.sched import shorten_slice
from portsentinel.daemon.sdnotify import ServiceManager
from portsentinel.daemon.sources import StartupError
from portsentinel.errors import ConfigError, ConfigErrors, PortSentinelError
from portsentinel.fleet.credentials import fleet_config
from portsentinel.respond.backends import terms_of
from portsentinel.respond.hold import hold_plan, hold_refusal
from portsentinel.respond.worker import Responder
from portsentinel.store.lock import StateLock

if TYPE_CHECKING:
    from portsentinel.fleet.link import FleetLink

GC_THRESHOLD = 20_000  # allocations between young collections (CPython's default: 700)


@dataclass(frozen=True)
class RunOptions:
    state_dir: str
    events: str | None = None
    dry_run: bool = False
    # How the configuration was found, so that a reload (SIGHUP) reads it the same way.
    config: str | None = None
    modes: str | None = None
    control_path: str | None = None  # the CLI's Unix socket; None: no control channel
    invocation: Invocation = field(default_factory=Invocation)  # 2.0 flags, for a reload


class Daemon:
    """One process for one TCP mode and one UDP mode, IPv4 and IPv6.

    ``run`` takes the state directory's lock, starts the pipeline, loops until SIGTERM or
    SIGINT and stops with PortSentry's shutdown lines.
    """

    def __init__(self, setup: Setup, options: RunOptions, log: LogSink) -> None:
        self.setup = setup
        self.options = options
        self.log = log
        self._stopping = False
        self._reload = False
        self._pending: Setup | None = None  # read by the control socket's reload, to apply
        self._refusal: list[str] = []  # why the last reload was refused

    def run(self) -> int:
        lock = StateLock(self.options.state_dir)
        lock.acquire()
        events = EventSink(self.options.events) if self.options.events else None
        wake_r, wake_w = socket.socketpair()
        manager = ServiceManager.from_environment()  # before any command starts: not theirs
        try:
            words = _words(self.setup)
            self.log.line(words.starting_line(__version__))
            try:
                pipeline = Pipeline.start(self.setup, self.log, events)
            except StartupError as exc:
                self.log.line(str(exc))
                return 1
            dry = self.options.dry_run
            if dry:
                self.log.line(
                    "adminalert: dry run: decisions are logged and recorded (would-be bans too) "
                    f"in the offline store in {self.options.state_dir}; no firewall is touched"
                )
            notifier = _notifier(self.setup, dry_run=self.options.dry_run)
            pipeline.outputs.notifier = notifier
            if notifier is not None:
                pipeline.watched["notifier"] = notifier.alive
            pipeline.dry_run = dry
            pipeline.outputs.set_words(self.setup.settings, dry_run=dry)
            pipeline.manager = manager
            pipeline.attach(
                Responder(
                    self.setup.settings,
                    self.options.state_dir,
                    protected=pipeline.protection.protects,
                    protection=pipeline.protection.entries,
                    on_ban=notifier.ban_result if notifier is not None else None,
                    conntrack=pipeline.host.tracks_replies and not dry,
                    hold=None if dry else hold_plan(self.setup),
                    dry_run=dry,
                )
            )
            pipeline.outputs.allow_quiet(self.setup.settings, dry_run=dry)
            pipeline.fleet = _fleet(self.setup, self.options.state_dir, pipeline, dry)
            if pipeline.fleet is not None:
                pipeline.fleet.start()
                pipeline.watched["fleet"] = pipeline.fleet.alive
            metrics = MetricsServer.from_settings(
                self.setup.settings, pipeline.metrics_snapshot, started=time.time()
            )
            if metrics is not None:
                try:
                    metrics.start()
                except OSError as exc:  # the port is taken, the address is not this host's
                    host, port = metrics.address
                    self.log.line(
                        f"adminalert: ERROR: cannot serve metrics on {host}:{port} "
                        f"(METRICS_LISTEN): {exc.strerror or exc}"
                    )
                    pipeline.close()
                    return 1
                host, port = metrics.address
                self.log.line(f"adminalert: metrics on http://{host}:{port}/metrics")
                pipeline.watched["metrics"] = metrics.alive
            settings = self.setup.settings
            refusal = hold_refusal(self.setup)
            if settings.kernel_hold and (refusal is not None or self.options.dry_run):
                why = "a dry run touches no firewall" if self.options.dry_run else refusal
                self.log.line(f"adminalert: WARNING: KERNEL_HOLD=1 is not used: {why}")
            backend = settings.block_backend.value
            if kill_route_replaced(backend, settings.kill_route):
                self.log.line(
                    f"adminalert: KILL_ROUTE is not run: BLOCK_BACKEND={backend} blocks "
                    "instead (set BLOCK_BACKEND=legacy to run it as written)"
                )
            self._install_signals(wake_w)
            control = self._control(pipeline)
            settle_gc()
            sys.setswitchinterval(SWITCH_INTERVAL)
            why = shorten_slice()  # the loop's thread only
            if why is not None:
                self.log.line(f"adminalert: the loop keeps the default scheduler slice ({why})")
            self.log.line(words.ACTIVE)
            self.log.flush()
            manager.ready("watching")
            try:
                pipeline.loop(wake_r, lambda: self._stopping, self._take_reload, control)
            finally:
                manager.stopping()
                if control is not None:
                    control.close()
                if metrics is not None:
                    metrics.close()
                if pipeline.fleet is not None:
                    pipeline.fleet.close()
                    for line in pipeline.fleet.lines():
                        self.log.line(line)
                if notifier is not None:
                    notifier.close()
                    for line in notifier.lines():
                        self.log.line(line)
                for line in _words(pipeline.setup).SHUTDOWN:
                    self.log.line(line)
                self.log.line("adminalert: statistics: " + format_stats(pipeline.statistics()))
                pipeline.close()
            if pipeline.fatal is not None:
                self.log.line(
                    f"adminalert: ERROR: {pipeline.fatal}; exiting with status 1 so that the "
                    "service manager restarts the daemon"
                )
                return 1
            return 0
        finally:
            signal.set_wakeup_fd(-1)
            manager.close()
            if events is not None:
                events.close()
            wake_r.close()
            wake_w.close()
            self.log.flush()
            lock.release()

    def request_stop(self) -> None:
        self._stopping = True

    def _control(self, pipeline: Pipeline) -> ControlServer | None:
        """The CLI's channel (root-only Unix socket, JSON): status, stats and reload."""
        path = self.options.control_path
        if path is None:
            return None
        started = time.time()

        def status(_args: dict[str, object]) -> object:
            return pipeline.status(started)

        def reload(_args: dict[str, object]) -> object:
            """Read the configuration now, so the CLI hears whether it was refused; it is
            applied at the end of this loop turn."""
            setup = self._load_new()
            if setup is None:
                raise ControlError(
                    "\n".join(self._refusal) + "\nthe running configuration stays in force"
                )
            self._pending = setup
            source = setup.config.path or "embedded defaults"
            return f"configuration read from {source}; applied now"

        handlers = {
            "status": status,
            "stats": lambda _args: pipeline.statistics(),
            "reload": reload,
        }
        try:
            return ControlServer(path, handlers, log=self.log.line)
        except PortSentinelError as exc:
            self.log.line(
                f"adminalert: WARNING: no control socket ({exc}); CLI verbs use the store"
            )
            return None

    def request_reload(self) -> None:
        self._reload = True

    def _take_reload(self) -> Setup | None:
        """A reload was asked for: the configuration read anew (by the control socket's
        ``reload`` already, or now for SIGHUP), or None (not asked, or the new one is broken —
        then the old one stays in force and the error is logged)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            return pending
        if not self._reload:
            return None
        self._reload = False
        return self._load_new()

    def _load_new(self) -> Setup | None:
        """The configuration as it is now on disk; None, logged (``_refusal``), when broken."""
        try:
            setup = load_setup(self.options.config, self.options.modes, self.options.invocation)
        except (ConfigError, ConfigErrors) as exc:
            self._refusal = str(exc).splitlines()
            for line in self._refusal:
                self.log.line(f"adminalert: ERROR: reload refused: {line}")
            self.log.line("adminalert: the running configuration stays in force")
            return None
        for warning in setup.warnings:
            self.log.line(f"adminalert: WARNING: {warning}")
        return setup

    def _install_signals(self, wake_w: socket.socket) -> None:
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda _n, _f: self.request_stop())
        # PortSentry had no reload (1.2 ignores SIGHUP, 2.0 dies of it); we re-read the
        # configuration and ignore files, and reopen the events file (logrotate).
        signal.signal(signal.SIGHUP, lambda _n, _f: self.request_reload())


SWITCH_INTERVAL = 0.0005
"""Seconds a thread may hold the interpreter lock while another waits (CPython's default is
0.005). The detection loop makes a system call (a netlink question, a ban's element, a write)
and then waits for the lock while the response worker runs Python: with the default, up to
5 ms a call. Not measured on its own: the third of the loop's time that py-spy showed in its
sock_diag questions under a forged flood was mostly the kernel's walk of its socket table
(4.7 ms in an idle namespace), which the SSH-peer set removed."""


def settle_gc() -> None:
    """The start-up objects (modules, settings, tables) go to the permanent generation, and
    young collections run every GC_THRESHOLD allocations instead of 700: a flood of new
    sources makes many short-lived container objects and almost no reference cycles, and
    each collection otherwise also walks the tracker's tens of thousands of sources."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, second, third)


def _notifier(setup: Setup, *, dry_run: bool) -> Notifier | None:
    """The webhook/mail notifier when one is configured (off by default)."""
    config = NotifyConfig.from_settings(setup.settings, await_bans=not dry_run)
    if not config.enabled:
        return None
    notifier = Notifier(config)
    notifier.start()
    return notifier


def _fleet(setup: Setup, state_dir: str, pipeline: Pipeline, dry_run: bool) -> FleetLink | None:
    """The fleet link when CROWDSEC_LAPI_URL and a credentials or key file are set; a file
    that cannot be used leaves the fleet off (said), never the host unprotected."""
    if dry_run:
        return None
    try:
        config = fleet_config(setup.settings)
    except ConfigError as exc:
        pipeline.log.line(f"adminalert: ERROR: the fleet link is off: {exc}")
        return None
    if config is None:
        return None
    from portsentinel.fleet.link import FleetLink  # noqa: PLC0415 - only with a fleet: urllib

    seconds, _offence = terms_of(setup.settings).length(0)
    length = setup.settings.crowdsec_permanent_cap if seconds is None else seconds
    pipeline.log.line(
        f"adminalert: fleet: LAPI {config.url}, push {'on' if config.machine else 'off'}, "
        f"pull {'on' if config.api_key else 'off'}"
    )
    return FleetLink(setup.settings, state_dir, config, protection=pipeline.protection.entries,
                     sweep_length=length)  # fmt: skip


def format_stats(stats: dict[str, int]) -> str:
    return " ".join(f"{key}={value}" for key, value in stats.items())


def _words(setup: Setup) -> ModuleType:
    """The module of PortSentry's words the settings chose (LOG_FORMAT)."""
    return portsentry2_log if setup.settings.log_format == "2.0" else portsentry_log


def default_log(setup: Setup) -> LogSink:
    s = setup.settings
    return LogSink(syslog_ident=s.syslog_ident if s.syslog else None)
