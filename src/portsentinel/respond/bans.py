"""The ban lifecycle: apply, record, expire, lift, restore after a restart, repair.

The store is written before the kernel is touched, and lifted before anything is undone, so a
``kill -9`` at any moment leaves a state the next start can finish: a pending ban is applied,
a lifted ban's leftovers are undone, an expired one is dropped, and elements of ours that the
store does not know are removed. Backends are idempotent, so finishing twice is harmless.

Used by the daemon's response worker and by the CLI (``unblock``, ``allow``), which work
whether or not a daemon runs.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from portsentinel.block import (
    Backend,
    BanSpec,
    CommandBackend,
    CommandRunner,
    HostsDenyBackend,
    IptablesBackend,
    NftablesBackend,
    RouteBackend,
    Runner,
    plan_actions,
)
from portsentinel.block.base import ban_fields
from portsentinel.config.schema import Settings
from portsentinel.detect.ban_terms import BanTerms
from portsentinel.errors import BackendError
from portsentinel.model import Mode, Proto
from portsentinel.store.portsentry_files import PortSentryFiles
from portsentinel.store.records import ActionState, BanRecord, BanState, LiftedBy
from portsentinel.store.sqlite import Store

# Backends whose state lives in the kernel or a file and can be re-applied safely at restart;
# commands are not re-run (they are not known to be idempotent).
REAPPLY = frozenset({"nftables", "iptables", "route", "hosts_deny"})
NATIVE = ("nftables", "iptables", "route")

Log = Callable[[str], None]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Backends:
    """Every backend by name, built from the settings and started on first use.

    Undoing an old ban may need a backend the current BLOCK_BACKEND no longer names, so any
    of them can be built; a backend that cannot start raises BackendError once per use.
    """

    def __init__(self, settings: Settings, runner: CommandRunner | None = None) -> None:
        self._settings = settings
        self._runner = runner if runner is not None else Runner()
        self._built: dict[str, Backend] = {}

    def get(self, name: str) -> Backend:
        backend = self._built.get(name)
        if backend is None:
            backend = self._build(name)
            backend.start()
            self._built[name] = backend
        return backend

    def built(self) -> Mapping[str, Backend]:
        return self._built

    def _build(self, name: str) -> Backend:
        s, runner = self._settings, self._runner
        if name == "nftables":
            return NftablesBackend(runner, prefix_bans=s.ipv6_prefix_after > 0)
        if name == "iptables":
            return IptablesBackend(runner)
        if name == "route":
            return RouteBackend(runner)
        if name == "hosts_deny":
            return HostsDenyBackend(s.hosts_deny_file, s.kill_hosts_deny or "ALL: $TARGET$ : DENY")
        if name in ("run_cmd", "legacy"):
            return CommandBackend(
                runner,
                s.kill_run_cmd if name == "run_cmd" else s.kill_route,
                s.unblock_run_cmd if name == "run_cmd" else "",
                name=name,
                timeout=s.command_timeout,
                ipv6_targets=s.kill_run_cmd_ipv6,
            )
        raise BackendError(f"unknown backend {name!r}")

    def reconfigure(self, settings: Settings) -> None:
        self.stop()
        self._built.clear()
        self._settings = settings

    def stop(self) -> None:
        for backend in self._built.values():
            with contextlib.suppress(BackendError):
                backend.stop()


@dataclass(frozen=True)
class BanRequest:
    """What the decision step asks for: a triggered source and its evidence."""

    address: str
    port: int
    proto: Proto
    mode: Mode | None
    level: int  # BLOCK_x: 1 block, 2 command only
    reason: str
    rule: str | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)
    # A manual `portsentinel block --for`: overrides the computed length (None: permanent).
    duration: float | None = None
    manual: bool = False


class BanManager:
    """Applies and lifts bans; every step recorded in the store first."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        backends: Backends,
        *,
        log: Log,
        files: PortSentryFiles | None = None,
        resolve: Callable[[str], str | None] | None = None,
        protected: Callable[[Network], bool] | None = None,
    ) -> None:
        """``protected(net)`` says whether a network holds a never-block address; without it
        IPv6 bans never widen to a prefix."""
        self.settings = settings
        self.terms = terms_of(settings)
        self.store = store
        self.backends = backends
        self.log = log
        self.files = files
        self.resolve = resolve
        self.protected = protected

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
        if self.store.ban_for(req.address) is not None:
            return None
        names = self.plan(req.level)
        if not names:
            self.log(f"attackalert: Ignoring {req.proto.label} response: no action configured")
            return None
        seconds, offence = (req.duration, 1) if req.manual else self.length(req.address, now)
        prefix = self._widen(req.address, now)
        record = self.store.begin_ban(
            req.address,
            prefix,
            created=now,
            expires=None if seconds is None else now + seconds,
            reason=req.reason,
            rule=req.rule,
            evidence={**req.evidence, "plan": names, "port": req.port, "proto": req.proto.key,
                      "mode": req.mode.value if req.mode else None},
            offence=offence,
        )  # fmt: skip
        if prefix is not None:
            self._lift_members(record, now)
        spec = BanSpec.create(
            req.address,
            port=req.port,
            proto=req.proto,
            mode=req.mode,
            timeout=seconds,
            prefix=prefix,
        )
        applied = self._apply(record, spec, names, now)
        if not applied:
            self.store.fail(record.id, now)
            self.log(f"attackalert: ERROR: Could not block host {req.address}/{req.address}!!")
            return None
        if not self.store.activate(record.id):  # lifted meanwhile (a concurrent unblock)
            self._undo(record, now)
            return None
        self._write_files(req, now)
        return self.store.ban(record.id)

    def _widen(self, address: str, now: float) -> int | None:
        """The IPv6 prefix length to ban instead of ``address`` (``BanTerms.widen``), or None
        for the address; never when the never-block set cannot be asked."""
        protected = self.protected
        net = self.terms.prefix_of(address)
        if net is None or protected is None:
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
        applied = 0
        for name in names:
            try:
                detail = self.backends.get(name).block(spec)
            except BackendError as exc:
                self.store.record_action(
                    record.id, name, None, ActionState.FAILED, str(exc), at=now
                )
                self.log(f"attackalert: ERROR: {name} could not block {spec.key}: {exc}")
                continue
            self.store.record_action(record.id, name, detail, ActionState.APPLIED, at=now)
            applied += 1
            self.log(_blocked_line(name, spec, detail, self.settings))
        return applied

    def record_alert(self, req: BanRequest, now: float) -> None:
        """BLOCK_x=0: PortSentry still writes the history line (fail2ban setups rely on it)."""
        self._write_files(req, now)

    def _write_files(self, req: BanRequest, now: float) -> None:
        if self.files is None:
            return
        name = req.address
        if self.settings.resolve_host and self.resolve is not None:
            name = self.resolve(req.address) or req.address
        try:
            self.files.record(now, name, req.address, req.port, req.proto, mode=req.mode)
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
        if self.files is not None:
            try:
                self.files.remove_blocked(record.address)
            except OSError as exc:
                self.log(f"adminalert: ERROR: cannot update the blocked file: {exc}")

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

    # --- restart and repair -----------------------------------------------------------------

    def restore(self, now: float) -> list[BanRecord]:
        """Finish what a previous run left: expire, undo, re-apply, remove strays."""
        self.expire(now)
        for record in self.store.bans_to_undo():
            self._undo(record, now)
        live = self.store.active_bans(now)
        for record in live:
            self._reapply(record, now)
        self._remove_strays(live, now)
        return [r for r in self.store.active_bans(now) if r.state is BanState.ACTIVE]

    def _reapply(self, record: BanRecord, now: float) -> None:
        spec = spec_of(record, now)
        if spec is None:
            self.lift(record, now, LiftedBy.EXPIRY)
            return
        recorded = {a.backend: a for a in self.store.actions(record.id)}
        planned = [str(n) for n in record.evidence.get("plan", [])] or list(recorded)
        if record.state is BanState.PENDING:
            todo = [n for n in planned if n in REAPPLY or n not in recorded]
        else:
            todo = [n for n in planned if n in REAPPLY]
        applied = self._apply(record, spec, todo, now) if todo else 0
        if record.state is BanState.PENDING:
            if applied or any(a.state is ActionState.APPLIED for a in recorded.values()):
                self.store.activate(record.id)
            else:
                self.store.fail(record.id, now)

    def _remove_strays(self, live: list[BanRecord], now: float) -> None:
        """Elements of ours in the configured native backend that the store does not know
        (a ban lifted while the kernel was unreachable, a crash mid-undo)."""
        name = self.settings.block_backend.value
        if name not in NATIVE:
            return
        try:
            backend = self.backends.get(name)
            present = backend.check().present
        except BackendError as exc:
            self.log(f"adminalert: ERROR: cannot read the {name} bans: {exc}")
            return
        known = {_key(r) for r in live}
        for key in sorted(set(present) - known):
            try:
                stray = BanSpec.create(key.split("/")[0], prefix=_prefix_of(key))
                backend.unblock(ban_fields(stray, name))
            except (BackendError, ValueError) as exc:
                self.log(f"adminalert: ERROR: cannot remove stray ban {key}: {exc}")
                continue
            self.log(f"adminalert: removed stray {name} ban of {key} (not in the store)")

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
        mine = [r for r in live if _uses(self.store, r, name)]
        missing = [r for r in mine if _key(r) not in result.present]
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


