"""Value types of the configuration: parse a setting's text once, render it back for people.

Each ``ValueType`` couples a parser (text -> typed value, ``InvalidValueError`` on bad input) with a
renderer (typed value -> text that parses back to the same value) and the two phrases a
config error needs: a short type name for ``config defaults`` and what was expected.
After loading, nothing in PortSentinel reads a setting's raw string again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Generic, TypeVar

T = TypeVar("T")

MAX_PORT = 65535
# Ten years: long enough for any ban or window, short enough that an nftables timeout or a
# monotonic deadline computed from it stays a sane number. Use ``permanent`` for "forever".
MAX_DURATION = 3650 * 86400.0
MAX_COUNT = 2**31 - 1


class InvalidValueError(ValueError):
    """A setting's text does not parse; the message says what is wrong, in a few words."""


class BlockLevel(IntEnum):
    """PortSentry's BLOCK_TCP/BLOCK_UDP: what to do when the trigger fires."""

    LOG_ONLY = 0  # log and write the history line, run nothing
    BLOCK = 1  # block (backend / KILL_ROUTE, KILL_HOSTS_DENY) and run KILL_RUN_CMD
    RUN_CMD_ONLY = 2  # run KILL_RUN_CMD only


class Backend(StrEnum):
    """How a block is applied (BLOCK_BACKEND)."""

    NFTABLES = "nftables"
    IPTABLES = "iptables"
    ROUTE = "route"
    LEGACY = "legacy"  # run KILL_ROUTE as written, exactly like PortSentry


@dataclass(frozen=True, slots=True)
class ValueType(Generic[T]):
    """A parser and its inverse, with the words used in help and errors."""

    name: str
    expected: str
    parse: Callable[[str], T]
    render: Callable[[T], str]
    # Plain text settings keep an empty value as ""; every other type treats it as "unset".
    text: bool = False

    def __call__(self, raw: str) -> T:
        return self.parse(raw)


# --- integers and flags ---------------------------------------------------------------------

_UNSIGNED = re.compile(r"[0-9]{1,12}")
_SIGNED = re.compile(r"[+-]?[0-9]{1,12}")


def _integer(raw: str, low: int, high: int) -> int:
    text = raw.strip()
    if not _UNSIGNED.fullmatch(text):
        raise InvalidValueError(f"{raw!r} is not a whole number")
    value = int(text)
    if not low <= value <= high:
        raise InvalidValueError(f"{value} is out of range")
    return value


def int_range(low: int, high: int = MAX_COUNT) -> ValueType[int]:
    """Whole numbers between ``low`` and ``high`` inclusive."""
    upper = "" if high == MAX_COUNT else f" and <= {high}"
    return ValueType(
        name="integer",
        expected=f"a whole number >= {low}{upper}",
        parse=lambda raw: _integer(raw, low, high),
        render=str,
    )


def _flag(raw: str) -> bool:
    text = raw.strip()
    if text not in ("0", "1"):
        raise InvalidValueError(f"{raw!r} is not 0 or 1")
    return text == "1"


flag = ValueType(name="0/1", expected="0 or 1", parse=_flag, render=lambda v: "1" if v else "0")


def _nonzero(raw: str) -> bool:
    # PortSentry 1.2 reads KILL_RUN_CMD_FIRST with atoi and tests it against zero.
    text = raw.strip()
    if not _SIGNED.fullmatch(text):
        raise InvalidValueError(f"{raw!r} is not a whole number")
    return int(text) != 0


nonzero_flag = ValueType(
    name="0/1",
    expected="0 or 1 (any non-zero number counts as 1)",
    parse=_nonzero,
    render=lambda v: "1" if v else "0",
)


def _block_level(raw: str) -> BlockLevel:
    text = raw.strip()
    if text not in ("0", "1", "2"):
        raise InvalidValueError(f"{raw!r} is not 0, 1 or 2")
    return BlockLevel(int(text))


