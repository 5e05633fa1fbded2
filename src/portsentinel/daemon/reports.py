"""What the running pipeline reports: ``status``, the counters and the metrics snapshot.

Mixed into ``pipeline.Pipeline``, whose parts it reads (the annotations below); every value is
read when asked, from the loop's thread (``status``, ``statistics``) or the metrics endpoint's
(``metrics_snapshot``: each read is one step under the GIL).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from portsentinel import __version__
from portsentinel.alert.sinks import EventSink
from portsentinel.capture.listeners import Listeners
from portsentinel.capture.rings import ProtocolRings
from portsentinel.config.setup import Setup
from portsentinel.daemon.metrics import refused_counts
from portsentinel.daemon.outputs import Outputs
from portsentinel.daemon.unsolicited import UnsolicitedSource
from portsentinel.detect.detector import Detector
from portsentinel.host.neverblock import NeverBlock
from portsentinel.host.view import HostView
from portsentinel.respond.worker import Responder

if TYPE_CHECKING:
    from portsentinel.fleet.link import FleetLink


class Reports:
    """``Pipeline``'s reports; see the module docstring."""

    setup: Setup
    events: EventSink | None
    host: HostView
    detector: Detector
    ring: ProtocolRings | None
    listeners: Listeners | None
    unsolicited: UnsolicitedSource | None
    never_block: NeverBlock
    responder: Responder | None
    fleet: FleetLink | None
    outputs: Outputs
    dry_run: bool
    decode_errors: int

    def status(self, started: float) -> dict[str, object]:
        """What `portsentinel status` shows: modes, ports watched, counters, protection."""
        setup = self.setup
        watched = {
            mode.value: len(self.detector.watched_ports(mode.proto))
            for mode in (setup.tcp_mode, setup.udp_mode)
            if mode is not None
        }
        return {
            "pid": os.getpid(),
            "version": __version__,
            "started": started,
            "config": setup.config.path,
            "modes": [m.value for m in (setup.tcp_mode, setup.udp_mode) if m is not None],
            "ports_watched": watched,
            "ports_in_use": {p.key: len(v.ports) for p, v in self.host.in_use.items()},
            "never_block_networks": len(self.never_block.addresses),
            "responses": self.responder is not None,
            "dry_run": self.dry_run,  # would-be bans recorded, no firewall touched
            "store_outage": self._store_outage(),
            "fleet": self.fleet.status() if self.fleet is not None else None,
            "counters": self.statistics(),
        }

    def _store_outage(self) -> dict[str, object] | None:
        outage = self.responder.store_outage if self.responder is not None else None
        return None if outage is None else {"since": outage[0], "error": outage[1]}

    def metrics_snapshot(self) -> dict[str, object]:
        """Everything the metrics endpoint exports, read at scrape time (its own thread)."""
        snapshot: dict[str, object] = {**self.statistics(), **self.outputs.counts.snapshot()}
        # Refusals are counted by the detector, also those whose records were held back.
        snapshot["bans_refused"] = refused_counts(self.detector.stats.ignored_by_reason)
        notifier = self.outputs.notifier
        if notifier is not None:
            snapshot["notifications"] = notifier.stats()
        if self.responder is not None:
            snapshot["bans_active"] = self.responder.bans_active
            snapshot["bans_added"] = self.responder.bans_added
            snapshot["backends"] = self.responder.health()
            snapshot["store_outage"] = int(self.responder.store_outage is not None)
            for key, count in self.responder.first_bans.items():
                snapshot[f"first_bans_{key}"] = count
        if self.fleet is not None:
            for key, value in self.fleet.status().items():
                if isinstance(value, int | float | bool) and value is not None:
                    snapshot[f"fleet_{key.removeprefix('fleet_')}"] = value
        return snapshot

    def statistics(self) -> dict[str, int]:
        """Counters for later status and metrics: packets, probes, alerts, drops, errors."""
        d = self.detector.stats
        out: dict[str, int] = {
            "packets": d.packets,
            "probes": d.probes,
            "not_probe": d.not_probe,
            "in_use": d.in_use,
            "recently_in_use": d.recently_in_use,
            "not_local": d.not_local,
            "replies": d.replies,
            "decode_errors": self.decode_errors,
            "tracked_sources": d.tracked_sources,
            "sources_evicted": d.sources_evicted,
            "decoy_groups": self.detector.decoy_groups,
        }
        out.update({f"probes_{k.value.lower()}": n for k, n in d.probes_by_kind.items()})
        out.update({f"decisions_{a.value}": n for a, n in d.decisions_by_action.items()})
        out["records_held"] = self.outputs.held
        if self.outputs.events is not None:
            out["events_lost"] = self.outputs.events.lost
        if self.responder is not None:
            out["alerts_dropped"] = self.responder.alerts_dropped
            out["records_dropped"] = self.responder.rows_dropped
            out["names_skipped"], out["names_late"] = self.responder.names_missed
            if (dropped := self.responder.ingress_drops) is not None:  # read every 10 s
                out["ingress_dropped_packets"], out["ingress_dropped_bytes"] = dropped
        if (quiet := self.outputs.quiet) is not None:
            out["quiet_sources"] = quiet.added
            out["quiet_packets"] = self.outputs.quiet_packets
        if self.ring is not None:
            r = self.ring.stats()
            out.update(
                kernel_packets=r.packets,
                kernel_drops=r.drops,
                kernel_freezes=r.freeze_count,
                ring_handled=r.handled,
            )
        if self.listeners is not None:
            s = self.listeners.stats
            out["connects"] = s.accepted + s.datagrams
        if self.unsolicited is not None:
            out.update(self.unsolicited.statistics())
        out["reply_checks"] = self.host.reply_checks
        out["reply_checks_skipped"] = self.host.reply_checks_skipped
        return out
