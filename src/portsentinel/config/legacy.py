"""PortSentry 1.2's own reading of its files, for ``portsentinel migrate``.

PortSentinel reads a portsentry.conf more leniently than 1.2 did, so a few lines mean more
to it than they meant to PortSentry: 1.2 kept the *first* of repeated keys, skipped indented
lines and lines without quotes, read numbers with atoi (garbage is 0; BLOCK_x outside 0-2
acts as 0), and read an ignore entry's ``/0`` as /32. ``migrate_config`` and
``migrate_ignore`` copy the admin's text and rewrite only those lines, each with a
``# migrate:`` comment, so the new files mean what the old ones did. Pure: text in, text out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from portsentinel.config.commands import quote
from portsentinel.config.ignore import parse_entry
from portsentinel.config.schema import KEYS, SETTINGS, spec_for
from portsentinel.config.types import InvalidValueError

P12_KEYS = frozenset(s.key for s in SETTINGS if s.origin == "portsentry-1.2")
NOTE = "# migrate:"

_KEY_AT_START = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?=[ =])")
_INDENTED_KEY = re.compile(r"\s+([A-Za-z_][A-Za-z0-9_]*)\s*=")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")
_ATOI = re.compile(r"\s*([+-]?[0-9]*)")
# 1.2 reads an ignore entry as the leading run of these characters.
_IGNORE_CHARS = re.compile(r"[0-9.:/]+")


@dataclass(slots=True)
class Migration:
    """The new files' text and what to tell the admin."""

    config: list[str] = field(default_factory=list)
    carried: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)  # key -> line 1.2 took it from
    values: dict[str, str] = field(default_factory=dict)  # key -> value as written now
    kill_route: str = ""  # PortSentry's KILL_ROUTE (kept as a comment): what it left behind


# --- portsentry.conf, read as PortSentry 1.2 reads it ----------------------------------------


def portsentry_value(line: str) -> tuple[str, str | None] | None:
    """``(KEY, value)`` as 1.2 reads the line, ``(KEY, None)`` when 1.2 skips it for missing
    quotes, None when 1.2 sees no setting (a comment, or the key not at column 0)."""
    if line.startswith("#"):
        return None
    match = _KEY_AT_START.match(line)
    if match is None:
        return None
    start = line.find('"')
    if start < 0:
        return match[1], None
    end = line.find('"', start + 1)
    value = line[start + 1 : end if end >= 0 else len(line)]
    bad = _UNPRINTABLE.search(value)
    return match[1], value if bad is None else value[: bad.start()]


def atoi(text: str) -> int:
    """C's atoi: leading blanks, an optional sign, the digits that follow; 0 if none."""
    digits = _ATOI.match(text)
    try:
        return int(digits[1]) if digits else 0
    except ValueError:
        return 0


def effective_value(key: str, raw: str) -> str | None:
    """What 1.2 made of a value PortSentinel would refuse, as PortSentinel text, or None
    when there is no faithful equivalent (the admin must decide)."""
    number = atoi(raw)
    if key in ("BLOCK_TCP", "BLOCK_UDP"):
        return str(number) if number in (0, 1, 2) else "0"  # 1.2 treats any other as 0
    if key == "RESOLVE_HOST":
        return "1" if number == 1 else "0"
    if key == "KILL_RUN_CMD_FIRST":
        return "1" if number else "0"
    if key in ("SCAN_TRIGGER", "ADVANCED_PORTS_TCP", "ADVANCED_PORTS_UDP"):
        try:
            spec_for(key).parse(str(number))
        except InvalidValueError:
            return None
        return str(number)
    return None


def migrate_config(text: str, source: str, ignore_target: str | None) -> Migration:
    """The admin's file, line by line, with 1.2's meaning kept where PortSentinel's reading
    would differ. ``ignore_target`` replaces IGNORE_FILE (None: leave it)."""
    rewriter = _Rewriter(source, ignore_target)
    for number, line in enumerate(text.split("\n"), start=1):
        rewriter.result.config += rewriter.line(number, line.rstrip("\r"))
    config = rewriter.result.config
    while config and not config[-1].strip():
        config.pop()
    return rewriter.result


_SKIPPED = {
    "indented": "PortSentry ignored this indented line, so it stays off",
    "unknown key": "neither PortSentry nor PortSentinel knows this key",
    "no quotes": "PortSentry skipped this line (quotes missing)",
}


