"""Push: this host's bans to LAPI, through the store's outbox (``store/fleet``).

``scan`` looks at the live bans and the bans it pushed: a ban goes into the outbox when
``alerts.push_verdict`` says so; a ban lifted or cut before that is withheld for good; a pushed
ban lifted here by ``unblock`` (or cut as a decoy) queues the deletion of its fleet decisions;
one that ends here in a local way (expiry, ``allow``, the never-block set, ``unblock --local``)
is left to end in LAPI on its own time. A pushed ban whose end moved earlier than when the link
first saw it (a decoy group's cut, ``store.cut_ban``: DECOY_BAN_DURATION) is withdrawn the
same way, within the link's scan period: the decoy code needs to call nothing. ``send`` posts
what is due, ``CROWDSEC_BATCH_MAX`` alerts per POST, and removes each message once LAPI accepted
it; a failure leaves the messages in the outbox with a back-off (1 s doubling to 5 min), and one
that may have taken effect anyway (``LapiError.ambiguous``: 1.4.6 stores the decisions of a
"database is locked" 500) is checked with LAPI before it is sent again, so a retry makes no
duplicate.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from portsentinel.fleet import alerts
from portsentinel.fleet.lapi import Lapi, LapiError
from portsentinel.store.fleet import OutboxItem
from portsentinel.store.records import LiftedBy
from portsentinel.store.sqlite import Store

BACKOFF_FIRST: Final = 1.0
BACKOFF_MAX: Final = 300.0
# Lifts that stay on this host: the fleet's decision ends on its own time.
LOCAL_ENDS: Final = frozenset({LiftedBy.EXPIRY.value, LiftedBy.ALLOW.value,
                               LiftedBy.WIDENED.value, LiftedBy.RECONCILE.value,
                               LiftedBy.DAMAGED.value})  # fmt: skip
CHECK: Final = "check"  # body flag: an earlier try may have landed; ask LAPI first

Log = Callable[[str], None]


@dataclass
class PushStats:
    pushed: int = 0  # bans LAPI accepted
    withdrawn: int = 0  # bans whose fleet decisions were deleted
    withheld: int = 0  # bans never pushed (lifted or cut first)
    reports: int = 0  # weak-evidence reports accepted
    refused: int = 0  # messages the full outbox had no room for
    duplicates_avoided: int = 0  # retried messages LAPI already had
    failures: int = 0
    last_push: float | None = None
    last_error: str | None = None
    batches: list[int] = field(default_factory=list)


def backoff(attempts: int) -> float:
    base: float = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** min(attempts, 20))
    return base * random.uniform(0.8, 1.0)


class Pusher:
    """See the module docstring."""

    def __init__(
        self, store: Store, lapi: Lapi, *, host: str, delay: float, cap: float,
        batch: int, outbox_max: int, log: Log,
    ) -> None:  # fmt: skip
        self.store = store
        self.lapi = lapi
        self.host = host
        self.delay = delay
        self.cap = cap
        self.batch = batch
        self.outbox_max = outbox_max
        self.log = log
        self.stats = PushStats()

    # --- deciding what goes out ---------------------------------------------------------------
    def scan(self, now: float) -> None:
        store = self.store
        live = [r for r in store.active_bans(now) if not r.offline]
        states = store.fleet_ban_states(r.id for r in live)
        notes: list[tuple[int, str, float | None, str]] = []
        queue: list[OutboxItem] = []
        for record in live:
            state, first = states.get(record.id, (None, record.expires))
            if state == "pushed" and alerts.shortened(record, first):
                # Cut since it went out (a decoy's ban): its fleet decisions are withdrawn.
                queue.append(OutboxItem(f"unban:{record.id}", "unban", record.address,
                                        record.id, {}, now, now))  # fmt: skip
                notes.append((record.id, record.address, None, "withdrawn"))
                self.log(f"attackalert: fleet: the ban on {record.address} was cut short "
                         "(a decoy's): its fleet decisions are withdrawn")  # fmt: skip
                continue
            if state not in (None, "seen"):
                continue
            verdict = alerts.push_verdict(record, first, now, self.delay)
            if verdict == alerts.PUSH and record.prefix not in (32, 128):
                verdict = alerts.WITHHOLD  # scope Ip only: a prefix ban stays local
            if verdict == alerts.PUSH:
                queue.append(OutboxItem(f"ban:{record.id}", "ban", record.address, record.id,
                                        {}, now, now))  # fmt: skip
                notes.append((record.id, record.address, first, "queued"))
            elif verdict == alerts.WITHHOLD:
                notes.append((record.id, record.address, first, "withheld"))
                self.stats.withheld += 1
            elif state is None:
                notes.append((record.id, record.address, first, "seen"))
        live_ids = {r.id for r in live}
        for ban_id, address, state in store.fleet_bans_in("seen", "queued", "pushed"):
            if ban_id in live_ids:
                continue
            ended = store.ban(ban_id)
            if state != "pushed":
                notes.append((ban_id, address, None, "withheld"))
                self.stats.withheld += 1
            elif ended is not None and (ended.lifted_by or "") not in LOCAL_ENDS:
                queue.append(OutboxItem(f"unban:{ban_id}", "unban", address, ban_id, {}, now,
                                        now))  # fmt: skip
                notes.append((ban_id, address, None, "withdrawn"))
            else:
                notes.append((ban_id, address, None, "ended"))
        if queue:
            self._queue(queue)
        if notes:
            store.fleet_note_bans(notes, now)

    def _queue(self, items: Sequence[OutboxItem]) -> None:
        refused = self.store.outbox_put(items, self.outbox_max)
        if refused:
            self.stats.refused += len(refused)
            self.log(
                f"adminalert: WARNING: fleet outbox full (CROWDSEC_OUTBOX_MAX={self.outbox_max})"
                f": {len(refused)} messages dropped, the oldest first"
            )

    def report(self, item: OutboxItem) -> None:
        """A weak-evidence report for the sweep rule (``sweep``)."""
        self._queue([item])

    # --- sending ----------------------------------------------------------------------------------
    def send(self, now: float) -> int:
        """Send what is due; how many messages LAPI accepted."""
        due = self.store.outbox_due(now, self.batch)
        if not due:
            return 0
        done = 0
        unbans = [i for i in due if i.kind == "unban"]
        for item in unbans:
            done += self._unban(item, now)
        posts = [i for i in due if i.kind != "unban"]
        if posts:
            done += self._post(posts, now)
        return done

    def _unban(self, item: OutboxItem, now: float) -> int:
        try:
            deleted = self.lapi.delete_decisions(ip=item.address, origin=alerts.ORIGIN)
        except LapiError as exc:
            self._failed([item], now, exc)
            return 0
        self.store.outbox_done([item.id])
        self.stats.withdrawn += 1
        self.log(f"attackalert: fleet: {deleted} decisions on {item.address} deleted in LAPI")
        return 1

    def _post(self, items: list[OutboxItem], now: float) -> int:
        bodies: list[dict[str, Any]] = []
        sent: list[OutboxItem] = []
        moot: list[OutboxItem] = []
        landed: list[OutboxItem] = []  # an earlier, ambiguous try reached LAPI after all
        for item in items:
            body = self._body(item, now)
            if body is None:
                moot.append(item)
                continue
            if item.body.get(CHECK) and self._landed(item):
                self.stats.duplicates_avoided += 1
                landed.append(item)
                continue
            bodies.append(body)
            sent.append(item)
        if moot or landed:
            self.store.outbox_done(i.id for i in [*moot, *landed])
        self._pushed([i for i in landed if i.kind == "ban"], now)
        if not bodies:
            return 0
        try:
            self.lapi.post_alerts(bodies)
        except LapiError as exc:
            self._failed(sent, now, exc)
            return 0
        self.store.outbox_done(i.id for i in sent)
        bans = [i for i in sent if i.kind == "ban"]
        self._pushed(bans, now)
        self.stats.reports += len(sent) - len(bans)
        self.stats.last_push = now
        self.stats.batches.append(len(sent))
        del self.stats.batches[:-100]
        return len(sent)

    def _pushed(self, bans: Sequence[OutboxItem], now: float) -> None:
        """These bans are in LAPI now: noted, so that a lift here withdraws them."""
        noted = [(i.ban_id, i.address, None, "pushed") for i in bans if i.ban_id is not None]
        if noted:
            self.store.fleet_note_bans(noted, now)
        self.stats.pushed += len(noted)

    def _body(self, item: OutboxItem, now: float) -> dict[str, Any] | None:
        if item.kind == "report":
            alert = item.body.get("alert")
            return alert if isinstance(alert, dict) else None
        record = self.store.ban(item.ban_id) if item.ban_id is not None else None
        if record is None or not record.live:
            if record is not None:
                self.store.fleet_note_bans([(record.id, record.address, None, "withheld")], now)
                self.stats.withheld += 1
            return None
        return alerts.ban_alert(record, now, host=self.host, cap=self.cap)

    def _landed(self, item: OutboxItem) -> bool:
        """Does LAPI hold the decision an earlier, ambiguous try of ``item`` sent?"""
        if item.kind != "ban" or self.lapi.api_key is None:
            return False
        try:
            found = self.lapi.decisions(item.address)
        except LapiError:
            return False
        return any(d.get("origin") == alerts.ORIGIN for d in found)

    def _failed(self, items: Sequence[OutboxItem], now: float, exc: LapiError) -> None:
        self.stats.failures += 1
        self.stats.last_error = str(exc)
        attempts = max(i.attempts for i in items)
        due = now + backoff(attempts)
        store = self.store
        with store.batch():
            store.outbox_retry([i.id for i in items], due, str(exc))
            if exc.ambiguous:
                for item in items:
                    if not item.body.get(CHECK):
                        store.outbox_mark(item.id, {**item.body, CHECK: True})
