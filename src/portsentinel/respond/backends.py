"""What the ban lifecycle stands on: every backend by name, the ban terms and PortSentry's files
the settings ask for, a stored ban turned back into what a backend applies, and PortSentry's
words for what was done.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Mapping

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
)
from portsentinel.block.dryrun import NAME as DRY_RUN
from portsentinel.block.dryrun import DryRunBackend
from portsentinel.config.schema import Settings
from portsentinel.detect.ban_terms import BanTerms
from portsentinel.errors import BackendError
from portsentinel.model import Mode, Proto
from portsentinel.store.portsentry_files import PortSentryFiles
from portsentinel.store.records import BanRecord

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Backends:
    """Every backend by name, built from the settings and started on first use.

    Undoing an old ban may need a backend the current BLOCK_BACKEND no longer names, so any
    of them can be built; a backend that cannot start raises BackendError once per use.
    """

    def __init__(self, settings: Settings, runner: CommandRunner | None = None) -> None:
        self._settings = settings
        self._runner = runner if runner is not None else Runner()
        # KILL_RUN_CMD and UNBLOCK_RUN_CMD: the administrator's commands, without the
        # service's capabilities (block/runner.py); KILL_ROUTE (legacy) changes routes.
        self._commands = runner if runner is not None else Runner(drop_capabilities=True)
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
            return NftablesBackend(runner, prefix_bans=s.ipv6_prefix_after > 0, ingress=True)
        if name == "iptables":
            return IptablesBackend(runner)
        if name == "route":
            return RouteBackend(runner)
        if name == "hosts_deny":
            return HostsDenyBackend(s.hosts_deny_file, s.kill_hosts_deny or "ALL: $TARGET$ : DENY")
        if name == DRY_RUN:
            return DryRunBackend()
        if name in ("run_cmd", "legacy"):
            return CommandBackend(
                self._commands if name == "run_cmd" else runner,
                s.kill_run_cmd if name == "run_cmd" else s.kill_route,
                s.unblock_run_cmd if name == "run_cmd" else "",
                name=name,
                timeout=s.command_timeout,
                ipv6_targets=s.kill_run_cmd_ipv6,
                portsentry2=s.log_format == "2.0",
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


def terms_of(settings: Settings) -> BanTerms:
    """The ban terms the settings ask for."""
    return BanTerms(
        duration=settings.ban_duration,
        repeat_factor=settings.ban_repeat_factor,
        max_duration=settings.ban_max_duration,
        repeat_window=settings.ban_repeat_window,
        prefix_after=settings.ipv6_prefix_after,
        prefix_len=settings.ipv6_prefix_len,
        decoy=settings.decoy_ban_duration,
    )


def files_for(settings: Settings) -> PortSentryFiles:
    """PortSentry's history and blocked files as the settings name them. With LOG_FORMAT 2.0
    the history file gets 2.0's ``Scan from:`` lines from the loop (``daemon/outputs``)
    instead of 1.2's line from here."""
    history = settings.history_file if settings.log_format != "2.0" else ""
    return PortSentryFiles(history, settings.blocked_file, max_bytes=settings.history_max_mib << 20)


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


def record_key(record: BanRecord) -> str:
    width = 128 if ":" in record.address else 32
    return record.address if record.prefix == width else f"{record.address}/{record.prefix}"


def prefix_of_key(key: str) -> int | None:
    return int(key.split("/")[1]) if "/" in key else None


def blocked_line(name: str, spec: BanSpec, detail: Mapping[str, object], s: Settings) -> str:
    """PortSentry 1.2's wording for its three actions; a plain line for the native ones."""
    target = spec.key
    if name == DRY_RUN:
        return f"attackalert: Host {target} would be blocked (dry run: nothing applied)"
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
    until = "permanently" if spec.timeout is None else f"for {human(spec.timeout)}"
    return f"attackalert: Host {target} has been blocked via {name} {until}"


def human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
