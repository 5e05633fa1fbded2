"""Read a ``portsentry.conf``-style file into a typed ``Settings`` object.

The syntax is PortSentry's (``KEY="value"``, ``#`` comments), read leniently where that is
harmless (spaces around ``=``, single quotes, unquoted single words, a trailing comment) and
strictly where PortSentry 1.2 silently guessed (atoi on garbage, missing quotes, trailing
text). Every fault in a file is collected in one pass, so an admin fixes them all at once;
each names ``FILE:LINE: KEY``. Unknown and duplicate keys are warnings: a 1.2 file with a typo
still loads, and the warning says which key was probably meant.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from portsentinel.config.declaration import SettingSpec
from portsentinel.config.endpoints import REMOTE_LISTEN_EXPECTED, remote_listen
from portsentinel.config.schema import KEYS, SETTINGS, Settings, spec_for
from portsentinel.config.types import Backend, BlockLevel, InvalidValueError
from portsentinel.errors import ConfigError, ConfigErrors
from portsentinel.files import MIB, absent, read_regular

DEFAULT_ORIGIN = "default"
# PortSentry's own file with every comment is 20 KiB; a file fifty times that is a mistake.
MAX_CONFIG_BYTES = 1 * MIB

_ASSIGNMENT = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)")
_LEADING_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)")
_COMMENT_START = re.compile(r"(?:^|\s)#")
# Control characters other than tab end a value in 1.2 (it stops at the first non-printable
# character); here they are an error rather than a silent truncation. Lone surrogates stand
# for bytes that were not UTF-8.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\udc80-\udcff]")
_QUOTED = 'KEY="value"'


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """The settings, where each came from (``FILE:LINE`` or ``default``), and the warnings."""

    settings: Settings
    origins: Mapping[str, str]
    warnings: tuple[str, ...]
    path: str | None


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """Everything one pass found: the config (None when there were errors) and all notes."""

    config: LoadedConfig | None
    warnings: tuple[str, ...]
    errors: tuple[ConfigError, ...]


class _LineError(Exception):
    """A line that is not a ``KEY="value"`` assignment; becomes a ConfigError."""

    def __init__(self, message: str, expected: str, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.expected = expected
        self.key = key


def load_config(path: str | None) -> LoadedConfig:
    """Load ``path`` (None: embedded defaults). Raises ``ConfigErrors`` listing every fault."""
    found = diagnose_config(path)
    if found.config is None:
        raise ConfigErrors(list(found.errors))
    return found.config


def diagnose_config(path: str | None) -> Diagnosis:
    """Like ``load_config`` but returns warnings and errors together, for ``config check``."""
    if path is None:
        origins = MappingProxyType(dict.fromkeys(KEYS, DEFAULT_ORIGIN))
        settings = Settings()
        notes = tuple(reference_warnings(settings, origins, None))
        return Diagnosis(LoadedConfig(settings, origins, notes, None), notes, ())
    try:
        data = read_regular(path, MAX_CONFIG_BYTES, "a configuration file")
    except OSError as exc:
        problem = ConfigError(
            f"cannot read the file: {exc.strerror or exc}",
            file=path,
            expected="a readable config file",
        )
        return Diagnosis(None, (), (problem,))
    found = parse_config(data, path)
    if found.config is None:
        return found
    config = found.config
    more = reference_warnings(config.settings, config.origins, path)
    warnings = (*found.warnings, *more)
    return Diagnosis(dataclasses.replace(config, warnings=warnings), warnings, ())


def parse_config(data: bytes | str, source: str) -> Diagnosis:
    """Parse config text named ``source`` (used in messages). Pure: touches no file."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    state = _Pass(source)
    for number, raw in enumerate(data.split(b"\n"), start=1):
        state.line(number, raw.removesuffix(b"\r").decode("utf-8", "surrogateescape"))
    return state.finish()


