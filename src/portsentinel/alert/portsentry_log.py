"""Log lines in PortSentry 1.2's exact wording (``attackalert:``/``adminalert:`` messages).

Only the message is built here; the syslog ident, facility and timestamp are the sink's job.
1.2 writes nothing for probes below the trigger or from ignored hosts, and neither do we.
"""

from __future__ import annotations

from collections.abc import Iterable

from portsentinel.detect.classify import portsentry_label
from portsentinel.model import Action, Decision, Mode, Proto, Reason, ScanKind

_SILENT = frozenset({Reason.BELOW_TRIGGER, Reason.IGNORE_LIST, Reason.OWN_ADDRESS})


def host_field(decision: Decision, name: str | None = None) -> str:
    """PortSentry's ``name/ip`` host field; the name is the address when not resolved."""
    return f"{name or decision.src}/{decision.src}"


def detection_lines(decision: Decision, name: str | None = None) -> list[str]:
    """The lines 1.2 logs for a probe that fired the trigger, before any response runs.

    ``name`` is a sanitised reverse-DNS name when RESOLVE_HOST is on, else None.
    """
    if decision.action is Action.IGNORED and decision.reason in _SILENT:
        return []
    host = host_field(decision, name)
    proto = decision.proto.label
    lines = [_probe_line(decision, host, proto)]
    if decision.ip_options:
        lines.append(
            f"attackalert: Packet from host: {host} to {proto} port: {decision.port}"
            " has IP options set (detection avoidance technique)."
        )
    if decision.reason is Reason.ALREADY_BLOCKED:
        if decision.kind is ScanKind.CONNECT:
            lines.append(f"attackalert: Host: {decision.src} is already blocked. Ignoring")
        else:
            lines.append(f"attackalert: Host: {host} is already blocked Ignoring")
    elif decision.action is Action.ALERT:
        lines.append(f"attackalert: Ignoring {proto} response per configuration file setting.")
    return lines


def _probe_line(decision: Decision, host: str, proto: str) -> str:
    if decision.kind is ScanKind.CONNECT:
        return f"attackalert: Connect from host: {host} to {proto} port: {decision.port}"
    label = portsentry_label(decision.kind, decision.flags, decision.proto)
    if decision.kind is ScanKind.FRAGMENT:
        return (
            f"attackalert: {label} from host: {host} to {proto} port: {decision.port}"
            " (detection avoidance technique)"
        )
    if decision.proto is Proto.UDP:
        return f"attackalert: UDP scan from host: {host} to UDP port: {decision.port}"
    return f"attackalert: {label} from host: {host} to TCP port: {decision.port}"


def held_back_line(held: int, seconds: float, top: Iterable[tuple[str, int]]) -> str:
    """PortSentinel's own line (1.2 logs every probe): the records the repeat limiter held
    back over the last ``seconds``, and the sources and reasons that held most."""
    worst = ", ".join(f"{who}: {count}" for who, count in top)
    return (
        f"adminalert: {held} repetitive records held back in the last {seconds:.3g}s "
        f"(most from {worst})"
    )


# --- start-up and shutdown, in 1.2's words (the UDP twin of each TCP line says UDP) ----------

ACTIVE = "adminalert: PortSentry is now active and listening."
SHUTDOWN = ("securityalert: PortSentry is shutting down", "adminalert: PortSentry is shutting down")


def starting_line(version: str) -> str:
    return f"adminalert: PortSentinel {version} (PortSentry 1.2 compatible) is starting."


def stealth_startup_lines(
    mode: Mode, watched: Iterable[int], excluded: Iterable[int], in_use: Iterable[int], limit: int
) -> list[str]:
    """What 1.2 logs when a stealth mode (stcp/sudp/atcp/audp) starts.

    ``in_use`` ports are skipped only while they are in use: unlike 1.2, a port that frees up
    later is watched from then on.
    """
    proto = mode.proto.label
    busy = sorted(set(in_use))
    if mode.advanced:
        lines = [f"adminalert: Advanced mode will monitor first {limit} ports"]
        excluded = sorted(set(excluded))
        lines += [f"adminalert: Advanced mode will manually exclude port: {p} " for p in excluded]
        if not excluded:
            lines.append("adminalert: Advanced mode will manually exclude no ports")
        lines += [
            f"adminalert: Advanced Stealth scan detection mode activated. Ignored {proto} port: {p}"
            for p in busy
            if p < limit
        ]
        return lines
    busy_set = set(busy)
    lines = []
    for port in sorted(set(watched)):
        if port in busy_set:
            lines.append(
                f"adminalert: ERROR: Socket {port} is in use and will not be monitored. "
                "Attempting to continue"
            )
        else:
            lines.append(f"adminalert: Going into stealth listen mode on {proto} port: {port}")
    return lines


def bound_startup_lines(proto: Proto, bound: Iterable[int], failed: Iterable[int]) -> list[str]:
    """What 1.2 logs when a classic mode (tcp/udp) binds its ports."""
    label = proto.label
    lines = [f"adminalert: Going into listen mode on {label} port: {p}" for p in sorted(bound)]
    lines += [
        f"adminalert: ERROR: could not bind {label} socket: {p}. Attempting to continue"
        for p in sorted(failed)
    ]
    return lines


def nothing_bound_line(proto: Proto) -> str:
    return f"adminalert: ERROR: could not bind ANY {proto.label} sockets. Shutting down."


def accept_failed_line(port: int) -> str:
    return (
        f"attackalert: Possible stealth scan from unknown host to TCP port: {port} (accept failed)"
    )


def decoy_cut_line(address: str, group: tuple[str, ...], seconds: float) -> str:
    """A ban cut short: its source probed in a decoy group, without proof of its address."""
    others = ", ".join(a for a in group if a != address)
    return (
        f"attackalert: Host {address}: ban cut to {seconds:.0f}s as a decoy's: it probed the "
        f"same ports at the same moments as {others}, without proof of its address"
    )
