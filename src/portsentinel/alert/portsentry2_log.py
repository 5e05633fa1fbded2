"""Log lines in PortSentry 2.0's words (``LOG_FORMAT="2.0"``): the ``Scan from:`` line.

2.0 writes one line per probe it looked at, last, once it knows what it did::

    Scan from: [IP] (HOST) protocol: [TCP] port: [N] type: [TYPE] IP opts: [not set]
    ignored: [false] triggered: [true] noblock: [false] blocked: [true]

(one line), on standard output or syslog, and with an ISO 8601 time in front
(``2025-07-21T10:02:03.456+0200``) in HISTORY_FILE. A field is ``unset`` when 2.0 stopped
before deciding it. Here each field says what PortSentinel decided (``fields``): the ignore
list and the host's own addresses stop a probe before it is counted (ignored, the rest unset);
below SCAN_TRIGGER it is counted and not triggered; the never-block set is ignored after the
trigger (noblock, not blocked, as 2.0 logs its local check); BLOCK 0 is noblock; a ban the
budget or BLOCK_MIN_PORTS refused was wanted and not made (blocked false); a block decision,
or a source already blocked, is blocked true (a dry run bans nothing: false). HOST is the
address: the line is written when the probe is decided, before any name could be looked up
(2.0's RESOLVE_HOST never produces a name either).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from portsentinel.detect.classify import portsentry_label
from portsentinel.model import Action, Decision, Proto, Reason, ScanKind

ACTIVE = "Portsentry is now active and listening."
SHUTDOWN = ("Portsentry is shutting down",)

UNSET = "unset"
_IGNORED_BEFORE_COUNTING = frozenset({Reason.IGNORE_LIST, Reason.OWN_ADDRESS})
_REFUSED_BANS = frozenset({Reason.BAN_BUDGET, Reason.WEAK_EVIDENCE})


def bound_startup_lines(
    proto: Proto, bound: Iterable[tuple[int, bool]], failed: Iterable[int]
) -> list[str]:
    """What 2.0's connect mode logs as it binds: ``bound`` holds (port, IPv6?)."""
    label = proto.label
    lines = [
        f"Listen on {'AF_INET6' if six else 'AF_INET'}: {label} port: {port}"
        for port, six in sorted(bound)
    ]
    lines += [
        f"Could not bind {label} socket on port {port}. Attempting to continue"
        for port in sorted(set(failed))
    ]
    return lines


def starting_line(version: str) -> str:
    return f"PortSentinel {version} (PortSentry 2.0 compatible) is starting."


def scan_type(decision: Decision) -> str:
    """2.0's ``type:``: Connect in the bound modes, UDP, else the TCP packet's label."""
    if decision.kind is ScanKind.CONNECT:
        return "Connect"
    if decision.proto is Proto.UDP and decision.kind is ScanKind.UDP:
        return "UDP"
    return portsentry_label(decision.kind, decision.flags, decision.proto).strip()


def fields(
    decision: Decision, *, dry_run: bool = False, log_only: bool = False
) -> tuple[str, str, str, str]:
    """(ignored, triggered, noblock, blocked), each "true", "false" or "unset". ``log_only``:
    the protocol's BLOCK level is 0, where a source already answered is reported again as
    2.0 does (noblock, never "already blocked": 2.0.0 stopped caching log-only sources)."""
    reason, action = decision.reason, decision.action
    if log_only and reason is Reason.ALREADY_BLOCKED:
        return "false", "true", "true", "false"
    if reason in _IGNORED_BEFORE_COUNTING:
        return "true", UNSET, UNSET, UNSET
    if reason is Reason.BELOW_TRIGGER:
        return "false", "false", UNSET, UNSET
    if reason is Reason.NEVER_BLOCK:
        return "true", "true", "true", "false"
    if reason is Reason.ALREADY_BLOCKED:
        return "false", "true", "false", "true"
    if reason in _REFUSED_BANS:
        return "false", "true", "false", "false"
    if action is Action.ALERT:
        return "false", "true", "true", "false"
    blocked = "false" if dry_run else "true"  # BLOCK and COMMAND (BLOCK 2: KILL_RUN_CMD)
    return "false", "true", "false", blocked


def scan_from_line(decision: Decision, *, dry_run: bool = False, log_only: bool = False) -> str:
    """The ``Scan from:`` line without a time (standard output and syslog add their own)."""
    ignored, triggered, noblock, blocked = fields(decision, dry_run=dry_run, log_only=log_only)
    if decision.kind is ScanKind.CONNECT:
        options = "unknown"  # 2.0 has no IP header of an accepted connection
    else:
        options = "set" if decision.ip_options else "not set"
    return (
        f"Scan from: [{decision.src}] ({decision.src}) protocol: [{decision.proto.label}] "
        f"port: [{decision.port}] type: [{scan_type(decision)}] IP opts: [{options}] "
        f"ignored: [{ignored}] triggered: [{triggered}] noblock: [{noblock}] "
        f"blocked: [{blocked}]"
    )


def detection_lines(
    decision: Decision, *, dry_run: bool = False, log_only: bool = False
) -> list[str]:
    """What 2.0 logs for a probe: the already-blocked line where it has one, then the
    ``Scan from:`` line (2.0 writes it last)."""
    lines = []
    if decision.reason is Reason.ALREADY_BLOCKED and not log_only:
        lines.append(
            f"attackalert: Host: {decision.src}/{decision.src} is already blocked Ignoring"
        )
    lines.append(scan_from_line(decision, dry_run=dry_run, log_only=log_only))
    return lines


def history_stamp(wall: float) -> str:
    """2.0's history time: local, milliseconds, numeric offset (2025-07-21T10:02:03.456+0200)."""
    seconds, millis = divmod(round(wall * 1000), 1000)
    local = time.localtime(seconds)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', local)}.{millis:03d}{time.strftime('%z', local)}"


def history_line(
    decision: Decision, wall: float, *, dry_run: bool = False, log_only: bool = False
) -> str:
    """A HISTORY_FILE line in 2.0's format, without newline."""
    line = scan_from_line(decision, dry_run=dry_run, log_only=log_only)
    return f"{history_stamp(wall)} {line}"