class _Pass:
    """One pass over a file: typed values, origins, warnings and errors as they are found."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.values: dict[str, Any] = {}  # each typed by its spec's parser
        self.origins: dict[str, str] = dict.fromkeys(KEYS, DEFAULT_ORIGIN)
        self.lines: dict[str, int] = {}
        self.warnings: list[str] = []
        self.errors: list[ConfigError] = []

    def line(self, number: int, text: str) -> None:
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            return
        try:
            key, raw = _split_assignment(text)
        except _LineError as exc:
            self._error(number, exc.key, exc.message, exc.expected)
            return
        if key not in KEYS:
            self._warn(number, key, f"unknown key, ignored{_suggestion(key)}")
            return
        self._assign(number, spec_for(key), raw)

    def _assign(self, number: int, spec: SettingSpec, raw: str) -> None:
        previous = self.lines.get(spec.key)
        if previous is not None:
            self._warn(number, spec.key, f"also set on line {previous}; line {number} wins")
        self.lines[spec.key] = number
        self.origins[spec.key] = f"{self.source}:{number}"
        if not spec.parse.text and not raw.strip():
            self.values[spec.attr] = spec.default_value  # KEY="" means "not set"
            return
        try:
            self.values[spec.attr] = spec.parse(raw)
        except InvalidValueError as exc:
            self._error(number, spec.key, str(exc), spec.parse.expected)
            return
        note = spec.lint(raw) if spec.lint is not None else None
        if note is not None:
            self._warn(number, spec.key, note)

    def finish(self) -> Diagnosis:
        if self.errors:
            return Diagnosis(None, tuple(self.warnings), tuple(self.errors))
        settings = dataclasses.replace(Settings(), **self.values)
        for key, message, expected in consistency_errors(settings):
            self._error(self.lines.get(key, 0), key, message, expected)
        if self.errors:
            return Diagnosis(None, tuple(self.warnings), tuple(self.errors))
        origins = MappingProxyType(self.origins)
        self.warnings.extend(consistency_warnings(settings, origins, self.source))
        notes = tuple(self.warnings)
        return Diagnosis(LoadedConfig(settings, origins, notes, self.source), notes, ())

    def _warn(self, number: int, key: str, message: str) -> None:
        self.warnings.append(ConfigError(message, file=self.source, line=number, key=key).render())

    def _error(self, number: int, key: str | None, message: str, expected: str) -> None:
        self.errors.append(
            ConfigError(message, file=self.source, line=number, key=key, expected=expected)
        )


def _split_assignment(text: str) -> tuple[str, str]:
    """``KEY = "value"  # note`` -> ``("KEY", "value")``; ``_LineError`` if it is not one."""
    match = _ASSIGNMENT.fullmatch(text)
    if match is None:
        name = _LEADING_NAME.match(text)
        if name is None:
            raise _LineError("not a setting line", _QUOTED)
        raise _LineError("no '=' after the key", _QUOTED, name[1])
    key, rest = match[1], match[2].rstrip()
    value = _quoted_value(key, rest) if rest[:1] in ("'", '"') else _bare_value(key, rest)
    bad = _UNPRINTABLE.search(value)
    if bad is not None:
        what = "bytes that are not UTF-8" if bad[0] >= "\udc80" else "a control character"
        raise _LineError(f"the value contains {what}", "printable text", key)
    return key, value


def _quoted_value(key: str, rest: str) -> str:
    quote = rest[0]
    end = rest.find(quote, 1)
    if end < 0:
        raise _LineError(f"the closing {quote} is missing", _QUOTED, key)
    after = rest[end + 1 :].strip()
    if after and not after.startswith("#"):
        raise _LineError(
            f"unexpected text {after!r} after the value",
            "only a # comment after the closing quote",
            key,
        )
    return rest[1:end]


def _bare_value(key: str, rest: str) -> str:
    value = _COMMENT_START.split(rest, maxsplit=1)[0].strip()
    if '"' in value or "'" in value:
        raise _LineError("a quote inside an unquoted value", "the whole value in quotes", key)
    if len(value.split()) > 1:
        raise _LineError("an unquoted value with spaces", f'quotes around it: {key}="..."', key)
    return value


