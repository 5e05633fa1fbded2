"""Log lines in PortSentry 1.2's exact wording (``attackalert:``/``adminalert:`` messages).

Only the message is built here; the syslog ident, facility and timestamp are the sink's job.
1.2 writes nothing for probes below the trigger or from ignored hosts, and neither do we.
"""

from __future__ import annotations

from portsentinel.detect.classify import portsentry_label
from portsentinel.model import Action, Decision, Proto, Reason, ScanKind

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
