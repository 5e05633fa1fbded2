"""Which modes to run: ``--mode``, else Debian's ``/etc/default/portsentry``, else atcp,audp.

PortSentry 1.2 runs one mode per process; Debian's init script starts one process per mode
named in the defaults file. PortSentinel runs at most one TCP and one UDP mode in one process,
chosen in that order, so an existing Debian install keeps the modes its admin picked.
"""

from __future__ import annotations

import re
import shlex

from portsentinel.errors import ConfigError, ConfigErrors
from portsentinel.files import MIB, read_regular
from portsentinel.model import Mode, Proto

DEFAULT_MODES = (Mode.ATCP, Mode.AUDP)
DEFAULT_SOURCE = "the built-in default"
CLI_SOURCE = "--mode"
_EXPECTED = "at most one TCP mode (tcp, stcp, atcp) and one UDP mode (udp, sudp, audp)"
_MODE_KEYS = {"TCP_MODE": Proto.TCP, "UDP_MODE": Proto.UDP}
_SHELL_ASSIGNMENT = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)")
_SPACED_ASSIGNMENT = re.compile(r"\s*(?:export\s+)?(TCP_MODE|UDP_MODE)\s+=")
# Debian's file is a few hundred bytes of shell; a megabyte of it is not a defaults file.
MAX_DEFAULTS_BYTES = 1 * MIB


def parse_modes(text: str, source: str) -> tuple[Mode | None, Mode | None]:
    """``"atcp,audp"`` (commas or spaces) -> ``(Mode.ATCP, Mode.AUDP)``.

    Raises ``ConfigError`` naming ``source`` for an unknown mode or two of one protocol.
    """
    chosen: dict[Proto, Mode] = {}
    names = [name.lower() for name in re.split(r"[\s,]+", text)]
    if not any(names):
        raise ConfigError("no mode given", file=source, expected=_EXPECTED)
    for name in filter(None, names):
        try:
            mode = Mode(name)
        except ValueError:
            raise ConfigError(f"unknown mode {name!r}", file=source, expected=_EXPECTED) from None
        if mode.proto in chosen:
            message = f"two {mode.proto.label} modes ({chosen[mode.proto]}, {mode})"
            raise ConfigError(message, file=source, expected=_EXPECTED)
        chosen[mode.proto] = mode
    return chosen.get(Proto.TCP), chosen.get(Proto.UDP)


def read_defaults_file(path: str) -> tuple[Mode | None, Mode | None, tuple[str, ...]]:
    """TCP_MODE and UDP_MODE from a shell-syntax defaults file, and warnings.

    A missing file names no mode. A mode that is not one of that protocol's three is a
    ``ConfigErrors``: falling back silently would watch something the admin did not ask for.
    """
    try:
        data = read_regular(path, MAX_DEFAULTS_BYTES, "a defaults file")
    except FileNotFoundError:
        return None, None, ()
    except OSError as exc:
        error = ConfigError(
            f"cannot read the file: {exc.strerror or exc}",
            file=path,
            key="DEFAULTS_FILE",
            expected="a readable file",
        )
        raise ConfigErrors([error]) from None
    return parse_defaults(data.decode("utf-8", "replace"), path)


def parse_defaults(text: str, source: str) -> tuple[Mode | None, Mode | None, tuple[str, ...]]:
    """Parse defaults-file text named ``source``. Pure. Later assignments win, as in sh."""
    found: dict[Proto, Mode | None] = {}
    warnings: list[str] = []
    errors: list[ConfigError] = []
    for number, line in enumerate(text.split("\n"), start=1):
        spaced = _SPACED_ASSIGNMENT.match(line)
        if spaced is not None:
            message = "spaces around '=' make this a command in sh, not a setting; ignored"
            warnings.append(_note(message, source, number, spaced[1]))
            continue
        match = _SHELL_ASSIGNMENT.fullmatch(line)
        if match is None or match[1] not in _MODE_KEYS:
            continue  # comments, other variables and shell code are not ours to judge
        key, proto = match[1], _MODE_KEYS[match[1]]
        try:
            value = _shell_word(match[2])
        except ValueError as exc:
            warnings.append(_note(f"cannot read the value ({exc}); ignored", source, number, key))
            continue
        if "$" in value or "`" in value:
            warnings.append(_note("shell expansion is not evaluated; ignored", source, number, key))
            continue
        try:
            found[proto] = _mode_for(proto, value)
        except ValueError as exc:
            expected = " or ".join(m.value for m in Mode if m.proto is proto)
            errors.append(
                ConfigError(str(exc), file=source, line=number, key=key, expected=expected)
            )
    if errors:
        raise ConfigErrors(errors)
    return found.get(Proto.TCP), found.get(Proto.UDP), tuple(warnings)


def _shell_word(raw: str) -> str:
    """The value of ``KEY=value`` as sh would see it, for the simple forms people write."""
    words = shlex.split(raw, comments=True)
    if len(words) > 1:
        raise ValueError("more than one word")
    return words[0] if words else ""


def _mode_for(proto: Proto, value: str) -> Mode | None:
    if not value:
        return None  # TCP_MODE="" : Debian's init script starts no TCP instance
    try:
        mode = Mode(value.lower())
    except ValueError:
        raise ValueError(f"unknown mode {value!r}") from None
    if mode.proto is not proto:
        raise ValueError(f"{mode} is not a {proto.label} mode")
    return mode


def _note(message: str, source: str, line: int, key: str) -> str:
    return ConfigError(message, file=source, line=line, key=key).render()


def resolve_modes(cli: str | None, defaults_file: str) -> tuple[Mode | None, Mode | None, str]:
    """The modes to run and where they came from: ``--mode``, the defaults file, ``default``.

    The defaults file counts when it names at least one mode; ``defaults_file=""`` skips it.
    """
    if cli is not None:
        tcp, udp = parse_modes(cli, CLI_SOURCE)
        return tcp, udp, CLI_SOURCE
    if defaults_file:
        tcp, udp, _warnings = read_defaults_file(defaults_file)
        if tcp is not None or udp is not None:
            return tcp, udp, defaults_file
    return (*DEFAULT_MODES, DEFAULT_SOURCE)


def modes_text(tcp: Mode | None, udp: Mode | None) -> str:
    """``atcp,audp``; ``none`` when neither is set."""
    return ",".join(m.value for m in (tcp, udp) if m is not None) or "none"