def terms_of(settings: Settings) -> BanTerms:
    """The ban terms the settings ask for."""
    return BanTerms(
        duration=settings.ban_duration,
        repeat_factor=settings.ban_repeat_factor,
        max_duration=settings.ban_max_duration,
        repeat_window=settings.ban_repeat_window,
        prefix_after=settings.ipv6_prefix_after,
        prefix_len=settings.ipv6_prefix_len,
    )


def files_for(settings: Settings) -> PortSentryFiles:
    """PortSentry's history and blocked files as the settings name them."""
    return PortSentryFiles(
        settings.history_file, settings.blocked_file, max_bytes=settings.history_max_mib << 20
    )


def spec_of(record: BanRecord, now: float) -> BanSpec | None:
    """The ban as a backend needs it, with the time it has left; None when it is over."""
    left = None if record.expires is None else record.expires - now
    if left is not None and left <= 0:
        return None
    evidence = record.evidence
    proto = Proto.UDP if evidence.get("proto") == "udp" else Proto.TCP
    raw_mode = evidence.get("mode")
    mode = Mode(str(raw_mode)) if raw_mode in {m.value for m in Mode} else None
    port = evidence.get("port", 0)
    return BanSpec.create(
        record.address,
        port=port if isinstance(port, int) else 0,
        proto=proto,
        mode=mode,
        timeout=left,
        prefix=record.prefix,
    )


