"""``replay --state-dir``: what a replay found, recorded into an offline store the way the
daemon would have, with the capture's times: one event per decision it printed (a source's
repeats limited as the daemon limits them, unless ``--every-probe``), and a ban record per
first block or command decision (never applied to any firewall: the store is marked offline).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from portsentinel.cli.replay_capture import ReplayStats
from portsentinel.config.schema import Settings
from portsentinel.detect.detector import Detector
from portsentinel.detect.track import kinds_of
from portsentinel.model import Action, Decision, DecoyCut, Proto
from portsentinel.respond.backends import Backends
from portsentinel.respond.bans import BanManager
from portsentinel.store.records import EventRow, LiftedBy
from portsentinel.store.sqlite import Store

EVENT_BATCH: Final = 5_000  # replay events written per transaction

Emit = Callable[[Decision], None]


class ReplayRecorder:
    """Records a replay's decisions as the daemon would have, with the capture's times.

    Called with each decision as the detector takes it, so a ban's evidence is the source's
    state at that moment, as it is live. Bans are records only: the store is offline.
    """

    def __init__(self, store: Store, settings: Settings, detector: Detector) -> None:
        if not store.offline:
            raise ValueError("replay records go into an offline store only")
        self.store = store
        self.detector = detector
        # Ban length and plan by the daemon's own rules; the backends are never started.
        self._rules = BanManager(settings, store, Backends(settings), log=lambda _line: None)
        self._rows: list[EventRow] = []
        self._last: float | None = None
        self.events = 0
        self.bans = 0

    def __call__(self, decision: Decision) -> None:
        self._rows.append(EventRow.from_decision(decision, decision.time))
        self._last = decision.time
        if decision.first and decision.action in (Action.BLOCK, Action.COMMAND):
            self.flush()  # the ban's events first, as a reader would expect
            self._ban(decision)
        elif len(self._rows) >= EVENT_BATCH:
            self.flush()

    def cut(self, cut: DecoyCut) -> None:
        """A ban cut as a decoy's: its record ends DECOY_BAN_DURATION after the cut."""
        self.flush()
        ban = self.store.ban_for(cut.src)
        if ban is not None:
            seconds = self._rules.terms.decoy
            detail = {"group": list(cut.group), "evidence": cut.evidence, "seconds": seconds}
            self.store.cut_ban(ban.id, cut.time + seconds, at=cut.time, detail=detail)

    def flush(self) -> None:
        self.events += self.store.add_events(self._rows)
        self._rows = []

    def finish(self) -> None:
        """Write what is buffered; end bans whose time ran out before the capture did."""
        self.flush()
        if self._last is not None:
            self._expire(self._last)

    def _ban(self, decision: Decision) -> None:
        now = decision.time
        self._expire(now)
        if self.store.ban_for(decision.src) is not None:
            return  # an earlier replay's ban still holds at this time (the daemon's rule)
        level = 1 if decision.action is Action.BLOCK else 2
        plan = self._rules.plan(level)
        if not plan:
            return  # nothing configured to act with: the daemon records no ban either
        seconds, offence = self._rules.length(decision.src, now)
        if decision.decoy:
            seconds = self._rules.terms.as_decoy(seconds)
        record = self.store.begin_ban(
            decision.src,
            None,
            created=now,
            expires=None if seconds is None else now + seconds,
            reason=f"{decision.kind.value} scan: {decision.reason.value}",
            rule=decision.rule,
            evidence=self._evidence(decision, plan),
            offence=offence,
        )
        self.store.activate(record.id)
        self.bans += 1

    def _expire(self, now: float) -> None:
        for record in self.store.due_for_expiry(now):
            ended = now if record.expires is None else record.expires
            self.store.lift(record.id, ended, LiftedBy.EXPIRY)

    def _evidence(self, decision: Decision, plan: list[str]) -> dict[str, object]:
        evidence: dict[str, object] = {
            "hits": decision.hits,
            "plan": plan,
            "port": decision.port,
            "proto": decision.proto.key,
            "mode": decision.mode.value if decision.mode is not None else None,
            "action": decision.action.value,
        }
        packed = ipaddress.ip_address(decision.src).packed
        decoy = self.detector.decoy_evidence(packed)
        if decoy is not None:
            evidence["decoy"] = decoy
        state = self.detector.source(packed)
        if state is not None:
            evidence.update(
                hits=state.hits,
                ports=[f"{Proto(k >> 16).key}/{k & 0xFFFF}" for k in state.ports],
                kinds=[k.value for k in kinds_of(state.kinds)],
                first_seen=state.first_seen,
                last_seen=state.last_seen,
                destinations=state.destinations,
            )
        return evidence


@dataclass(frozen=True)
class Recorded:
    """What ``record_replay`` did: the replay's statistics and what went into the store."""

    stats: ReplayStats
    path: str
    events: int
    bans: int

    def summary(self) -> str:
        return f"recorded {self.events} events and {self.bans} bans in {self.path} (offline)"


def record_replay(
    replay: Callable[[Emit, Callable[[DecoyCut], None]], ReplayStats],
    detector: Detector,
    emit: Emit,
    *,
    state_dir: str,
    settings: Settings,
    on_cut: Callable[[DecoyCut], None] | None = None,
) -> Recorded:
    """``replay`` (``run_replay`` given its emitter) that also records into ``state_dir``'s
    offline store what it emits: what the daemon would have stored, or every decision with
    ``--every-probe``.

    The store is opened first, so a live store there (refused) stops the replay before it
    starts. What was seen is written even when the capture turns out unreadable half-way.
    """
    store = Store.open(state_dir, offline=True)
    try:
        recorder = ReplayRecorder(store, settings, detector)

        def both(decision: Decision) -> None:
            emit(decision)
            recorder(decision)

        def cut_both(cut: DecoyCut) -> None:
            if on_cut is not None:
                on_cut(cut)
            recorder.cut(cut)

        try:
            stats = replay(both, cut_both)
        finally:
            recorder.finish()
        return Recorded(stats, store.path, recorder.events, recorder.bans)
    finally:
        store.close()
