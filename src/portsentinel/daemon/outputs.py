"""Decisions into the daemon's outputs: PortSentry's log lines, JSON events, store rows,
responses, notifications, and the limits and summaries that keep a flood from filling the disk.

The pipeline hands every decision here (``emit``) and sets the clock once a loop turn
(``now``, ``wall_offset``). Repeats (a blocked scanner's further probes, a flood of refused
sources) are limited per source and reason in the log and the store and summarised every
SUMMARY_EVERY seconds, never dropped silently; without an events stream the detector asks the
limiter (``gate``) before it builds a decision at all.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
from typing import TYPE_CHECKING

from portsentinel.alert import portsentry2_log
from portsentinel.alert.portsentry_log import detection_lines, held_back_line
from portsentinel.daemon.metrics import DecisionCounts
from portsentinel.detect.budget import SHORT_BAN
from portsentinel.detect.track import kinds_of
from portsentinel.model import Action, Decision, Proto, Reason, addr_text
from portsentinel.ratelimit import SUMMARY_EVERY, RepeatLimiter
from portsentinel.respond.bans import BanRequest
from portsentinel.respond.decoys import CutRequest
from portsentinel.respond.hold import releases
from portsentinel.respond.quiet import Quiet
from portsentinel.respond.quiet import eligible as quiet_eligible
from portsentinel.store.portsentry_files import PortSentryFiles
from portsentinel.store.records import EventRow

if TYPE_CHECKING:
    from portsentinel.alert.notify import Notifier
    from portsentinel.alert.sinks import EventSink, LogSink
    from portsentinel.config.schema import Settings
    from portsentinel.detect.detector import Detector
    from portsentinel.host.neverblock import NeverBlock
    from portsentinel.respond.worker import Responder

NOTICE_EVERY = 60.0  # repeated refusals (budget, never-block) are summarised this often
# Probe records go to the store in batches: one SQLite commit costs more than the records it
# carries (a commit per loop turn cost ~100 us per probe at 2k probes/s). Bans never wait.
ROWS_EVERY = 0.5  # seconds a record may wait for its batch
ROWS_BATCH = 1000  # records that make a batch at once


class Outputs:
    """Where the daemon's decisions go (log, events, store, responder, notifier); the
    pipeline owns one."""

    def __init__(
        self,
        log: LogSink,
        events: EventSink | None,
        detector: Detector,
        never_block: NeverBlock,
    ) -> None:
        self.log = log
        self.events = events
        self.detector = detector
        self.never_block = never_block
        self.responder: Responder | None = None
        self.notifier: Notifier | None = None
        self.counts = DecisionCounts()
        self.repeats = RepeatLimiter()
        self.now = 0.0  # the loop's monotonic clock, set once a turn
        self.wall_offset = 0.0  # wall time = monotonic + this
        self._notices: dict[str, tuple[float, int]] = {}
        self._rows: list[EventRow] = []
        self._rows_since = 0.0  # when the oldest record of ``_rows`` was made
        self._dropped = (0, 0)  # the responder's drop counts at the last summary
        self._pressed_said_until = 0.0  # when the budget's pressure may be said again
        self._events_lost = 0  # the events stream's lost lines at the last summary
        # LOG_FORMAT 2.0: the ``Scan from:`` line, also in HISTORY_FILE (written once a turn)
        self.portsentry2 = False
        self.dry_run = False
        self.history: PortSentryFiles | None = None
        self._history_lines: list[str] = []
        self._log_only: frozenset[Proto] = frozenset()  # protocols whose BLOCK level is 0
        # Without an events stream every ignored probe's record would be rate-limited anyway:
        # the detector asks the limiter first and builds nothing for a held record. With
        # --events the operator asked for every decision, so all are built.
        self.gated = events is None
        if self.gated:
            detector.set_record_gate(self.repeats.allow_pair)  # ``gate``, one call less
        # QUIET_REPEATS: muted sources' probes counted in the kernel (``respond/quiet.py``)
        self.quiet: Quiet | None = None
        self._quiet_allowed = False  # only the service's own responder writes to the kernel
        self.quiet_packets = 0  # what the kernel counted for them, as summaries took it

    def set_words(self, settings: Settings, *, dry_run: bool) -> None:
        """Whose words the lines use (LOG_FORMAT) and, for 2.0, the history file they go to
        too (none in a dry run, which writes no file outside its store)."""
        self.flush_history()
        self.portsentry2 = settings.log_format == "2.0"
        self.dry_run = dry_run
        self.history = None
        levels = {Proto.TCP: settings.block_tcp, Proto.UDP: settings.block_udp}
        self._log_only = frozenset(p for p, level in levels.items() if level == 0)
        if self.portsentry2 and settings.history_file and not dry_run:
            self.history = PortSentryFiles(
                settings.history_file, "", max_bytes=settings.history_max_mib << 20
            )
        self._set_quiet(settings, dry_run=dry_run)

    def allow_quiet(self, settings: Settings, *, dry_run: bool) -> None:
        """The service's responder is attached: QUIET_REPEATS may write to the kernel."""
        self._quiet_allowed = True
        self._set_quiet(settings, dry_run=dry_run)

    def _set_quiet(self, settings: Settings, *, dry_run: bool) -> None:
        """QUIET_REPEATS as configured; what was quiet is judged afresh (a reload)."""
        quiet = self.quiet
        if quiet is not None:
            quiet.clear()
        if not self._quiet_allowed or not quiet_eligible(settings, dry_run=dry_run):
            if quiet is not None:
                quiet.close()
            self.quiet = None
        elif quiet is None:
            self.quiet = Quiet(settings.quiet_repeats, self.log.line)
        else:
            quiet.seconds = settings.quiet_repeats

    def unquiet(self, src: bytes) -> None:
        """``src``'s response ended: its probes reach the daemon again at once."""
        if self.quiet is not None and self.responder is not None:
            self.quiet.release(src)

    @property
    def held(self) -> int:
        """Records held back so far (probes counted without a record)."""
        return self.detector.stats.held if self.gated else self.repeats.total_suppressed

    def emit(self, decisions: list[Decision]) -> None:
        """Log lines, JSON events, store rows and responses for a batch of decisions.

        Repeats (a blocked scanner's further probes, a flood of refused sources) are limited
        per source and reason in the log and the store, and summarised every few seconds;
        the events stream, which the operator asked for with --events, gets every decision.
        """
        events, offset, line = self.events, self.wall_offset, self.log.line
        store = self.responder is not None
        allow, count, notifier = self.repeats.allow, self.counts.add, self.notifier
        gated = self.gated
        responder = self.responder
        holder = responder if responder is not None and responder.holds else None
        for decision in decisions:
            wall = decision.time + offset
            if decision.first:  # the response first: a first ban goes to the kernel from here
                self._respond(decision, wall)
            if holder is not None and releases(decision):  # KERNEL_HOLD: not banned: let go
                holder.release(decision.src)
            count(decision)
            if events is not None:
                events.event(decision, wall)
            if decision.first:
                if notifier is not None:
                    notifier.submit(decision, wall)
            elif (
                decision.action is Action.IGNORED
                and not gated
                and not allow((decision.src, decision.reason), decision.time)
            ):
                continue  # past its rate: counted, summarised on a later tick
            elif decision.reason in _NOTICED:
                self._notice(decision)
            if self.portsentry2:
                self._scan_from(decision, wall)
            else:
                for message in detection_lines(decision):
                    line(message)
            if store:
                rows = self._rows
                if not rows:
                    self._rows_since = self.now
                rows.append(_row(decision, wall))
                if len(rows) >= ROWS_BATCH:  # at once: a flood's loop turn may bring 100k
                    self._send_rows()

    def _scan_from(self, decision: Decision, wall: float) -> None:
        dry, log_only = self.dry_run, decision.proto in self._log_only
        for message in portsentry2_log.detection_lines(decision, dry_run=dry, log_only=log_only):
            self.log.line(message)
        if self.history is not None:
            line = portsentry2_log.history_line(decision, wall, dry_run=dry, log_only=log_only)
            self._history_lines.append(line + "\n")

    def flush_history(self) -> None:
        """2.0's history lines of the turn, in one append; a write that fails is logged and
        its lines dropped (the daemon goes on, as 2.0 does)."""
        lines, self._history_lines = self._history_lines, []
        if not lines or self.history is None:
            return
        try:
            self.history.append_history("".join(lines))
        except OSError as exc:
            self.log.line(
                f"adminalert: ERROR: cannot write the history file {self.history.history}: "
                f"{exc.strerror or exc}; {len(lines)} lines lost"
            )

    def gate(self, src: bytes, reason: Reason, now: float) -> bool:
        return self.repeats.allow((src, reason), now)

    def summarise(self) -> None:
        """Every SUMMARY_EVERY seconds: what was held back, and what the response worker
        could not take (it was too far behind) since the last summary."""
        for src, count in self.detector.take_held().items():
            self.repeats.add_held((src, Reason.ALREADY_BLOCKED), count)
        self._fold_quiet()
        held, top = self.repeats.summary()
        if held:
            worst = [(_key_text(key), n) for key, n in top]
            self.log.line(held_back_line(held, SUMMARY_EVERY, worst))
        responder = self.responder
        if responder is not None:
            alerts = responder.alerts_dropped - self._dropped[0]
            rows = responder.rows_dropped - self._dropped[1]
            self._dropped = (responder.alerts_dropped, responder.rows_dropped)
            if alerts or rows:
                self.log.line(
                    f"adminalert: WARNING: the response worker fell behind: {alerts} alerts "
                    f"not written to the history file and {rows} probe records not stored "
                    f"in the last {SUMMARY_EVERY:.0f}s"
                )
        events = self.events
        if events is not None and events.lost != self._events_lost:
            lost, self._events_lost = events.lost - self._events_lost, events.lost
            self.log.line(
                f"adminalert: ERROR: {lost} events could not be written "
                f"({events.error or 'written again since'}) in the last {SUMMARY_EVERY:.0f}s"
            )

    def _fold_quiet(self) -> None:
        """What the kernel counted for quiet sources (read by the worker's repair check) joins
        the held records of the summary."""
        if self.responder is None:
            return
        readings = self.responder.quiet_counts
        while not readings.empty():
            for (src, _proto), count in readings.get_nowait().items():
                self.repeats.add_held((src, Reason.ALREADY_BLOCKED), count)
                self.quiet_packets += count

    def _respond(self, decision: Decision, wall: float) -> None:
        responder = self.responder
        if responder is None:
            if decision.action in (Action.BLOCK, Action.COMMAND):
                self.log.line(f"attackalert: Host {decision.src} not blocked (dry run)")
            return
        request = BanRequest(
            address=decision.src,
            port=decision.port,
            proto=decision.proto,
            mode=decision.mode,
            level=1 if decision.action is Action.BLOCK else 2,
            reason=f"{decision.kind.value} scan: {decision.reason.value}",
            rule=decision.rule,
            provisional=decision.provisional,
            decoy=decision.decoy,
        )
        if decision.provisional and self.now >= self._pressed_said_until:
            self._pressed_said_until = self.now + SUMMARY_EVERY * 6
            self.log.line(
                "adminalert: WARNING: many new bans at once (a flood of sources?): bans "
                f"without a completed handshake last at most {SHORT_BAN / 60:.0f} minutes "
                "while it goes on"
            )
        if decision.action is Action.ALERT:
            responder.alert(dataclasses.replace(request, evidence=self._evidence(decision)))
        else:  # the evidence once the ban is in the kernel: gathering it takes a while, cold
            responder.ban(request, functools.partial(self._evidence, decision))

    def _evidence(self, decision: Decision) -> dict[str, object]:
        packed = ipaddress.ip_address(decision.src).packed
        state = self.detector.source(packed)
        decoy = self.detector.decoy_evidence(packed)
        extra = {} if decoy is None else {"decoy": decoy}
        if state is None:
            return {"hits": decision.hits, **extra}
        offset = self.wall_offset
        return {
            **extra,
            "hits": state.hits,
            "ports": [
                f"{'tcp' if k >> 16 == Proto.TCP else 'udp'}/{k & 0xFFFF}" for k in state.ports
            ],
            "kinds": [k.value for k in kinds_of(state.kinds)],
            "first_seen": state.first_seen + offset,
            "last_seen": state.last_seen + offset,
            "destinations": state.destinations,
        }

    def _notice(self, decision: Decision) -> None:
        """Refusals that protect the host are logged, but a flood of them is summarised: one
        line per protection reason (a forged flood brings a new source per packet) and minute.
        """
        why = ""
        if decision.reason is Reason.NEVER_BLOCK:
            why = self.never_block.why(ipaddress.ip_address(decision.src).packed) or "protected"
        key = f"{decision.reason.value}:{why}"
        last, count = self._notices.get(key, (-NOTICE_EVERY, 0))
        if self.now - last < NOTICE_EVERY:
            self._notices[key] = (last, count + 1)
            return
        self._notices[key] = (self.now, 0)
        more = f" ({count} more since the last notice)" if count else ""
        if decision.reason is Reason.NEVER_BLOCK:
            self.log.line(
                f"attackalert: Host {decision.src} not blocked: never-block set ({why}){more}"
            )
        else:
            self.log.line(
                f"adminalert: ban budget exceeded: {decision.src} reported but not blocked{more}"
            )

    def flush(self, *, everything: bool = False) -> None:
        """Once a loop turn: first bans held in the turn to the kernel, records that waited
        long enough to the store, lines out."""
        if self.responder is not None:
            self.responder.end_turn()  # the turn's first bans, before any cut of them
        for cut in self.detector.take_cuts():
            if self.responder is not None:
                self.responder.cut(CutRequest(cut.src, cut.group, cut.evidence))
        muted = self.detector.take_muted()
        if muted and self.quiet is not None and self.responder is not None:
            self.quiet.add(muted)
        if self._rows and (everything or self.now - self._rows_since >= ROWS_EVERY):
            self._send_rows()
        self.flush_history()
        self.log.flush()
        if self.events is not None:
            self.events.flush()

    def _send_rows(self) -> None:
        if self.responder is not None:
            self.responder.events(self._rows)
        self._rows = []


_NOTICED = frozenset({Reason.NEVER_BLOCK, Reason.BAN_BUDGET})


def _key_text(key: object) -> str:
    if isinstance(key, tuple) and len(key) == 2:
        src = addr_text(key[0]) if isinstance(key[0], bytes) else key[0]
        return f"{src} {getattr(key[1], 'value', key[1])}"
    return str(key)


def _row(decision: Decision, wall: float) -> EventRow:
    return EventRow(
        time=wall,
        src=decision.src,
        dst=decision.dst,
        proto=decision.proto.key,
        port=decision.port,
        kind=decision.kind.value,
        action=decision.action.value,
        reason=decision.reason.value,
        mode=decision.mode.value if decision.mode is not None else None,
        rule=decision.rule,
        hits=decision.hits,
        ports_seen=decision.ports_seen,
        ip_options=decision.ip_options,
        score=decision.score,
        contacts=decision.contacts,
        scanner=decision.scanner,
        group=" ".join(decision.group) or None,
    )
