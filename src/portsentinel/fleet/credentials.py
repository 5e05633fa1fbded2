"""The fleet's settings made usable: the machine's three-line file, the bouncer key file, the
URL and its transport, read once at start (and reload). A bad file is a ``ConfigError`` naming
the file, line and key; a warning is returned for plain HTTP to an address off this host."""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass

from portsentinel.config.schema import Settings
from portsentinel.errors import ConfigError
from portsentinel.files.regular import read_regular

_LIMIT = 64 * 1024  # either file is a few lines
_KEYS = ("url", "login", "password")


@dataclass(frozen=True, slots=True)
class Machine:
    """What ``cscli machines add NAME -f FILE`` wrote: the LAPI URL, the login, the password."""

    url: str
    login: str
    password: str


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """Everything the fleet link needs from the settings and the files."""

    url: str
    machine: Machine | None  # None: nothing is pushed
    api_key: str | None  # None: nothing is pulled
    ca_file: str | None
    warnings: tuple[str, ...] = ()


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def parse_machine(text: str, path: str) -> Machine:
    """The ``url:``, ``login:``, ``password:`` lines (YAML as cscli writes it; comments and
    blank lines allowed)."""
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition(":")
        key = key.strip()
        if not sep or key not in _KEYS:
            raise ConfigError(
                f"unexpected line {stripped[:40]!r}", file=path, line=number,
                key="CROWDSEC_CREDENTIALS_FILE", expected="url:, login: and password: lines",
            )  # fmt: skip
        if key in found:
            raise ConfigError(f"{key}: given twice", file=path, line=number,
                              key="CROWDSEC_CREDENTIALS_FILE")  # fmt: skip
        found[key] = _unquote(value)
    missing = [k for k in ("login", "password") if not found.get(k)]
    if missing:
        raise ConfigError(f"no {' and no '.join(missing)}", file=path,
                          key="CROWDSEC_CREDENTIALS_FILE",
                          expected="cscli machines add NAME --auto -f FILE's file")  # fmt: skip
    return Machine(found.get("url", ""), found["login"], found["password"])


def parse_key(text: str, path: str) -> str:
    """The bouncer key: one line of printable characters (cscli prints 32 hex digits)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 1 or not lines[0].isprintable() or " " in lines[0]:
        raise ConfigError("not one key", file=path, key="CROWDSEC_BOUNCER_KEY_FILE",
                          expected="the key cscli -oraw bouncers add NAME prints")  # fmt: skip
    return lines[0]


def _read(path: str, key: str) -> str:
    try:
        return read_regular(path, _LIMIT, "a credentials file").decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", key=key) from None


def plain_http_warning(url: str) -> str | None:
    """Plain HTTP off this host: the machine's password and the bouncer key travel readable."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "http":
        return None
    host = parts.hostname or ""
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        if host == "localhost":
            return None
    return (
        f"CROWDSEC_LAPI_URL={url} is plain HTTP to another host: the credentials and every "
        "decision travel unencrypted (use https:// and CROWDSEC_CA_FILE)"
    )


def fleet_config(settings: Settings) -> FleetConfig | None:
    """None when the fleet is off (no URL, or neither push nor pull has its file)."""
    url = settings.crowdsec_lapi_url.rstrip("/")
    if not url:
        return None
    machine = None
    if settings.crowdsec_push and settings.crowdsec_credentials_file:
        path = settings.crowdsec_credentials_file
        machine = parse_machine(_read(path, "CROWDSEC_CREDENTIALS_FILE"), path)
    api_key = None
    if settings.crowdsec_pull and settings.crowdsec_bouncer_key_file:
        path = settings.crowdsec_bouncer_key_file
        api_key = parse_key(_read(path, "CROWDSEC_BOUNCER_KEY_FILE"), path)
    if machine is None and api_key is None:
        return None
    warning = plain_http_warning(url)
    return FleetConfig(url, machine, api_key, settings.crowdsec_ca_file or None,
                       (warning,) if warning else ())  # fmt: skip
