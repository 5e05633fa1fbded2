"""Value types of the settings that reach beyond the host's firewall: notifications (the
webhook, mail and the command that sends it) and the metrics endpoint.

They are stricter than PortSentry's plain text settings because their values end up in a URL
that is opened, a mail header, an argv or a listening socket: each is checked when the config
is loaded, so a bad one is a config error naming its line, not a failure at the first alert.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import urllib.parse
from enum import StrEnum

from portsentinel.config import types as t
from portsentinel.config.types import InvalidValueError, ValueType


class NotifyOn(StrEnum):
    """NOTIFY_ON: which first triggers are sent to the webhook and by mail."""

    ALERT = "alert"  # every source that crossed the trigger (alert, block, command)
    BLOCK = "block"  # only those that got a response (block, command)


def _notify_on(raw: str) -> NotifyOn:
    try:
        return NotifyOn(raw.strip().lower())
    except ValueError:
        raise InvalidValueError(f"{raw!r} is not block or alert") from None


notify_on = ValueType(
    name="notify level", expected="alert (every trigger) or block (responses only)",
    parse=_notify_on, render=lambda v: v.value,
)  # fmt: skip


class ScanRule(StrEnum):
    """SCAN_RULE: how a source becomes a scanner (``detect.settings.SCAN_RULES``)."""

    TRIGGER = "trigger"  # SCAN_TRIGGER hits, PortSentry's way
    TRW = "trw"  # the sequential test of first contacts (detect/trw.py)


def _scan_rule(raw: str) -> ScanRule:
    try:
        return ScanRule(raw.strip().lower())
    except ValueError:
        raise InvalidValueError(f"{raw!r} is not trigger or trw") from None


scan_rule = ValueType(
    name="rule", expected="trigger (SCAN_TRIGGER, PortSentry) or trw (sequential test)",
    parse=_scan_rule, render=lambda v: v.value,
)  # fmt: skip


def _webhook_url(raw: str) -> str:
    """An http(s) URL or empty: urllib would also open file:// and ftp:// ones."""
    url = raw.strip()
    if not url:
        return ""
    if any(c.isspace() for c in url):
        raise InvalidValueError("the URL contains spaces")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket: "Invalid IPv6 URL"
        raise InvalidValueError(f"not a URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidValueError(f"{parts.scheme or 'no'} scheme (only http and https are sent)")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked for it
    except ValueError:
        raise InvalidValueError("the port is not a number from 0 to 65535") from None
    if not parts.hostname:
        raise InvalidValueError("the URL names no host")
    return url


webhook_url = ValueType(
    name="URL", expected="an http:// or https:// URL, or empty for none",
    parse=_webhook_url, render=str, text=True,
)  # fmt: skip

# A mailbox as a To header may carry it: a local name (root) or name@domain. Deliberately
# narrow: the value ends up in a mail header.
_MAILBOX = re.compile(
    r"[A-Za-z0-9_%+=][A-Za-z0-9._%+=-]{0,63}(?:@[A-Za-z0-9][A-Za-z0-9.-]{0,252})?"
)


def _mail_to(raw: str) -> tuple[str, ...]:
    boxes = tuple(dict.fromkeys(b.strip() for b in raw.split(",") if b.strip()))
    for box in boxes:
        if not _MAILBOX.fullmatch(box):
            raise InvalidValueError(f"{box!r} is not a plain mail address")
    return boxes


mail_to = ValueType(
    name="mail addresses", expected="comma-separated addresses (root, ops@example.org), or empty",
    parse=_mail_to, render=", ".join,
)  # fmt: skip


def _argv(raw: str) -> tuple[str, ...]:
    try:
        argv = tuple(shlex.split(raw))
    except ValueError as exc:
        raise InvalidValueError(f"{raw!r} does not split into arguments ({exc})") from None
    if not argv:
        raise InvalidValueError("no command")
    if any('"' in a or "'" in a for a in argv):
        raise InvalidValueError("an argument holds a quote character")
    return argv


argv_command = ValueType(
    name="command", expected="a program and its arguments, run without a shell",
    parse=_argv, render=shlex.join,
)  # fmt: skip


def _listen(raw: str) -> tuple[str, int] | None:
    """``ADDR:PORT``, ``[V6]:PORT``, ``localhost:PORT`` or a bare port (127.0.0.1); "" off."""
    text = raw.strip()
    if not text:
        return None
    host, colon, port_text = text.rpartition(":")
    if not colon:
        host, port_text = "127.0.0.1", text
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host.lower() == "localhost":
        host = "127.0.0.1"  # never resolve a name: the address decides what is exposed
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidValueError(f"{host!r} is not an IP address (or localhost)") from None
    # ASCII digits only: str.isdigit() also says yes to "²", which int() refuses.
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= t.MAX_PORT:
        raise InvalidValueError(f"{port_text!r} is not a port number")
    return str(address), int(port_text)


def _listen_text(value: tuple[str, int] | None) -> str:
    if value is None:
        return ""
    host, port = value
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


listen_address = ValueType(
    name="address:port", expected="ADDR:PORT, [IPV6]:PORT or localhost:PORT, or empty for off",
    parse=_listen, render=_listen_text,
)  # fmt: skip


def remote_listen(host: str, *, allow_remote: bool) -> str | None:
    """Why METRICS_LISTEN's ``host`` is refused (an address other than loopback, without
    METRICS_ALLOW_REMOTE=1: the metrics would be served to the network), or None. The one rule
    for the loader (so ``config check`` refuses what ``run`` refuses) and the metrics server."""
    address = ipaddress.ip_address(host)
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    if (mapped or address).is_loopback or allow_remote:
        return None
    return f"{host} is not a loopback address: metrics would be served to the network"


REMOTE_LISTEN_EXPECTED = "127.0.0.1:PORT or [::1]:PORT, or METRICS_ALLOW_REMOTE=1"
