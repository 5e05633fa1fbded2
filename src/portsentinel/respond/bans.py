"""The ban lifecycle: apply, record, expire, lift, restore after a restart, repair.

The store is written before any backend is run, and lifted before anything is undone, so a
``kill -9`` at any moment leaves a state the next start can finish: a pending ban is applied,
a lifted ban's leftovers are undone, an expired one is dropped. The one write that goes ahead
of the store is a first ban's nftables element, sent by the detection loop (``first_ban``):
an element of ours the store does not know is adopted at start with the time it has left.
Backends are idempotent, so finishing twice is harmless. Many bans at once (``ban_many``)
take the same steps with one transaction and one backend call per step.

Used by the daemon's response worker and by the CLI (``unblock``, ``allow``), which work
whether or not a daemon runs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from portsentinel.block import Backend, BanSpec, plan_actions
from portsentinel.block.base import ActionDetail, kernel_timeout
from portsentinel.block.dryrun import NAME as DRY_RUN
from portsentinel.block.nft_state import MAX_TIMEOUT
from portsentinel.block.nftables import ban_detail, held_fields
from portsentinel.config.schema import Settings
from portsentinel.errors import BackendError
from portsentinel.respond.backends import (
    Backends,
    Network,
    blocked_line,
    files_for,
    record_key,
    spec_of,
    terms_of,
)
from portsentinel.respond.names import Names
from portsentinel.respond.pending import BanRequest, Pending, Rows, action_rows, sent_as_is
from portsentinel.respond.restart import REAPPLY, Restart
from portsentinel.store.portsentry_files import PortSentryFiles
from portsentinel.store.records import ActionState, BanRecord, BanState, LiftedBy, to_json
from portsentinel.store.sqlite import NewBan, Store

__all__ = ["BanManager", "BanRequest", "Log"]

Log = Callable[[str], None]


class BanManager(Restart):
    """Applies and lifts bans; every step recorded in the store first."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        backends: Backends,
        *,
        log: Log,
        files: PortSentryFiles | None = None,
        names: Names | None = None,
        protected: Callable[[Network], bool] | None = None,
        dry_run: bool = False,
    ) -> None:
        """``protected(net)`` says whether a network holds a never-block address; without it
        IPv6 bans never widen to a prefix. With ``names`` (RESOLVE_HOST at the start), the
        history/blocked files are written through it, beside the ban path. ``dry_run``: every
        ban the settings would apply is recorded with the ``dry_run`` backend instead
        (nothing applied; ``run --dry-run``)."""
        self.settings = settings
        self.terms = terms_of(settings)
        self.store = store
        self.backends = backends
        self.log = log
        self.files = files
        self.names = names
        self.protected = protected
        self.dry_run = dry_run
        self._plans: dict[object, Any] = {}  # level -> plan, for ``settings``

    def reconfigure(self, settings: Settings) -> None:
        """A reloaded configuration: backends are rebuilt from it on their next use (bans in
        force stay; undoing them uses what the store recorded)."""
        self.settings = settings
        self.terms = terms_of(settings)
        self.backends.reconfigure(settings)
        if self.files is not None:
            self.files = files_for(settings)

    # --- applying ---------------------------------------------------------------------------

    def length(self, address: str, now: float) -> tuple[float | None, int]:
        """(seconds or None for permanent, offence number): doubled for repeat offenders."""
        terms = self.terms
        return terms.length(self.store.offences(address, terms.repeat_since(now)))

    def plan(self, level: int) -> list[str]:
        """The backends a ban at BLOCK_x=``level`` runs; in a dry run, ``dry_run`` alone."""
        plans = self._plans
        if plans.get("settings") is not self.settings:  # made once per configuration
            plans.clear()
            plans["settings"] = self.settings
        known = plans.get(level)
        if known is None:
            real = self._plan(level)
            known = plans[level] = tuple([DRY_RUN] if real else []) if self.dry_run else tuple(real)
        return list(known)

    def _plan(self, level: int) -> list[str]:
        s = self.settings
        return plan_actions(
            level,
            backend=s.block_backend.value,
            kill_route=s.kill_route,
            kill_hosts_deny=s.kill_hosts_deny,
            kill_run_cmd=s.kill_run_cmd,
            kill_run_cmd_first=s.kill_run_cmd_first,
        )

    def ban(self, req: BanRequest, now: float) -> BanRecord | None:
        """Record, then apply every planned action. None when nothing could be applied (the
        caller lets the next probe try again) or when the address is banned already."""
        return self.ban_many([req], now)[0]

    def ban_many(
        self, reqs: Sequence[BanRequest], now: float, *, resume: bool = False
    ) -> list[BanRecord | None]:
        """``ban`` for many requests at once, in the same order of steps for each (store,
        backends, store), but one transaction per step and one backend call per backend (one
        nft transaction for thousands of elements). Results in the order of ``reqs``.

        A ban whose nftables element the detection loop already sent (``first_ban``) has that
        action recorded with its pending row; when it is its whole plan, the row is written
        ``active`` at once: the kernel held the ban before the store, as for any first ban.
        The outcomes of the idempotent backends (``REAPPLY``) are written with the next step's
        transaction (a kill before it: the pending ban is re-applied at start); a command's
        at once, so that one that ran is never taken for ``uncertain``.

        ``resume``: the same requests are being tried again after the store refused a step;
        a pending ban of theirs is that earlier try, finished now instead of skipped."""
        with self.store.burst(len(reqs)):
            return self._ban_many(reqs, now, resume=resume)

    def _ban_many(
        self, reqs: Sequence[BanRequest], now: float, *, resume: bool
    ) -> list[BanRecord | None]:
        out: list[BanRecord | None] = [None] * len(reqs)
        store = self.store
        with store.batch():  # the questions and the records of the loop's elements: one
            todo = self._prepare(reqs, now, resume=resume)
            fresh = [p for p in todo if p.record is None]
            shared: dict[tuple[int, int | None], str] = {}  # the held details, one per kind
            rows = []
            for p in fresh:
                req = p.request
                sent = p.sent = p.prefix is None and "nftables" in p.names and sent_as_is(p)
                held = held_text = None
                if sent:  # the loop's element: held in the ban's own row (``store/held.py``)
                    held, kind = "nftables", (p.spec.version, req.kernel_timeout)
                    held_text = shared.get(kind)
                    if held_text is None:
                        held_text = shared[kind] = to_json(held_fields(p.spec))
                rows.append(NewBan(
                    p.spec.address, p.prefix, now, None if p.seconds is None else now + p.seconds,
                    req.reason, req.rule, p.evidence(), p.offence, sent and len(p.names) == 1,
                    held, held_text,
                ))  # fmt: skip
            for p, record in zip(fresh, store.begin_bans(rows), strict=True):
                p.record = record
                p.fresh = True
        said: dict[float | None, str] = {}  # the line's end, per length
        for p in fresh:  # said once committed
            if p.sent:
                p.applied += 1
                end = said.get(p.seconds)
                if end is None:
                    end = said[p.seconds] = blocked_line("nftables", p.spec, {}, self.settings)
                    end = said[p.seconds] = end[end.index(" has been blocked") :]
                self.log(f"attackalert: Host {p.spec.address}{end}")  # a host ban: its key
        for p in todo:
            if p.prefix is not None:
                self._lift_members(p.ban, now)
        outcomes: list[Rows] = []
        for names in dict.fromkeys(tuple(p.names) for p in todo):
            group = [p for p in todo if tuple(p.names) == names]
            for name in names:
                self._apply_many(name, [p for p in group if not (p.sent and name == "nftables")],
                                 now, outcomes)  # fmt: skip
        pending = [p for p in todo if p.ban.state is BanState.PENDING]
        active: set[int] = set()
        if outcomes or pending:  # loop-sent bans with nothing else to do are done already
            with store.batch():
                self._flush(outcomes, now)
                store.fail_many([p.ban.id for p in pending if not p.applied], now)
                active = store.activate_many([p.ban.id for p in pending if p.applied])
        written = []
        for p in todo:
            address = p.spec.address
            if not p.applied:
                self.log(f"attackalert: ERROR: Could not block host {address}/{address}!!")
            elif p.ban.state is BanState.ACTIVE:  # written active: done in one step
                out[p.index] = p.ban
                written.append(p.request)
            elif p.ban.id not in active:  # lifted meanwhile (a concurrent unblock)
                self._undo(p.ban, now)
            else:
                out[p.index] = p.ban.activated()
                written.append(p.request)
        self._write_files(written, now)
        return out

    def _prepare(
        self, reqs: Sequence[BanRequest], now: float, *, resume: bool = False
    ) -> list[Pending]:
        """The requests to apply, with their plan and length: not banned already (in the store
        or earlier in ``reqs``), and with an action configured."""
        store = self.store
        todo: list[Pending] = []
        taken: set[str] = set()
        resent: list[BanSpec] = []  # live bans whose element the loop sent again
        live = store.live_bans_for({r.address for r in reqs})
        terms = self.terms
        earlier = store.offences_many(
            {r.address for r in reqs if not r.manual and r.address not in live},
            terms.repeat_since(now),
        )
        lengths: dict[int, tuple[float | None, int]] = {}
        plans: dict[int, list[str]] = {}  # per level: one list for the batch's bans
        for index, req in enumerate(reqs):
            banned = live.get(req.address)
            if banned is not None and req.in_kernel:
                spec = spec_of(banned, now)
                if spec is not None and record_key(banned) == spec.key:
                    resent.append(spec)
            if resume and banned is not None and banned.state is BanState.PENDING:
                spec = spec_of(banned, now)
                if spec is not None and req.address not in taken:
                    taken.add(req.address)
                    todo.append(self._resumed(index, req, banned, spec, now))
                continue
            if req.address in taken or banned is not None:
                continue
            names = plans.get(req.level)
            if names is None:
                names = plans[req.level] = self.plan(req.level)
            if not names:
                self.log(f"attackalert: Ignoring {req.proto.label} response: no action configured")
                continue
            if req.manual:
                seconds, offence = req.duration, 1
            elif req.provisional:
                seconds, offence = terms.short(), 1
            else:  # the same few counts for a whole burst: worked out once each
                count = earlier.get(req.address, 0)
                known = lengths.get(count)
                if known is None:
                    known = lengths[count] = terms.length(count)
                seconds, offence = known
            if req.decoy:
                seconds = terms.as_decoy(seconds)
            prefix = self._widen(req.address, now)
            spec = BanSpec.create(req.address, port=req.port, proto=req.proto, mode=req.mode,
                                  timeout=seconds, prefix=prefix)  # fmt: skip
            # A prefix ban replaces its members: later requests in it wait for the next batch.
            taken.add(req.address if prefix is None else str(spec.network))
            todo.append(Pending(index, req, names, seconds, offence, prefix, spec))
        if resent:  # a newer kernel took the loop's timeout: give back the ban's own
            self._renew(self.backends.get("nftables"), resent)
        return todo

    def _resumed(
        self, index: int, req: BanRequest, banned: BanRecord, spec: BanSpec, now: float
    ) -> Pending:
        """An earlier try of ``req`` that the store refused half-way: the idempotent backends
        run again; a command with no recorded outcome may have run, so it is not run again
        but recorded ``uncertain`` and said (as at a restart)."""
        planned = [str(n) for n in banned.evidence.get("plan", [])] or self.plan(req.level)
        recorded = {a.backend for a in self.store.actions(banned.id)}
        commands = [n for n in planned if n not in REAPPLY and n not in recorded]
        self._uncertain(banned, spec, commands, now)
        names = [n for n in planned if n in REAPPLY]
        pending = Pending(index, req, names, spec.timeout, banned.offence, None, spec, banned)
        pending.applied = len(commands)  # held: the ban stays in force
        return pending

    def renew_in_kernel(self, specs: Sequence[BanSpec]) -> None:
        """Give elements in the kernel the timeouts of ``specs`` (a ban cut short, say)."""
        try:
            backend = self.backends.get("nftables")
        except BackendError as exc:
            self.log(f"adminalert: ERROR: nftables could not renew {len(specs)} bans: {exc}")
            return
        self._renew(backend, specs)

    def _renew(self, backend: Backend, specs: Sequence[BanSpec]) -> None:
        renew = getattr(backend, "renew", None)  # NftablesBackend.renew
        if not callable(renew):
            return
        try:
            renew(specs)
        except BackendError as exc:
            self.log(f"adminalert: ERROR: nftables could not renew {len(specs)} bans: {exc}")

    def _widen(self, address: str, now: float) -> int | None:
        """The IPv6 prefix length to ban instead of ``address`` (``BanTerms.widen``), or None
        for the address; never when the never-block set cannot be asked."""
        protected = self.protected
        if protected is None:
            return None
        net = self.terms.prefix_of(address)
        if net is None:
            return None
        return self.terms.widen(len(self._members(net, now)), protected=lambda: protected(net))

    def _members(self, net: Network, now: float) -> list[BanRecord]:
        return [
            r
            for r in self.store.active_bans(now)
            if ":" in r.address and r.prefix == 128 and ipaddress.ip_address(r.address) in net
        ]

    def _lift_members(self, record: BanRecord, now: float) -> None:
        """The address bans a prefix ban replaces (an interval set refuses overlaps)."""
        net = ipaddress.ip_network(f"{record.address}/{record.prefix}")
        members = self._members(net, now)
        for member in members:
            self.lift(member, now, LiftedBy.WIDENED)
        self.log(f"attackalert: {len(members) + 1} addresses of {net} scanned: banning the prefix")

    def _apply(self, record: BanRecord, spec: BanSpec, names: Iterable[str], now: float) -> int:
        """Apply a recorded ban with each backend in turn; how many applied it."""
        todo = [Pending(0, None, list(names), spec.timeout, record.offence, None, spec, record)]
        for name in todo[0].names:
            self._apply_many(name, todo, now)
        return todo[0].applied

    def _apply_many(
        self, name: str, todo: Sequence[Pending], now: float, rows: list[Rows] | None = None
    ) -> None:
        """One backend, every ban of ``todo``: one call, its outcomes recorded in one
        transaction (or added to ``rows``, for ``_flush``). An nftables element the detection
        loop already sent is recorded as it is (or given its final timeout when a repeat
        offence made the ban longer)."""
        if not todo:
            return
        if name == "nftables":
            fresh = [p for p in todo if not (p.req is not None and p.req.in_kernel)]
            sent = [p for p in todo if p.req is not None and p.req.in_kernel]
        else:
            fresh, sent = list(todo), []
        outcomes: list[tuple[Pending, ActionDetail | BackendError]] = []
        try:
            backend = self.backends.get(name)
            if fresh:
                outcomes += zip(fresh, backend.block_many([p.spec for p in fresh]), strict=True)
            if sent:
                outcomes += self._adopt_sent(backend, sent)
        except BackendError as exc:
            outcomes = [(p, exc) for p in todo]
        self._outcomes(name, outcomes, now, rows)

    def _outcomes(
        self,
        name: str,
        outcomes: Sequence[tuple[Pending, ActionDetail | BackendError]],
        now: float,
        rows: list[Rows] | None = None,
    ) -> None:
        """Record what backend ``name`` did for each ban (now, or into ``rows``) and say it."""
        if not outcomes:
            return
        first = all(p.fresh for p, _ in outcomes)  # bans recorded just now: no row yet
        # Held in the ban's row only with the batch's activation, in one transaction.
        batch, held = action_rows(name, outcomes, hold=first and rows is not None)
        if rows is None:
            self.store.record_actions(batch, at=now, first=first)
        else:
            rows.append((batch, first, held))
            if name not in REAPPLY:  # a command: its outcome committed before anything else
                self._flush(rows, now)
        for p, outcome in outcomes:
            if isinstance(outcome, BackendError):
                self.log(f"attackalert: ERROR: {name} could not block {p.spec.key}: {outcome}")
            else:
                p.applied += 1
                self.log(blocked_line(name, p.spec, outcome, self.settings))

    def _flush(self, rows: list[Rows], now: float) -> None:
        """The outcomes ``_apply_many`` gathered, in one transaction."""
        with self.store.batch():
            for batch, first, held in rows:
                self.store.record_actions(batch, at=now, first=first)
                self.store.hold_actions(held)
        rows.clear()

    def _adopt_sent(
        self, backend: Backend, sent: Sequence[Pending]
    ) -> list[tuple[Pending, ActionDetail | BackendError]]:
        """Elements the detection loop sent: renew those whose timeout must change."""
        renew = [
            p for p in sent
            if p.req is not None and p.req.kernel_timeout != kernel_timeout(p.spec, MAX_TIMEOUT)
        ]  # fmt: skip
        if renew:  # a repeat offence: longer than the loop's first-offence timeout
            self._renew(backend, [p.spec for p in renew])
        return [(p, ban_detail(p.spec)) for p in sent]

    def record_alert(self, req: BanRequest, now: float) -> None:
        """BLOCK_x=0: PortSentry still writes the history line (fail2ban setups rely on it)."""
        self._write_files([req], now)

    def _write_files(self, reqs: Sequence[BanRequest], now: float) -> None:
        """The history/blocked lines of bans in force (or alerts): at once with the address,
        or, with ``names``, once the name is known (never holding up the next ban)."""
        files = self.files
        if files is None or not reqs:
            return
        entries = [(now, r.address, r.address, r.port, r.proto, r.mode) for r in reqs]
        if self.names is not None:
            self.names.record(files, entries, resolve=self.settings.resolve_host)
            return
        try:
            files.record_many(entries)
        except OSError as exc:
            self.log(f"adminalert: ERROR: cannot write the history/blocked file: {exc}")

    # --- lifting ----------------------------------------------------------------------------

    def lift(self, record: BanRecord, now: float, by: LiftedBy) -> bool:
        """End a ban: the store first, then undo what was applied (newest first)."""
        if not self.store.lift(record.id, now, by):
            return False
        self._undo(record, now)
        return True

    def _undo(self, record: BanRecord, now: float) -> None:
        for action in reversed(self.store.actions(record.id)):
            if action.state is ActionState.UNCERTAIN:
                self._uncertain_undo(record, action.backend)
            if action.state not in (ActionState.APPLIED, ActionState.UNDO_FAILED):
                continue
            try:
                self.backends.get(action.backend).unblock(dict(action.detail))
            except BackendError as exc:
                self.store.record_action(
                    record.id, action.backend, None, ActionState.UNDO_FAILED, str(exc), at=now
                )
                self.log(
                    f"adminalert: ERROR: {action.backend} could not lift {record.address}: {exc}"
                )
                continue
            self.store.record_action(record.id, action.backend, None, ActionState.UNDONE, at=now)
        if self.files is None:
            return
        if self.names is not None:  # after its lines that still wait for a name
            self.names.remove_blocked(self.files, record.address)
            return
        try:
            self.files.remove_blocked(record.address)
        except OSError as exc:
            self.log(f"adminalert: ERROR: cannot update the blocked file: {exc}")

    def _uncertain_undo(self, record: BanRecord, backend: str) -> None:
        """An uncertain command (``restart``) is not undone either: its undo, if it has one,
        is left to the admin, who knows whether the command had run."""
        if backend == "run_cmd" and self.settings.unblock_run_cmd:
            self.log(
                f"adminalert: WARNING: KILL_RUN_CMD for {record.target} may or may not have "
                "run (uncertain): UNBLOCK_RUN_CMD is not run for it; run it by hand if it had"
            )

    def expire(self, now: float) -> list[BanRecord]:
        """Lift every ban whose time is up; returns them."""
        done = []
        for record in self.store.due_for_expiry(now):
            if self.lift(record, now, LiftedBy.EXPIRY):
                self.log(f"attackalert: Host {record.address} unblocked: ban expired")
                done.append(record)
        return done

    def unblock(
        self, address: str, now: float, by: LiftedBy = LiftedBy.UNBLOCK
    ) -> BanRecord | None:
        """Lift the live ban covering ``address``; None when there is none."""
        record = self.store.ban_for(address)
        if record is None:
            return None
        return record if self.lift(record, now, by) else None