block_level = ValueType(
    name="0/1/2",
    expected="0 (log only), 1 (block) or 2 (run KILL_RUN_CMD only)",
    parse=_block_level,
    render=lambda v: str(int(v)),
)


def _number(raw: str, low: float, high: float) -> float:
    text = raw.strip()
    if not _DECIMAL.fullmatch(text):
        raise InvalidValueError(f"{raw!r} is not a number")
    value = float(text)
    if not low <= value <= high:
        raise InvalidValueError(f"{text} is out of range")
    return value


_DECIMAL = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")


def _number_text(value: float) -> str:
    """Positional decimal text that parses back to exactly ``value``.

    ``repr`` is already that unless it has an exponent (``1e-05``); only then is ``decimal``
    imported: it weighs some 0.3 MiB, resident in the daemon for good once imported.
    """
    value = float(value)
    if value.is_integer():
        return str(int(value))
    text = repr(value)
    if "e" not in text:
        return text
    from decimal import Decimal  # noqa: PLC0415 - see the docstring

    return format(Decimal(text), "f")


def number_range(low: float, high: float) -> ValueType[float]:
    """Decimal numbers (``2``, ``1.5``) between ``low`` and ``high`` inclusive."""
    return ValueType(
        name="number",
        expected=f"a number >= {_number_text(low)} and <= {_number_text(high)}",
        parse=lambda raw: _number(raw, low, high),
        render=_number_text,
    )


# --- ports ----------------------------------------------------------------------------------


def _port(text: str, raw: str) -> int:
    item = text.strip()
    if not _UNSIGNED.fullmatch(item):
        raise InvalidValueError(f"{item!r} in {raw!r} is not a port number")
    port = int(item)
    if not 1 <= port <= MAX_PORT:
        raise InvalidValueError(f"port {port} is out of range")
    return port


def _port_list(raw: str) -> frozenset[int]:
    ports: set[int] = set()
    for item in raw.split(","):
        if not item.strip():
            continue  # "1,2," and "1, ,2" are harmless slips, not worth refusing to start
        low_text, dash, high_text = item.partition("-")
        low = _port(low_text, raw)
        high = _port(high_text, raw) if dash else low
        if high < low:
            raise InvalidValueError(f"range {item.strip()!r} runs backwards")
        ports.update(range(low, high + 1))
    if not ports:
        # An empty list would render as "", which reads back as the default list.
        raise InvalidValueError(f"no port in {raw!r}")
    return frozenset(ports)


def ports_text(ports: Iterable[int]) -> str:
    """Ports as a comma list with consecutive runs of three or more written as ``a-b``."""
    ordered = sorted(set(ports))
    parts: list[str] = []
    start = 0
    while start < len(ordered):
        end = start
        while end + 1 < len(ordered) and ordered[end + 1] == ordered[end] + 1:
            end += 1
        first, last = ordered[start], ordered[end]
        if end - start >= 2:
            parts.append(f"{first}-{last}")
        else:
            parts.extend(str(p) for p in ordered[start : end + 1])
        start = end + 1
    return ",".join(parts)


port_list = ValueType(
    name="port list",
    expected="comma-separated ports 1-65535 or inclusive ranges a-b, e.g. 1,11,32771-32774",
    parse=_port_list,
    render=ports_text,
)

port_limit = ValueType(
    name="port limit",
    expected="a whole number from 1 to 65536 (ports below it are watched)",
    parse=lambda raw: _integer(raw, 1, MAX_PORT + 1),
    render=str,
)


# --- durations ------------------------------------------------------------------------------