class _Rewriter:
    """One pass over portsentry.conf; each line becomes the line(s) to write instead."""

    def __init__(self, source: str, ignore_target: str | None) -> None:
        self.source = source
        self.ignore_target = ignore_target
        self.result = Migration()

    def line(self, number: int, line: str) -> list[str]:
        indented = _INDENTED_KEY.match(line)
        if indented is not None and indented[1] in KEYS:
            return self._off(number, indented[1], "indented", line)
        found = portsentry_value(line)
        if found is None:
            return [line]
        key, value = found
        if key not in KEYS:
            return self._off(number, key, "unknown key", line)
        if value is None:
            return self._off(number, key, "no quotes", line)
        first = self.result.seen.get(key)
        if first is not None and key in P12_KEYS:
            comment = f"PortSentry used {key} from line {first}; this one stays off"
            return self._off(number, key, f"line {first} wins", line, comment=comment)
        self.result.seen[key] = number
        return self._assign(number, key, value, line)

    def _off(self, number: int, key: str, why: str, line: str, *, comment: str = "") -> list[str]:
        """Comment out a line PortSentry did not use, saying why."""
        self.result.changed.append(f"{key} on line {number}: commented out ({why})")
        return [f"{NOTE} {comment or _SKIPPED[why]}", f"#{line}"]

    def _assign(self, number: int, key: str, value: str, line: str) -> list[str]:
        result = self.result
        if key == "IGNORE_FILE" and self.ignore_target is not None:
            result.values[key] = self.ignore_target
            result.changed.append(f"IGNORE_FILE: {value or '(empty)'} -> {self.ignore_target}")
            return [f"{NOTE} was {quote(value)}; a merged copy of PortSentry's ignore files",
                    f"IGNORE_FILE={quote(self.ignore_target)}"]  # fmt: skip
        if key == "KILL_ROUTE":
            result.kill_route = value
            result.changed.append(
                f'KILL_ROUTE "{value}" is replaced by BLOCK_BACKEND="nftables" (table inet '
                'portsentinel, bans that expire); kept as a comment. BLOCK_BACKEND="legacy" '
                "runs it as PortSentry did"
            )
            return [f"{NOTE} nftables (BLOCK_BACKEND below) replaces this; to run it as",
                    f'{NOTE} PortSentry did, set BLOCK_BACKEND="legacy" and remove the # below.',
                    f"#{line}"]  # fmt: skip
        if not _parses(key, value):
            return self._refused(number, key, value, line)
        result.values[key] = value
        result.carried.append(key)
        return [line]

    def _refused(self, number: int, key: str, value: str, line: str) -> list[str]:
        used = effective_value(key, value)
        if used is None:
            self.result.changed.append(
                f"{key} on line {number}: {quote(value)} is not valid; commented out, REVIEW "
                f"IT ({self.source}:{number})"
            )
            return [f"{NOTE} REVIEW: {quote(value)} is not a valid {key}", f"#{line}"]
        self.result.values[key] = used
        self.result.changed.append(
            f"{key} on line {number}: {quote(value)} -> {quote(used)} (as PortSentry read it)"
        )
        return [f"{NOTE} PortSentry read {quote(value)} as {used}", f"{key}={quote(used)}"]


def _parses(key: str, value: str) -> bool:
    spec = spec_for(key)
    if not value.strip():
        return spec.parse.text  # elsewhere "" means PortSentinel's default, not 1.2's atoi 0
    try:
        spec.parse(value)
    except InvalidValueError:
        return False
    return True


# --- ignore files ---------------------------------------------------------------------------


def migrate_ignore(sources: list[tuple[str, str]]) -> tuple[str, int, list[str]]:
    """One ignore file from ``(name, text)`` pairs: entries kept in order, duplicates
    dropped, 1.2's readings kept (``/0`` was /32 there). Returns text, entry count, notes."""
    lines = [
        "# PortSentinel ignore file, merged by `portsentinel migrate` from PortSentry's.",
        "# Never acted against: one IPv4/IPv6 address or CIDR range per line. This host's",
        "# own addresses, gateways, resolvers and SSH peers are protected without a line here.",
    ]
    seen: set[str] = set()
    notes: list[str] = []
    for name, text in sources:
        lines += ["", f"# from {name}"]
        for raw in text.split("\n"):
            lines += _ignore_line(raw.strip(), name, seen, notes)
    return "\n".join(lines) + "\n", len(seen), notes


def _ignore_line(line: str, name: str, seen: set[str], notes: list[str]) -> list[str]:
    words = line.split("#", 1)[0].split()
    if not words:
        return []
    word = words[0]
    entry, note = _ignore_entry(word)
    if entry is None:
        notes.append(f"{name}: {word!r} is not an address; left as a comment")
        return [f"{NOTE} not an address (PortSentry could not use it either): {line}"]
    key = str(parse_entry(entry))
    if key in seen:
        return []
    seen.add(key)
    if note:
        notes.append(f"{name}: {note}")
        return [f"{NOTE} {note}", entry]
    return [entry]


def _ignore_entry(word: str) -> tuple[str | None, str]:
    """The entry to write for ``word`` and a note when it differs from the line."""
    leading = _IGNORE_CHARS.match(word)
    for candidate in (word, leading[0] if leading else ""):
        if not candidate:
            continue
        try:
            network = parse_entry(candidate)
        except ValueError:
            continue
        if network.prefixlen == 0 and network.version == 4:
            address = candidate.partition("/")[0]
            return address, f"{candidate} was read as {address}/32 by PortSentry; kept so"
        if candidate != word:
            return candidate, f"{word!r} read as {candidate}, as PortSentry did"
        return candidate, ""
    return None, ""
