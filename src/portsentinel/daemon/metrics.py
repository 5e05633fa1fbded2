"""Prometheus metrics, off by default and on loopback only unless the operator says otherwise.

The detection loop never touches a metric object: it keeps its plain counters, and at scrape
time a custom collector calls the snapshot the daemon hands in and turns it into metric
families. Reading ints the loop is bumping is safe under the GIL; a snapshot is a moment,
not a transaction, which is all a scrape needs.

The snapshot is a flat mapping (``Pipeline.statistics()`` as it is) plus a few nested ones:

    packets, connects, not_probe, in_use, not_local, replies, decode_errors,
    sources_evicted, kernel_packets, kernel_drops, kernel_freezes, events_lost, reply_checks,
    reply_checks_skipped, bans_added, first_bans_*      -> counters (scalars, see _COUNTERS)
    tracked_sources, bans_active, store_outage          -> gauges
    probes_<kind> (probes_syn ...)                      -> probes_total{kind="SYN"}
    decisions_<action> (decisions_block ...)            -> decisions_total{action="block"}
    alerts: {action: {kind: n}}                          -> alerts_total{action, kind}
    bans_refused: {"budget": n, "never_block": n}        -> bans_refused_total{reason}
    backends: {name: healthy}                            -> backend_up{backend}, degraded
    notifications: Notifier.stats()                      -> notifications_total{outcome}
    start_time (epoch seconds, else the server's)        -> start_time_seconds

A key that is missing is simply not exported (no kernel counters without a capture ring).

prometheus_client (with the HTTP server and ssl it pulls in, some 8 MiB of resident memory)
is imported only when the endpoint is on: the daemon imports this module either way, for
``DecisionCounts`` and ``MetricsServer.from_settings``. The HTTP server is ``daemon/scrape``'s:
a bounded number of connections, each with a deadline (prometheus_client's own starts a thread
per connection and never times one out).
"""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from portsentinel import __version__
from portsentinel.config.endpoints import REMOTE_LISTEN_EXPECTED, remote_listen
from portsentinel.config.schema import Settings
from portsentinel.errors import ConfigError
from portsentinel.model import Action, Decision, Reason, ScanKind

if TYPE_CHECKING:
    from prometheus_client.core import CounterMetricFamily, Metric

    from portsentinel.daemon.scrape import ScrapeServer

Snapshot = Callable[[], Mapping[str, object]]

PREFIX = "portsentinel_"

# (snapshot key, metric name without prefix and _total, help)
_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("packets", "packets", "Packets the detector examined (after the kernel filter)"),
    ("connects", "connects", "Connections and datagrams taken by the bound-port modes"),
    ("not_probe", "packets_not_probe", "Packets that could not be probes (e.g. plain ACKs)"),
    ("in_use", "packets_in_use", "Packets to ports a local service uses: never probes"),
    (
        "recently_in_use",
        "packets_recently_in_use",
        "Packets to ports a service used within RECENTLY_IN_USE (restarting): never probes",
    ),
    ("not_local", "packets_not_local", "Packets to addresses that are not this host's"),
    ("replies", "packets_replies", "Packets recognised as replies to this host's traffic"),
    ("decode_errors", "decode_errors", "Frames that could not be decoded (counted, dropped)"),
    ("sources_evicted", "sources_evicted", "Tracked sources forgotten to stay within the cap"),
    (
        "decoy_groups",
        "decoy_groups",
        "Groups of sources that probed the same ports at the same moments (nmap -D)",
    ),
    ("kernel_packets", "kernel_packets", "Packets the capture ring delivered"),
    ("kernel_drops", "kernel_drops", "Packets the kernel dropped: the capture ring was full"),
    ("kernel_freezes", "kernel_freezes", "Times the capture ring froze for lack of room"),
    (
        "ingress_dropped_packets",
        "ingress_dropped_packets",
        "Packets from banned sources dropped at ingress, before the capture (read every 10 s)",
    ),
    ("ingress_dropped_bytes", "ingress_dropped_bytes", "Bytes of those packets"),
    (
        "quiet_sources",
        "quiet_sources",
        "Times a muted source's protocol went quiet: counted in the kernel (QUIET_REPEATS)",
    ),
    (
        "quiet_packets",
        "quiet_packets",
        "Probes of quiet sources the kernel counted instead of the daemon (read every 10 s)",
    ),
    ("events_lost", "events_lost", "Event lines the events stream refused (full disk, no reader)"),
    ("reply_checks", "reply_checks", "Connection-tracking look-ups for possible replies"),
    ("reply_checks_skipped", "reply_checks_skipped", "Reply look-ups skipped (rate bound)"),
    ("bans_added", "bans_added", "Bans applied since start"),
    (
        "first_bans_applied",
        "first_bans_applied",
        "Bans the detection loop sent to the kernel itself, ahead of the response worker",
    ),
    (
        "first_bans_refused",
        "first_bans_refused",
        "Bans the kernel refused from the detection loop (the worker applied them)",
    ),
)
_COUNTERS += tuple(
    (f"fleet_{key}", f"fleet_{key}", text)
    for key, text in (
        ("pushed", "Bans LAPI accepted from this host"),
        ("withdrawn", "Pushed bans whose fleet decisions this host deleted (unblock, decoy)"),
        ("withheld", "Bans never pushed: lifted or cut within the decoy window"),
        ("reports", "Weak-evidence reports LAPI accepted (for the sweep rule)"),
        ("reports_dropped", "Weak-evidence reports not sent: over FLEET_SWEEP_REPORTS an hour"),
        ("outbox_refused", "Messages the full outbox dropped (CROWDSEC_OUTBOX_MAX)"),
        ("duplicates_avoided", "Retried bans LAPI already held (an ambiguous failure)"),
        ("push_failures", "Pushes to LAPI that failed (retried with back-off)"),
        ("pulls", "Pulls of the fleet's decisions"),
        ("resyncs", "Full re-pulls of the fleet's decisions"),
        ("refused", "Fleet decisions refused here: the never-block set holds the address"),
        ("sweeps_banned", "Sources this host banned fleet-wide as sweeps"),
        ("sweep_checks", "Sweep rule look-ups in LAPI"),
        ("sweep_check_seconds", "Seconds spent in sweep rule look-ups"),
    )
)
_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("fleet_connected", "fleet_connected", "1 while the last exchange with LAPI succeeded"),
    ("fleet_outbox_depth", "fleet_outbox_depth", "Messages waiting for LAPI in the outbox"),
    ("fleet_bans_applied", "fleet_bans_applied", "Fleet decisions in this host's fleet sets"),
    ("fleet_last_push", "fleet_last_push_time_seconds", "When LAPI last accepted a push"),
    ("fleet_last_pull", "fleet_last_pull_time_seconds", "When the last pull succeeded"),
    ("tracked_sources", "tracked_sources", "Sources being counted now"),
    ("bans_active", "bans_active", "Bans in force now"),
    ("store_outage", "store_outage", "1 while the state store refuses writes (retried)"),
)


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _mapping(value: object) -> Mapping[str, object]:
    """A copy (one C-level step under the GIL), so a mapping growing meanwhile cannot break
    the iteration."""
    return dict(value) if isinstance(value, Mapping) else {}


