"""Fleet-wide sweeps: a source that probes a port or two on each of many hosts, below every
host's own threshold, is banned on all of them.

Each host reports what stays below its threshold (events of reason ``below trigger`` or ``too
few ports for a block``, read from its own store, never from the packet path) as alerts
without a decision (``alerts.report_alert``). ``Reporter`` keeps their number bounded: each
source once per ``FLEET_SWEEP_WINDOW`` and at most ``FLEET_SWEEP_REPORTS`` an hour, since
LAPI's ``flush.max_items`` counts them and deletes the oldest alerts with their active bans
(README: raise it). After its report is accepted a host asks LAPI for the reports on that
source within the window (``GET /v1/alerts``, with the machine's token: 1.4.6 refuses the
bouncer key there, and its ``ip`` filter only matches alerts that carry a decision, so the
question is ``scope=ip&value=ADDR&has_active_decision=false``). The reporting hosts are told
apart by LAPI's ``machine_id`` (which the reporter cannot choose, unlike its ``meta``); when
``FLEET_SWEEP_HOSTS`` of them reported it and no sweep decision is there yet, this host pushes
one ban of kind SWEEP whose message lists the hosts and ports: every host, itself included,
applies it through its pull.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from portsentinel.fleet import alerts
from portsentinel.fleet.lapi import Lapi, LapiError
from portsentinel.model import Reason
from portsentinel.store.fleet import OutboxItem
from portsentinel.store.records import EventRow

WEAK: Final = frozenset({Reason.BELOW_TRIGGER.value, Reason.WEAK_EVIDENCE.value})
HOUR: Final = 3600.0
MEMORY: Final = 100_000  # sources whose last report is remembered
Log = Callable[[str], None]


def reports(
    events: Iterable[EventRow], now: float, *, host: str, window: float,
    banned: Callable[[str], bool],
) -> list[OutboxItem]:  # fmt: skip
    """The weak-evidence reports of ``events``, one per source (pure)."""
    slot = max(1, int(window))
    by_source: dict[str, list[EventRow]] = {}
    for ev in events:
        if ev.reason in WEAK:
            by_source.setdefault(ev.src, []).append(ev)
    out = []
    for src, evs in sorted(by_source.items()):
        if banned(src):
            continue
        ports = sorted({f"{e.proto}/{e.port}" for e in evs})
        first, last = min(e.time for e in evs), max(e.time for e in evs)
        ref = f"report:{src}:{int(last) // slot}"
        body = {"alert": alerts.report_alert(src, ports, first, last, now, host=host)}
        out.append(OutboxItem(ref, "report", src, None, body, now, now))
    return out


class Reporter:
    """The bound on reports: a source once per ``window``, ``per_hour`` in all (a sliding
    hour); what is over is counted (``dropped``), never queued."""

    def __init__(self, *, window: float, per_hour: int) -> None:
        self.window = window
        self.per_hour = per_hour
        self._last: dict[str, float] = {}  # source -> when it was last reported
        self._sent: list[float] = []  # when each report of the last hour was let through
        self.dropped = 0

    def admit(self, items: Sequence[OutboxItem], now: float) -> list[OutboxItem]:
        self._sent = [t for t in self._sent if t > now - HOUR]
        if len(self._last) > MEMORY:
            self._last = {a: t for a, t in self._last.items() if t > now - self.window}
        out = []
        for item in items:
            last = self._last.get(item.address)
            if last is not None and now - last < self.window:
                continue  # reported in this window already: LAPI has it
            if len(self._sent) >= self.per_hour:
                self.dropped += 1
                continue
            self._last[item.address] = now
            self._sent.append(now)
            out.append(item)
        return out


def hosts_of(found: Sequence[Mapping[str, Any]]) -> dict[str, set[str]]:
    """reporting machine -> ports, from LAPI's reports (pure). The machine is LAPI's
    ``machine_id``: the login it authenticated, which a reporter cannot choose as it can the
    host name in its ``meta``."""
    out: dict[str, set[str]] = {}
    for alert in found:
        if alert.get("scenario") != alerts.PREFIX + "probe" or alert.get("decisions"):
            continue
        machine = alert.get("machine_id")
        if not isinstance(machine, str) or not machine:
            continue
        meta = {
            m.get("key"): m.get("value") for m in alert.get("meta") or [] if isinstance(m, dict)
        }
        ports = str(meta.get("ports", ""))
        out.setdefault(machine, set()).update(p for p in ports.split(",") if p)
    return out


def sweep_alert(
    address: str, hosts: Mapping[str, set[str]], now: float, length: float
) -> dict[str, Any]:
    listed = "; ".join(f"{h}: {','.join(sorted(p))}" for h, p in sorted(hosts.items()))
    name = alerts.PREFIX + alerts.SWEEP
    return {
        "scenario": name, "scenario_hash": "", "scenario_version": "",
        "message": f"attackalert: SWEEP from host: {address} across {len(hosts)} hosts ({listed})",
        "events_count": len(hosts), "start_at": alerts.rfc3339(now), "stop_at": alerts.rfc3339(now),
        "capacity": 0, "leakspeed": "0", "simulated": False, "remediation": True, "events": [],
        "source": {"scope": "Ip", "value": address, "ip": address},
        "meta": [{"key": "hosts", "value": ",".join(sorted(hosts))}],
        "decisions": [{"type": "ban", "scope": "Ip", "value": address,
                       "duration": alerts.go_duration(length), "origin": alerts.ORIGIN,
                       "scenario": name}],
    }  # fmt: skip


class SweepRule:
    """Asks LAPI about the sources this host reported; see the module docstring."""

    def __init__(self, lapi: Lapi, *, hosts: int, window: float, length: float, log: Log):
        self.lapi = lapi
        self.hosts = hosts
        self.window = window
        self.length = length
        self.log = log
        self.checks = 0
        self.check_seconds = 0.0
        self.banned = 0

    def check(self, addresses: Iterable[str], now: float, clock: Callable[[], float]) -> None:
        for address in sorted(set(addresses)):
            started = clock()
            try:
                found = self.lapi.reports(address, since=self.window)
                seen = hosts_of(found)
                if len(seen) < self.hosts or self._decided(address):
                    continue
                self.lapi.post_alerts([sweep_alert(address, seen, now, self.length)])
            except LapiError as exc:
                self.log(f"adminalert: fleet: sweep check of {address} failed: {exc}")
                continue
            finally:
                self.checks += 1
                self.check_seconds += clock() - started
            self.banned += 1
            self.log(f"attackalert: SWEEP from host: {address} across {len(seen)} hosts "
                     f"({', '.join(sorted(seen))}): banned fleet-wide")  # fmt: skip

    def _decided(self, address: str) -> bool:
        if self.lapi.api_key is None:
            return False
        return any(d.get("scenario") == alerts.PREFIX + alerts.SWEEP
                   for d in self.lapi.decisions(address))  # fmt: skip