_DURATION = re.compile(r"([0-9]{1,12}(?:\.[0-9]{1,9})?)\s*([smhd]?)", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
PERMANENT = "permanent"


def _seconds(raw: str, *, positive: bool) -> float:
    match = _DURATION.fullmatch(raw.strip())
    if match is None:
        raise InvalidValueError(f"{raw!r} is not a duration")
    seconds = float(match[1]) * _UNIT_SECONDS[match[2].lower()]
    if seconds > MAX_DURATION:
        raise InvalidValueError(f"{raw.strip()} is longer than 10 years")
    if positive and seconds <= 0:
        raise InvalidValueError("a zero duration is not allowed here")
    return seconds


def duration_text(seconds: float | None) -> str:
    """``permanent``, ``0``, or the largest whole unit: 3600 -> ``1h``, 90 -> ``90s``."""
    if seconds is None:
        return PERMANENT
    if seconds == 0:
        return "0"
    if seconds.is_integer():
        whole = int(seconds)
        for unit in ("d", "h", "m"):
            if whole % _UNIT_SECONDS[unit] == 0:
                return f"{whole // _UNIT_SECONDS[unit]}{unit}"
    return f"{_number_text(seconds)}s"


_DURATION_WORDS = "a duration such as 30s, 15m, 1h, 7d or plain seconds"

duration: ValueType[float] = ValueType(
    name="duration",
    expected=f"{_DURATION_WORDS}; 0 turns it off",
    parse=lambda raw: _seconds(raw, positive=False),
    render=duration_text,
)

positive_duration: ValueType[float] = ValueType(
    name="duration",
    expected=f"{_DURATION_WORDS}, more than 0",
    parse=lambda raw: _seconds(raw, positive=True),
    render=duration_text,
)


def duration_range(low: float, high: float) -> ValueType[float]:
    """A duration from ``low`` to ``high`` seconds, both included."""

    def parse(raw: str) -> float:
        seconds = _seconds(raw, positive=False)
        if not low <= seconds <= high:
            raise InvalidValueError(
                f"{raw.strip()} is outside {duration_text(low)}-{duration_text(high)}"
            )
        return seconds

    words = f"{_DURATION_WORDS}, from {duration_text(low)} to {duration_text(high)}"
    return ValueType(name="duration", expected=words, parse=parse, render=duration_text)


def _ban_length(raw: str) -> float | None:
    if raw.strip().lower() == PERMANENT:
        return None
    return _seconds(raw, positive=True)


ban_duration: ValueType[float | None] = ValueType(
    name="duration or permanent",
    expected=f"{_DURATION_WORDS}, more than 0, or permanent",
    parse=_ban_length,
    render=duration_text,
)


# --- text, paths and enumerations -----------------------------------------------------------


def _text(raw: str) -> str:
    return raw


text = ValueType(name="text", expected="any text", parse=_text, render=_text, text=True)
command = ValueType(
    name="command",
    expected="a command line; macros $TARGET$, $PORT$, $MODE$",
    parse=_text,
    render=_text,
    text=True,
)


def _path(raw: str) -> str:
    return raw.strip()


path = ValueType(
    name="path", expected="a file path, or empty for none", parse=_path, render=_path, text=True
)


_IFNAME = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")


def _interfaces(raw: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))
    for name in names:
        if not _IFNAME.fullmatch(name):
            raise InvalidValueError(f"{name!r} is not an interface name")
    return names


interfaces = ValueType(
    name="interface list",
    expected="comma-separated interface names (at most 15 characters each), or empty for all",
    parse=_interfaces,
    render=",".join,
)


LOG_FORMATS = ("1.2", "2.0")


def _log_format(raw: str) -> str:
    value = raw.strip()
    if value and value not in LOG_FORMATS:
        raise InvalidValueError(f"{value!r} is not a PortSentry log format")
    return value


log_format = ValueType(
    name="log format",
    expected="1.2 or 2.0, or empty to follow the command line",
    parse=_log_format,
    render=str,
    text=True,
)


def _backend(raw: str) -> Backend:
    try:
        return Backend(raw.strip().lower())
    except ValueError:
        raise InvalidValueError(f"{raw!r} is not a known backend") from None


backend = ValueType(
    name="backend",
    expected=" | ".join(b.value for b in Backend),
    parse=_backend,
    render=lambda v: v.value,
)