def _suggestion(key: str) -> str:
    close = difflib.get_close_matches(key.upper(), [s.key for s in SETTINGS], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def origin_location(origin: str) -> tuple[str | None, int | None]:
    """Split ``FILE:LINE`` back into its parts; ``default`` has neither."""
    if origin == DEFAULT_ORIGIN:
        return None, None
    file, _, line = origin.rpartition(":")
    return file, int(line)


def _note(origins: Mapping[str, str], key: str, source: str | None, message: str) -> str:
    """A warning about ``key``, located at the line that set it (or just the file)."""
    file, line = origin_location(origins.get(key, DEFAULT_ORIGIN))
    return ConfigError(message, file=file or source, line=line, key=key).render()


# --- warnings about combinations of settings (pure) -----------------------------------------


def consistency_errors(settings: Settings) -> list[tuple[str, str, str]]:
    """(key, message, expected) for settings that parse alone but not together: what ``run``
    would refuse, so that loading refuses it (``config check`` included)."""
    errors = []
    if settings.metrics_listen is not None:
        host = settings.metrics_listen[0]
        why = remote_listen(host, allow_remote=settings.metrics_allow_remote)
        if why is not None:
            errors.append(("METRICS_LISTEN", why, REMOTE_LISTEN_EXPECTED))
    return errors


def consistency_warnings(
    settings: Settings, origins: Mapping[str, str], source: str | None
) -> list[str]:
    """Settings that parse but will not do what they seem to say."""
    notes: list[str] = []
    for key, level in (("BLOCK_TCP", settings.block_tcp), ("BLOCK_UDP", settings.block_udp)):
        if level is BlockLevel.RUN_CMD_ONLY and not settings.kill_run_cmd:
            notes.append(_note(origins, key, source, "is 2 but KILL_RUN_CMD is empty"))
        legacy = settings.block_backend is Backend.LEGACY
        if level is BlockLevel.BLOCK and legacy and not _legacy_actions(settings):
            message = "is 1 but BLOCK_BACKEND=legacy has no KILL_ROUTE or KILL_HOSTS_DENY"
            notes.append(_note(origins, key, source, message))
    if settings.kill_route and settings.block_backend is not Backend.LEGACY:
        message = f"not used: BLOCK_BACKEND={settings.block_backend} blocks instead"
        notes.append(_note(origins, "KILL_ROUTE", source, message))
    if settings.kernel_hold and settings.block_backend is not Backend.NFTABLES:
        backend = settings.block_backend
        message = f"is 1 but not used: it needs BLOCK_BACKEND=nftables (not {backend})"
        notes.append(_note(origins, "KERNEL_HOLD", source, message))
    first, most = settings.ban_duration, settings.ban_max_duration
    if first is not None and most is not None and most < first:
        message = "is shorter than BAN_DURATION, so every ban is cut to it"
        notes.append(_note(origins, "BAN_MAX_DURATION", source, message))
    return notes


def _legacy_actions(settings: Settings) -> bool:
    return bool(settings.kill_route or settings.kill_hosts_deny)


# --- warnings about files the config names (reads the file system) --------------------------


def reference_warnings(
    settings: Settings, origins: Mapping[str, str], source: str | None
) -> list[str]:
    """Files and commands the config names that are missing here: worth a warning only,
    since a config is often checked on a machine other than the one it is for."""
    notes: list[str] = []
    if settings.ignore_file and absent(settings.ignore_file):
        message = f"{settings.ignore_file} does not exist; nothing will be ignored"
        notes.append(_note(origins, "IGNORE_FILE", source, message))
    for key in ("HISTORY_FILE", "BLOCKED_FILE"):
        folder = _missing_folder(getattr(settings, key.lower()))
        if folder is not None:
            notes.append(_note(origins, key, source, f"directory {folder} does not exist"))
    if settings.kill_hosts_deny:
        folder = _missing_folder(settings.hosts_deny_file)
        if folder is not None:
            notes.append(_note(origins, "HOSTS_DENY_FILE", source, f"{folder} does not exist"))
    explicit = origins.get("DEFAULTS_FILE", DEFAULT_ORIGIN) != DEFAULT_ORIGIN
    if explicit and settings.defaults_file and absent(settings.defaults_file):
        message = (f"{settings.defaults_file} does not exist; without --mode the modes are "
                   "the defaults (atcp,audp)")  # fmt: skip
        notes.append(_note(origins, "DEFAULTS_FILE", source, message))
    for key in ("KILL_ROUTE", "KILL_RUN_CMD", "UNBLOCK_RUN_CMD"):
        words = str(getattr(settings, key.lower())).split()
        if words and words[0].startswith("/") and not _executable(words[0]):
            message = f"command {words[0]} does not exist or is not executable here"
            notes.append(_note(origins, key, source, message))
    return notes


def _exists(path: str) -> bool:
    try:
        return os.path.exists(path)
    except (ValueError, OSError):
        return False


def _missing_folder(path: str) -> str | None:
    if not path:
        return None
    folder = os.path.dirname(path) or "."
    return None if _exists(folder) and os.path.isdir(folder) else folder


def _executable(path: str) -> bool:
    try:
        return os.path.isfile(path) and os.access(path, os.X_OK)
    except (ValueError, OSError):
        return False