_REFUSED = {Reason.BAN_BUDGET: "budget", Reason.NEVER_BLOCK: "never_block"}


class DecisionCounts:
    """What the detector does not count itself: triggers by response and kind. The daemon
    calls ``add`` for each decision it emits (a dict bump); the tables are filled up front, so
    they never change size while a scrape reads them.
    """

    def __init__(self) -> None:
        kinds = [k.value for k in ScanKind]
        self.alerts: dict[str, dict[str, int]] = {
            a.value: dict.fromkeys(kinds, 0) for a in Action if a is not Action.IGNORED
        }

    def add(self, decision: Decision) -> None:
        if decision.first and decision.action is not Action.IGNORED:
            self.alerts[decision.action.value][decision.kind.value] += 1

    def snapshot(self) -> dict[str, object]:
        return {"alerts": {action: dict(kinds) for action, kinds in self.alerts.items()}}


def refused_counts(ignored_by_reason: Mapping[Reason, int]) -> dict[str, int]:
    """``bans_refused`` from the detector's count of ignored probes by reason (which also
    counts probes whose records were held back, so a flood of refusals is counted in full)."""
    return {name: ignored_by_reason.get(reason, 0) for reason, name in _REFUSED.items()}


class SnapshotCollector:
    """Metric families built from one snapshot per scrape (a prometheus_client ``Collector``:
    that is a protocol, so no base class, and no import of prometheus_client to define it;
    the methods import the family types, loaded by then with the registry that calls them).
    """

    def __init__(self, snapshot: Snapshot, *, started: float, version: str = __version__) -> None:
        self._snapshot = snapshot
        self._started = started
        self._version = version

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily  # noqa: PLC0415

        snap = self._snapshot()
        yield from self._scalars(snap)
        yield self._labelled(
            "probes", "Probes seen, by scan kind", "kind",
            {k.value: snap.get(f"probes_{k.value.lower()}") for k in ScanKind},
        )  # fmt: skip
        yield self._labelled(
            "decisions", "Decisions taken, by action (ignored: a policy refused to act)",
            "action", {a.value: snap.get(f"decisions_{a.value}") for a in Action},
        )  # fmt: skip
        yield self._alerts(_mapping(snap.get("alerts")))
        yield self._labelled(
            "bans_refused", "Sources not blocked to protect the host, by reason", "reason",
            _mapping(snap.get("bans_refused")),
        )  # fmt: skip
        yield self._labelled(
            "notifications", "Notification outcomes (sent, failed, limited, dropped ...)",
            "outcome", _mapping(snap.get("notifications")),
        )  # fmt: skip
        yield from self._health(_mapping(snap.get("backends")), snap.get("degraded"))
        started = _number(snap.get("start_time"))
        yield GaugeMetricFamily(
            PREFIX + "start_time_seconds",
            "When the daemon started, in seconds since the epoch",
            value=started if started is not None else self._started,
        )
        yield InfoMetricFamily(
            PREFIX + "build",
            "Version of PortSentinel and of Python",
            value={"version": self._version, "python": platform.python_version()},
        )

    def _scalars(self, snap: Mapping[str, object]) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415

        for key, name, text in _COUNTERS:
            value = _number(snap.get(key))
            if value is not None:
                yield CounterMetricFamily(PREFIX + name, text, value=value)
        for key, name, text in _GAUGES:
            value = _number(snap.get(key))
            if value is not None:
                yield GaugeMetricFamily(PREFIX + name, text, value=value)

    @staticmethod
    def _labelled(
        name: str, text: str, label: str, values: Mapping[str, object]
    ) -> CounterMetricFamily:
        from prometheus_client.core import CounterMetricFamily  # noqa: PLC0415

        family = CounterMetricFamily(PREFIX + name, text, labels=[label])
        for key, raw in values.items():
            value = _number(raw)
            if value is not None:
                family.add_metric([str(key)], value)
        return family

    @staticmethod
    def _alerts(by_action: Mapping[str, object]) -> CounterMetricFamily:
        from prometheus_client.core import CounterMetricFamily  # noqa: PLC0415

        family = CounterMetricFamily(
            PREFIX + "alerts",
            "Sources that crossed the trigger, by response and scan kind",
            labels=["action", "kind"],
        )
        for action, kinds in by_action.items():
            for kind, raw in _mapping(kinds).items():
                value = _number(raw)
                if value is not None:
                    family.add_metric([str(action), str(kind)], value)
        return family

    @staticmethod
    def _health(backends: Mapping[str, object], degraded: object) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415

        up = GaugeMetricFamily(
            PREFIX + "backend_up",
            "1 if a blocking backend works, 0 if degraded",
            labels=["backend"],
        )
        for name, healthy in backends.items():
            up.add_metric([str(name)], 1.0 if healthy else 0.0)
        if isinstance(degraded, bool):
            worse = degraded
        else:
            worse = any(not healthy for healthy in backends.values())
        return (
            up,
            GaugeMetricFamily(
                PREFIX + "degraded", "1 if any part runs degraded", value=1.0 if worse else 0.0
            ),
        )


