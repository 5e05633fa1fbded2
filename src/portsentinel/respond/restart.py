"""The ban lifecycle after a restart and while it runs: finish what a previous run left (expire,
undo, re-apply, and the bans of ours the store does not know), and put back what another
tool removed. Mixed into ``bans.BanManager``, whose steps it uses.

What cannot be known is said, not guessed: a row of the store that cannot be read is named
and skipped (``settle_damaged``); a command the process may have died running is neither run
again nor dropped, but recorded ``uncertain`` and reported with what the admin can do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

from portsentinel.block import BanSpec
from portsentinel.block.base import ban_fields
from portsentinel.block.nftables import NftablesBackend, ban_detail
from portsentinel.block.table import ConntrackChain
from portsentinel.config.schema import Settings
from portsentinel.errors import BackendError, PortSentinelError, StoreError
from portsentinel.host.neverblock import Entry
from portsentinel.respond.backends import (
    Backends,
    prefix_of_key,
    record_key,
    spec_of,
)
from portsentinel.respond.protected import lift_protected
from portsentinel.store.records import ActionState, BanRecord, BanState, LiftedBy
from portsentinel.store.sqlite import Store

# Backends whose state lives in the kernel or a file and can be re-applied safely at restart;
# commands are not re-run (they are not known to be idempotent).
REAPPLY = frozenset({"nftables", "iptables", "route", "hosts_deny"})
NATIVE = ("nftables", "iptables", "route")
COMMAND_SETTINGS = {"run_cmd": "KILL_RUN_CMD", "legacy": "KILL_ROUTE"}
NAMED_DAMAGED = 20  # damaged rows named one by one at a time; the rest are counted
UNCERTAIN_WHY = (
    "the daemon stopped before its outcome was recorded: it may or may not have run; not run again"
)


class Restart:
    """See the module docstring; ``BanManager`` provides the attributes and steps below."""

    settings: Settings
    store: Store
    backends: Backends
    log: Callable[[str], None]
    dry_run: bool  # run --dry-run: nothing was applied, so nothing of the kernel is ours
    _conntrack_said: str | None = None  # the last failure to repair the chain, said once

    def expire(self, now: float) -> list[BanRecord]:
        raise NotImplementedError

    def lift(self, record: BanRecord, now: float, by: LiftedBy) -> bool:
        raise NotImplementedError

    def _undo(self, record: BanRecord, now: float) -> None:
        raise NotImplementedError

    def _apply(self, record: BanRecord, spec: BanSpec, names: Iterable[str], now: float) -> int:
        raise NotImplementedError

    def restore(self, now: float, protected: Sequence[Entry] = ()) -> list[BanRecord]:
        """Finish what a previous run left: expire, undo, re-apply, settle strays. A ban on
        an address of ``protected`` (the never-block set's entries) is lifted instead."""
        self.expire(now)
        for record in self.store.bans_to_undo():
            self._undo(record, now)
        live = self._unprotected(self.store.active_bans(now), protected, now)
        self.settle_damaged(now)  # before the strays: a damaged live ban frees its network
        for record in live:
            self._reapply(record, now)
        self._settle_strays(live, now)
        self.settle_damaged(now)  # rows found while re-applying (their actions)
        kept = self._unprotected(self.store.active_bans(now), protected, now)  # adopted ones
        return [r for r in kept if r.state is BanState.ACTIVE]

    def _unprotected(
        self, live: list[BanRecord], protected: Sequence[Entry], now: float
    ) -> list[BanRecord]:
        """``live`` without the bans on protected addresses, which are lifted."""
        lifted = {r.id for r in lift_protected(self, live, protected, now)}
        return [r for r in live if r.id not in lifted]

    def _reapply(self, record: BanRecord, now: float) -> None:
        spec = spec_of(record, now)
        if spec is None:
            self.lift(record, now, LiftedBy.EXPIRY)
            return
        recorded = {a.backend: a for a in self.store.actions(record.id)}
        planned = [str(n) for n in record.evidence.get("plan", [])] or list(recorded)
        unknown = []
        if record.state is BanState.PENDING:  # the process died while applying it
            unknown = [n for n in planned if n not in REAPPLY and n not in recorded]
            self._uncertain(record, spec, unknown, now)
        todo = [n for n in planned if n in REAPPLY]
        applied = self._apply(record, spec, todo, now) if todo else 0
        if record.state is BanState.PENDING:
            held = (ActionState.APPLIED, ActionState.UNCERTAIN)
            if applied or unknown or any(a.state in held for a in recorded.values()):
                self.store.activate(record.id)
            else:
                self.store.fail(record.id, now)

    def _uncertain(
        self, record: BanRecord, spec: BanSpec, names: Iterable[str], now: float
    ) -> None:
        """Commands of a pending ban with no recorded outcome: the process died while one ran,
        or before it started. Not idempotent (an ``iptables -I`` twice is two rules), so not
        run again; recorded ``uncertain`` and said, with what the admin can do."""
        target, address = record.target, record.address
        for name in names:
            self.store.record_action(record.id, name, ban_fields(spec, name),
                                     ActionState.UNCERTAIN, UNCERTAIN_WHY, at=now)  # fmt: skip
            self.log(
                f"adminalert: WARNING: {COMMAND_SETTINGS.get(name, name)} for {target} may or "
                "may not have run: the daemon stopped before its outcome was recorded. It is "
                f"not run again; check what it does for {target}, and to run it again: "
                f"portsentinel unblock {address}, then portsentinel block {address}"
            )

    def settle_damaged(self, now: float) -> int:
        """Say each row the store's readers skipped since the last call (``Store.damaged``),
        once. A live ban's row is also ended in the store (``Store.set_aside``): it could
        never be applied, expired or lifted, and would keep its network from a new ban; what
        the firewall holds of it is then settled at start like any ban the store does not
        know. Returns how many rows were said."""
        rows = self.store.damaged()
        unended = 0  # live bans of the rows counted, not named, that could not be ended
        for index, row in enumerate(rows):
            done = ""
            if row.live and row.table == "bans" and isinstance(row.row_id, int):
                try:
                    if self.store.set_aside(row.row_id, now):
                        done = "; its live ban is ended in the store (lifted by 'damaged')"
                except StoreError as exc:
                    done = f"; its live ban cannot be ended in the store: {exc}"
                    unended += index >= NAMED_DAMAGED
            if index < NAMED_DAMAGED:
                self.log(f"adminalert: WARNING: state store: skipped a damaged row: {row}{done}")
        if len(rows) > NAMED_DAMAGED:
            tables = Counter(row.table for row in rows[NAMED_DAMAGED:])
            counts = ", ".join(f"{n} of {table}" for table, n in sorted(tables.items()))
            self.log(
                f"adminalert: WARNING: state store: {len(rows) - NAMED_DAMAGED} more damaged "
                f"rows skipped ({counts}); their live bans are ended in the store"
                + (f", but for {unended} that it refused" if unended else "")
            )
        return len(rows)

    def _settle_strays(self, live: list[BanRecord], now: float) -> None:
        """Bans of ours in the configured native backend that the store does not know.

        nftables: the kernel is the truth. Such an element is a ban the detection loop sent
        before the process died, ahead of the worker's record (``first_ban``), or the store was
        lost (deleted, emptied): each is adopted with the time it has left, and a warning
        says so. iptables and route, which the loop never writes first: a ban lifted while
        the kernel was unreachable or a crash mid-undo left it; it is removed.
        """
        name = self.settings.block_backend.value
        if name not in NATIVE or self.dry_run:  # a dry run reads no firewall (and makes none)
            return
        try:
            backend = self.backends.get(name)
            present = backend.check().present
        except BackendError as exc:
            self.log(f"adminalert: ERROR: cannot read the {name} bans: {exc}")
            return
        known = {record_key(r) for r in live}
        strays = sorted(set(present) - known)
        if name == "nftables":
            self._adopt(strays, present, now)
            return
        for key in strays:
            try:
                stray = BanSpec.create(key.split("/")[0], prefix=prefix_of_key(key))
                backend.unblock(ban_fields(stray, name))
            except (BackendError, ValueError) as exc:
                self.log(f"adminalert: ERROR: cannot remove stray ban {key}: {exc}")
                continue
            self.log(f"adminalert: removed stray {name} ban of {key} (not in the store)")

    def _adopt(self, keys: Sequence[str], left: Mapping[str, float | None], now: float) -> None:
        adopted = []
        with self.store.batch():
            for key in keys:
                seconds = left[key]
                try:
                    spec = BanSpec.create(key.split("/")[0], prefix=prefix_of_key(key),
                                          timeout=seconds)  # fmt: skip
                    record = self.store.begin_ban(
                        spec.address, spec.prefix, created=now,
                        expires=None if seconds is None else now + seconds,
                        reason="adopted from the kernel", rule=None, offence=1,
                        evidence={"adopted": True, "plan": ["nftables"]},
                    )  # fmt: skip
                except (ValueError, PortSentinelError) as exc:
                    self.log(f"adminalert: ERROR: cannot adopt the nftables ban of {key}: {exc}")
                    continue
                self.store.record_action(
                    record.id, "nftables", ban_detail(spec), ActionState.APPLIED, at=now
                )
                self.store.activate(record.id)
                adopted.append(key)
        if adopted:
            shown = ", ".join(adopted[:5]) + (" ..." if len(adopted) > 5 else "")
            self.log(
                f"adminalert: WARNING: {len(adopted)} nftables bans were in the kernel but not "
                f"in the state store ({shown}): adopted with the time they have left (the "
                "process ended before it recorded them, or the store was lost)"
            )

    def repair_conntrack(self, chain: ConntrackChain) -> bool:
        """The table's conntrack chain (``block/table.py``), installed at start: put back
        when another tool removed it (``nft flush ruleset``); True when it was."""
        problem = chain.problem()
        if problem is None:
            self._conntrack_said = None
            return False
        failure = chain.install()
        if failure is None:
            self._conntrack_said = None
            self.log(
                f"adminalert: conntrack chain repaired ({problem}): the kernel tracks "
                "connections again, so late UDP replies are not taken for probes"
            )
            return True
        if failure != self._conntrack_said:
            self._conntrack_said = failure
            self.log(
                f"adminalert: ERROR: cannot repair the conntrack chain ({problem}): {failure}; "
                "late UDP replies may be taken for probes"
            )
        return False

    def _nftables(self) -> NftablesBackend | None:
        backend = self.backends.built().get("nftables")
        return backend if isinstance(backend, NftablesBackend) else None

    def follow_interfaces(self) -> None:
        """Ingress chains for the interfaces that came, none for those gone (nftables)."""
        backend = self._nftables()
        if backend is not None:
            backend.follow()

    def ingress_drops(
        self,
        quiet: Callable[[dict[tuple[bytes, int], int]], None] | None = None,
        *,
        read: bool = False,
    ) -> tuple[int, int] | None:
        """Packets and bytes banned sources sent that were dropped at ingress since start,
        as the last check read them (``read``: as the kernel counts them now); None without
        ingress copies. ``quiet`` is given what quiet sources sent since the last call, per
        source and protocol, if they sent any."""
        backend = self._nftables()
        if backend is None or backend.ingress_problem is not None or self.dry_run:
            return None
        if read:
            try:
                backend.read_counters()
            except BackendError as exc:
                self.log(f"adminalert: WARNING: cannot read the ingress counters: {exc}")
        grown = backend.quiet.take()
        if grown and quiet is not None:
            quiet(grown)
        return backend.drops.packets, backend.drops.bytes

    def repair(self, now: float) -> int:
        """Re-apply live bans missing from the configured native backend (another tool may
        have flushed the ruleset); returns how many were restored."""
        name = self.settings.block_backend.value
        if name not in NATIVE:
            return 0
        live = [r for r in self.store.active_bans(now) if r.state is BanState.ACTIVE]
        try:
            backend = self.backends.get(name)
            result = backend.check()
        except BackendError as exc:
            self.log(f"adminalert: ERROR: cannot check the {name} bans: {exc}")
            return 0
        applied = self.store.applied_by(name)  # one query, not one per live ban
        mine = [r for r in live if r.id in applied]
        missing = [r for r in mine if record_key(r) not in result.present]
        if result.intact and not missing:
            return 0
        specs = [s for s in (spec_of(r, now) for r in missing) if s is not None]
        try:
            outcomes = backend.repair(specs)
        except BackendError as exc:
            self.log(f"adminalert: ERROR: cannot repair {name}: {exc}")
            return 0
        restored = sum(1 for o in outcomes if not isinstance(o, BackendError))
        problems = "; ".join(result.problems) or "bans missing"
        self.log(f"adminalert: {name} state repaired ({problems}): {restored} bans restored")
        return restored
