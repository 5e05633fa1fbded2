"""``config defaults`` and ``config check``: both are walks over the setting declarations.

``render_defaults`` writes a complete, commented config file that loads back to exactly the
built-in defaults. ``check`` loads a config the way the daemon would (with its ignore file and
the defaults file that picks the modes), reports every warning and error, and prints the
effective settings, each with the place it came from, as a config file one could load.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TextIO

from portsentinel import paths
from portsentinel.config.declaration import SettingSpec
from portsentinel.config.ignore import load_ignore_file
from portsentinel.config.load import DEFAULT_ORIGIN, diagnose_config
from portsentinel.config.modes import modes_text, read_defaults_file, resolve_modes
from portsentinel.config.schema import SETTINGS, Settings
from portsentinel.errors import ConfigError, ConfigErrors
from portsentinel.files import absent

_ORIGIN_LABELS = {
    "portsentry-1.2": "PortSentry 1.2",
    "portsentry-2.0": "PortSentry 2.0",
    "portsentinel": "PortSentinel",
}

_DEFAULTS_HEADER = """\
# PortSentinel configuration: every setting with its built-in default.
#
# The syntax is PortSentry's: KEY="value", one setting per line, # starts a comment.
# A PortSentry 1.2 portsentry.conf is a valid PortSentinel configuration; the settings
# marked "PortSentinel" are new. An empty value (KEY="") means the built-in default, except
# for text, command and path settings, where it means "none".
"""


def quote(value: str) -> str:
    """The value in the quotes the loader reads back: double, or single if it has a ``"``."""
    if '"' not in value:
        return f'"{value}"'
    if "'" not in value:
        return f"'{value}'"
    raise ValueError("a config value cannot hold both quote characters")


def render_defaults() -> str:
    """Every setting as a commented config file; loading it gives exactly ``Settings()`` (the
    host paths in it are the shipped ones, which ``paths`` names unless pointed elsewhere)."""
    blocks = [_DEFAULTS_HEADER]
    for spec in SETTINGS:
        blocks.append(_describe(spec) + f"{spec.key}={quote(spec.default)}\n")
    return "\n".join(blocks)


def _describe(spec: SettingSpec) -> str:
    origin = _ORIGIN_LABELS[spec.origin]
    return (
        f"# {spec.help}.\n"
        f"# Type: {spec.parse.name}; unit: {spec.unit}; from {origin}.\n"
        f"# Accepts {spec.parse.expected}.\n"
    )


def check(path: str | None, out: TextIO, err: TextIO, *, as_json: bool = False) -> int:
    """Report on the config at ``path`` (None: embedded defaults). 0 if usable, 2 if not.
    ``as_json``: one JSON document on ``out`` instead (the file, the summary, the warnings,
    the errors, and each setting's value and origin when it loads); same exit status."""
    found = diagnose_config(path)
    warnings = list(found.warnings)
    errors = list(found.errors)
    summary: list[str] = []
    if found.config is not None:
        settings = found.config.settings
        summary.append(_check_ignore(settings, warnings, errors))
        summary.append(_check_modes(settings, warnings, errors))
    usable = not errors and found.config is not None
    if as_json:
        document: dict[str, object] = {
            "config": path, "ok": usable, "summary": summary, "warnings": warnings,
            "errors": [error.render() for error in errors],
        }  # fmt: skip
        if found.config is not None and usable:
            document["settings"] = {
                spec.key: {
                    "value": spec.render(getattr(found.config.settings, spec.attr)),
                    "origin": found.config.origins.get(spec.key, DEFAULT_ORIGIN),
                }
                for spec in SETTINGS
            }
        out.write(json.dumps(document, indent=2) + "\n")
        return paths.EXIT_OK if usable else paths.EXIT_USAGE
    for warning in warnings:
        print(f"warning: {warning}", file=err)
    for error in errors:
        print(error.render(), file=err)
    if errors or found.config is None:
        return paths.EXIT_USAGE
    where = path if path is not None else "embedded defaults (no file)"
    print(f"# Effective configuration: {where}", file=out)
    for line in summary:
        print(f"# {line}", file=out)
    out.write(render_effective(found.config.settings, found.config.origins))
    return paths.EXIT_OK


def render_effective(settings: Settings, origins: Mapping[str, str]) -> str:
    """``KEY="value"  # FILE:LINE`` for every setting, in declaration order."""
    lines = []
    for spec in SETTINGS:
        value = quote(spec.render(getattr(settings, spec.attr)))
        lines.append(f"{spec.key}={value}  # {origins.get(spec.key, DEFAULT_ORIGIN)}\n")
    return "".join(lines)


def _check_ignore(settings: Settings, warnings: list[str], errors: list[ConfigError]) -> str:
    """Load IGNORE_FILE as the daemon would. A missing one was already warned about."""
    path = settings.ignore_file
    if not path:
        return "Ignore list: none (IGNORE_FILE is not set)"
    if absent(path):
        return f"Ignore list: none ({path} does not exist)"
    try:
        addresses, notes = load_ignore_file(path, portsentry2=settings.log_format == "2.0")
    except ConfigErrors as exc:
        errors.extend(exc.errors)
        return f"Ignore list: {path} has errors"
    warnings.extend(notes)
    return f"Ignore list: {len(addresses)} entries from {path}"


def _check_modes(settings: Settings, warnings: list[str], errors: list[ConfigError]) -> str:
    """The modes a start without ``--mode`` would pick, and the defaults file's complaints."""
    try:
        if settings.defaults_file:
            warnings.extend(read_defaults_file(settings.defaults_file)[2])
        tcp, udp, source = resolve_modes(None, settings.defaults_file)
    except ConfigErrors as exc:
        errors.extend(exc.errors)
        return "Modes: the defaults file has errors"
    return f"Modes without --mode: {modes_text(tcp, udp)} (from {source})"