def check_listen(host: str, *, allow_remote: bool) -> None:
    """ConfigError unless ``host`` is a loopback address or remote access was allowed (the
    loader's rule, ``endpoints.remote_listen``: a configuration it loaded never fails here)."""
    why = remote_listen(host, allow_remote=allow_remote)
    if why is not None:
        raise ConfigError(why, key="METRICS_LISTEN", expected=REMOTE_LISTEN_EXPECTED)


class MetricsServer:
    """The scrape endpoint on its own thread: ``start``, ``address``, ``close``."""

    def __init__(
        self,
        host: str,
        port: int,
        snapshot: Snapshot,
        *,
        allow_remote: bool = False,
        started: float | None = None,
        version: str = __version__,
    ) -> None:
        from prometheus_client import CollectorRegistry  # noqa: PLC0415 - only when on
        from prometheus_client.process_collector import ProcessCollector  # noqa: PLC0415

        check_listen(host, allow_remote=allow_remote)
        self.host = host
        self.port = port
        self.registry = CollectorRegistry(auto_describe=False)
        when = started if started is not None else time.time()
        self.registry.register(SnapshotCollector(snapshot, started=when, version=version))
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, memory, fds
        self._server: ScrapeServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, snapshot: Snapshot, *, started: float | None = None
    ) -> MetricsServer | None:
        """None when METRICS_LISTEN is empty (the default); ConfigError when not allowed."""
        if settings.metrics_listen is None:
            return None
        host, port = settings.metrics_listen
        return cls(
            host, port, snapshot, allow_remote=settings.metrics_allow_remote, started=started
        )

    def start(self) -> None:
        """Bind and serve; OSError when the address cannot be bound."""
        from portsentinel.daemon.scrape import serve  # noqa: PLC0415 - only when on

        self._server, self._thread = serve(self.host, self.port, self.registry)

    def alive(self) -> bool:
        """False once the serving thread ended although ``close`` was not called."""
        thread = self._thread
        return thread is None or thread.is_alive()

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the real port when 0 was asked for)."""
        if self._server is None:
            return self.host, self.port
        return self.host, int(self._server.server_address[1])

    def close(self, timeout: float = 5.0) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout)