def _key(record: BanRecord) -> str:
    width = 128 if ":" in record.address else 32
    return record.address if record.prefix == width else f"{record.address}/{record.prefix}"


def _prefix_of(key: str) -> int | None:
    return int(key.split("/")[1]) if "/" in key else None


def _uses(store: Store, record: BanRecord, backend: str) -> bool:
    return any(
        a.backend == backend and a.state is ActionState.APPLIED for a in store.actions(record.id)
    )


def _blocked_line(name: str, spec: BanSpec, detail: Mapping[str, object], s: Settings) -> str:
    """PortSentry 1.2's wording for its three actions; a plain line for the native ones."""
    target = spec.key
    if name == "hosts_deny":
        line = detail.get("line", "")
        return f'attackalert: Host {target} has been blocked via wrappers with string: "{line}"'
    if name == "legacy":
        command = s.kill_route
        return (
            f"attackalert: Host {target} has been blocked via dropped route using command: "
            f'"{command}"'
        )
    if name == "run_cmd":
        if detail.get("skipped"):
            return f"attackalert: External command not run for host: {target}: {detail['skipped']}"
        command = s.kill_run_cmd
        return f'attackalert: External command run for host: {target} using command: "{command}"'
    until = "permanently" if spec.timeout is None else f"for {_human(spec.timeout)}"
    return f"attackalert: Host {target} has been blocked via {name} {until}"


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
