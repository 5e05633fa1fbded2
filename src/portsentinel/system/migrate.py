"""``portsentinel migrate``: carry a PortSentry setup over to PortSentinel, and say how to
retire PortSentry.

A PortSentry config is already a PortSentinel config, so the admin's file is copied line by
line, comments included; ``config/legacy.py`` rewrites only the lines PortSentinel would read
differently from 1.2. Besides: IGNORE_FILE points at a merged copy of the ignore files
(Debian's portsentry.ignore.static included), KILL_ROUTE is kept as a comment since nftables
replaces it, and the modes of /etc/default/portsentry are copied. HISTORY_FILE stays where it
is, so fail2ban's portsentry jail keeps reading it. The verb never stops, disables or removes
anything: it prints the commands.
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from portsentinel import paths
from portsentinel.config.commands import quote, render_defaults
from portsentinel.config.ignore import MAX_IGNORE_BYTES, parse_ignore
from portsentinel.config.legacy import (
    NOTE,
    Migration,
    migrate_config,
    migrate_ignore,
    portsentry_value,
)
from portsentinel.config.load import MAX_CONFIG_BYTES, parse_config
from portsentinel.config.modes import modes_text, read_defaults_file
from portsentinel.config.schema import spec_for
from portsentinel.files import MIB, FileRefused, read_regular
from portsentinel.model import Mode
from portsentinel.system import migrate2
from portsentinel.system.install import under, write_file
from portsentinel.system.leftovers import Finder, Leftover, recorded_addresses

LEGACY_KEYS = ("KILL_ROUTE", "HISTORY_FILE", "BLOCKED_FILE")
IGNORE_NAME = "portsentinel.ignore"
MODES_NAME = "modes"
STATIC_IGNORE = "portsentry.ignore.static"
# Where the service writes without a drop-in of install's (system/grants.py).
WRITABLE = ("/var/lib/portsentinel/", "/var/log/portsentinel/")
_MAX_LOGROTATE_BYTES = 1 * MIB


# --- what runs, and the advice --------------------------------------------------------------


def running_portsentry(proc: Path = Path("/proc")) -> list[str]:
    """``PID COMMAND`` of every running PortSentry process (read only; nothing is stopped)."""
    found = []
    for entry in sorted(proc.iterdir(), key=lambda p: (len(p.name), p.name)):
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"portsentry":
            words = [a.decode("utf-8", "replace") for a in argv if a]
            found.append(f"{entry.name} {' '.join(words)}")
    return found


def retire_steps(tcp: Mode | None, udp: Mode | None, output: str) -> list[str]:
    """How to stop and disable a Debian PortSentry, then start PortSentinel."""
    names = [f"portsentry -{m.value}" for m in (tcp, udp) if m is not None]
    if not names:
        gone = "no portsentry process is left"
    else:
        gone = f"{' and '.join(names)} {'are' if len(names) > 1 else 'is'} gone"
    return [
        "Stop PortSentry: systemctl stop portsentry   (without systemd: "
        "/etc/init.d/portsentry stop)",
        "Keep it from starting at boot: systemctl disable portsentry   (or: update-rc.d "
        "portsentry disable)",
        f"Check that {gone}: pgrep -a portsentry   (prints nothing)",
        f"Check the new configuration: portsentinel config check --config {output}",
        "Install and start the service: portsentinel install; systemctl daemon-reload; "
        "systemctl enable --now portsentinel",
        "Later, once PortSentinel does what you want: apt remove portsentry (keeps its "
        "configuration, a way back)",
    ]


# --- the whole migration --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """Paths on the target system (``root`` is where that system's files are); the verb
    fills them from its options, whose defaults are ``paths``."""

    root: Path
    from_dir: str
    defaults: str
    output: str
    flags: str | None = None  # PortSentry 2.0's command line, as the admin gives it
    state_dir: str = paths.STATE_DIR  # where 2.0's blocked addresses become bans

    def real(self, target: str) -> Path:
        return under(self.root, target)

    @property
    def companion_dir(self) -> str:
        return os.path.dirname(self.output) or "/"


@dataclass(slots=True)
class Outcome:
    """The files to write (target path -> text) and the report."""

    files: dict[str, str] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)
    carried: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    legacy: dict[str, str] = field(default_factory=dict)  # KILL_ROUTE and PortSentry's files


def plan(request: Request) -> Outcome:
    """Read the PortSentry setup and work out the new files; writes nothing.

    Raises ``FileNotFoundError`` without portsentry.conf, ``ConfigErrors`` for a defaults
    file with a mode that is not one, and ``OSError`` for a file that is there but cannot be
    read (``files.FileRefused``: a FIFO, a symlink loop, too large ...).
    """
    conf_target = os.path.join(request.from_dir, "portsentry.conf")
    data = read_regular(str(request.real(conf_target)), MAX_CONFIG_BYTES, "a configuration file")
    text = data.decode("utf-8", "surrogateescape")
    outcome = Outcome()
    ignore_target = _plan_ignore(request, text, outcome)
    migration = migrate_config(text, conf_target, ignore_target)
    outcome.carried = migration.carried
    outcome.changed[:0] = migration.changed
    tcp, udp = _plan_modes(request, outcome)
    added = _added_settings(migration, ignore_target, outcome)
    config = [*_header(conf_target), *migration.config, "", *added]
    outcome.files[request.output] = "\n".join(config) + "\n"
    outcome.summary.insert(0, f"Configuration: {request.output}  (from {conf_target})")
    _different(request, migration, outcome)
    outcome.steps = retire_steps(tcp, udp, request.output)
    for key in LEGACY_KEYS:
        outcome.legacy[key] = migration.values.get(key, "")
    outcome.legacy["KILL_ROUTE"] = migration.kill_route
    return outcome


def _header(source: str) -> list[str]:
    return [
        "# PortSentinel configuration, migrated from PortSentry by `portsentinel migrate`",
        f"# from {source}.",
        "# PortSentry's lines follow unchanged (a PortSentry configuration is a PortSentinel",
        "# one), except those marked 'migrate:'. Settings PortSentinel adds are at the end;",
        "# `portsentinel config defaults` lists every setting with its meaning.",
        "",
    ]


def _first_ignore_file(text: str) -> str:
    for line in text.split("\n"):
        found = portsentry_value(line.rstrip("\r"))
        if found is not None and found[0] == "IGNORE_FILE" and found[1] is not None:
            return found[1]
    return ""


def _plan_ignore(request: Request, text: str, outcome: Outcome) -> str | None:
    """Merge Debian's static list and the file IGNORE_FILE names; None when neither exists.
    One that is there but cannot be read stops the migration (``OSError``): leaving its
    addresses out would get them blocked."""
    names = [os.path.join(request.from_dir, STATIC_IGNORE), _first_ignore_file(text)]
    sources = []
    for name in dict.fromkeys(n for n in names if n):
        try:
            data = read_regular(str(request.real(name)), MAX_IGNORE_BYTES, "an ignore file")
        except FileNotFoundError:
            continue
        sources.append((name, data.decode("utf-8", "replace")))
    if not sources:
        return None
    target = os.path.join(request.companion_dir, IGNORE_NAME)
    ignore_text, count, notes = migrate_ignore(sources)
    parse_ignore(ignore_text, target)  # a bug here must not reach the admin's system
    outcome.files[target] = ignore_text
    read = ", ".join(name for name, _ in sources)
    outcome.summary.append(f"Ignore file: {target}  ({count} entries from {read})")
    outcome.changed += notes
    return target


def _plan_modes(request: Request, outcome: Outcome) -> tuple[Mode | None, Mode | None]:
    tcp, udp, warnings = read_defaults_file(str(request.real(request.defaults)))
    outcome.changed += list(warnings)
    if tcp is None and udp is None:
        outcome.summary.append(
            f"Modes: {request.defaults} names none; PortSentinel runs atcp,audp (--mode changes it)"
        )
        return tcp, udp
    target = os.path.join(request.companion_dir, MODES_NAME)
    outcome.files[target] = (
        "# The modes PortSentinel runs without --mode, copied by `portsentinel migrate` from\n"
        f"# {request.defaults}. TCP_MODE: tcp, stcp or atcp; UDP_MODE: udp, sudp or audp;\n"
        "# empty: no mode for that protocol.\n"
        f'TCP_MODE="{tcp.value if tcp else ""}"\n'
        f'UDP_MODE="{udp.value if udp else ""}"\n'
    )
    outcome.summary.append(f"Modes: {target}  ({modes_text(tcp, udp)}, from {request.defaults})")
    outcome.changed.append(f"DEFAULTS_FILE: {request.defaults} -> {target} (a copy of the modes)")
    return tcp, udp


def _added_settings(migration: Migration, ignore_target: str | None, outcome: Outcome) -> list[str]:
    modes = next((t for t in outcome.files if t.endswith("/" + MODES_NAME)), None)
    lines = ["#" * 94, "# Added by `portsentinel migrate`", "#" * 94]
    for key in ("BLOCK_TCP", "BLOCK_UDP"):
        if key not in migration.values:
            lines += [f"{NOTE} not set in PortSentry's file: 0 (log only) for PortSentry"]
            lines += [f'{key}="0"']
            migration.values[key] = "0"
            outcome.changed.append(f'{key}: not set, so "0" as PortSentry read it (log only)')
    if ignore_target is not None and "IGNORE_FILE" not in migration.values:
        lines += ["# PortSentry's ignore files, merged", f"IGNORE_FILE={quote(ignore_target)}"]
        outcome.changed.append(f"IGNORE_FILE: not set -> {ignore_target}")
    if modes is not None:
        lines += [
            "# The modes of the Debian defaults file, copied",
            f"DEFAULTS_FILE={quote(modes)}",
        ]
    lines += [
        "# How bans are applied: nftables (table inet portsentinel) replaces KILL_ROUTE;",
        '# "legacy" runs KILL_ROUTE as PortSentry did. KILL_HOSTS_DENY and KILL_RUN_CMD still run.',
        'BLOCK_BACKEND="nftables"',
        "# Bans expire (repeat offenders get longer ones, up to BAN_MAX_DURATION). PortSentry's",
        '# lasted until a reboot (routes) or for ever (hosts.deny): "permanent" does that.',
        'BAN_DURATION="1h"',
    ]
    return lines


def _different(request: Request, migration: Migration, outcome: Outcome) -> None:
    values = migration.values
    blocking = "1" in (values.get("BLOCK_TCP"), values.get("BLOCK_UDP"))
    if blocking:
        outcome.different.append(
            "Blocking is on: through nftables, bans expire after BAN_DURATION, and this "
            "host's addresses, gateways, resolvers and SSH peers are never blocked"
        )
    else:
        outcome.different.append(
            "Blocking stays off as in your PortSentry (BLOCK_TCP/BLOCK_UDP not 1): scans are "
            'logged and written to HISTORY_FILE; set "1" to block through nftables'
        )
    if blocking and values.get("KILL_HOSTS_DENY"):
        outcome.different.append(
            "KILL_HOSTS_DENY is used: portsentinel install adds a drop-in that lets the "
            "service write that file (and nothing else of its directory)"
        )
    outcome.different.append(
        "One process watches TCP and UDP; SCAN_TRIGGER counts per source across both"
    )
    for key in ("ADVANCED_EXCLUDE_TCP", "ADVANCED_EXCLUDE_UDP"):
        if key not in values:
            default = spec_for(key).default
            outcome.different.append(
                f"{key} is not set: PortSentry excluded no port, PortSentinel excludes {default}"
            )
    for key in ("HISTORY_FILE", "BLOCKED_FILE"):
        _writable_note(request, key, values.get(key, ""), outcome)


def _writable_note(request: Request, key: str, path: str, outcome: Outcome) -> None:
    if not path:
        return
    if key == "HISTORY_FILE":
        outcome.different.append(
            f"HISTORY_FILE stays {path}: same line format, fail2ban's portsentry jail keeps working"
        )
        _logrotate_overlap(request, path, outcome)
    if not path.startswith(WRITABLE):
        outcome.different.append(
            f"{key} {path} is outside the service's state directory: portsentinel install "
            f"makes {os.path.dirname(path)} writable for it (a drop-in, and the ownership)"
        )


def _logrotate_overlap(request: Request, path: str, outcome: Outcome) -> None:
    """logrotate refuses a file two of its configurations name; ours names the history."""
    folder = request.real(paths.LOGROTATE_DIR)
    if not folder.is_dir():
        return
    for rules in sorted(folder.iterdir()):
        if rules.name == "portsentinel":
            continue
        try:
            data = read_regular(str(rules), _MAX_LOGROTATE_BYTES, "logrotate rules")
        except OSError:
            continue  # not a file of rules (a directory, a FIFO ...): nothing to compare
        mentions = path in data.decode("utf-8", "replace")
        if mentions:
            outcome.different.append(
                f"/etc/logrotate.d/{rules.name} rotates {path} too: remove that entry, "
                "/etc/logrotate.d/portsentinel rotates it (logrotate refuses duplicates)"
            )


def conflicts(request: Request, files: dict[str, str]) -> list[str]:
    """Files that exist with other content; a pristine default config may be replaced."""
    found = []
    for target, text in files.items():
        path = request.real(target)
        try:
            data = read_regular(str(path), MAX_IGNORE_BYTES, "a file migrate writes")
        except FileNotFoundError:
            continue
        except FileRefused:  # a FIFO, a directory, a huge file: in the way all the same
            found.append(str(path))
            continue
        current = data.decode("utf-8", "replace")
        if current == text or (target == request.output and current == render_defaults()):
            continue
        found.append(str(path))
    return found


def migrate(request: Request, out: TextIO, err: TextIO) -> int:
    """Plan, refuse to overwrite, check, write, and report. A PortSentry 2.0 installation
    (its flags given, or its systemd unit found) goes the 2.0 way (``migrate2``)."""
    unit = migrate2.unit_command(request.root)
    if request.flags is not None or unit is not None:
        return migrate_2_0(request, unit, out, err)
    try:
        outcome = plan(request)
    except FileNotFoundError as exc:
        err.write(f"portsentinel: no PortSentry configuration: {exc.filename}\n")
        return paths.EXIT_FAILURE
    config_text = outcome.files[request.output]
    found = parse_config(config_text, request.output)
    if found.config is None:  # pragma: no cover - would be a bug in the rewriting above
        for error in found.errors:
            err.write(f"portsentinel: migrate produced an invalid line: {error.render()}\n")
        return paths.EXIT_FAILURE
    clash = conflicts(request, outcome.files)
    if clash:
        err.write(
            "portsentinel: these files exist and would change; move them away or choose "
            f"--output: {', '.join(clash)}\n"
        )
        return paths.EXIT_FAILURE
    for target, text in outcome.files.items():
        path = request.real(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(path, text, 0o640 if target == request.output else 0o644)
    live = request.root.resolve() == Path("/")  # a staging root has no kernel of its own
    running = running_portsentry() if live else []
    _report(outcome, found.warnings, running, out)
    if live:
        _report_leftovers(request, outcome, out)
    return paths.EXIT_OK


def migrate_2_0(
    request: Request, unit: tuple[str, list[str]] | None, out: TextIO, err: TextIO
) -> int:
    """From PortSentry 2.0: its flags (given, else its unit's), config, ignore and blocked
    files; the blocked file's addresses become bans in the state store."""
    if request.flags is not None:
        words, source = shlex.split(request.flags), "--flags"
    else:
        assert unit is not None
        words, source = unit[1], unit[0]
    flags = migrate2.read_flags(words)
    conf = flags.config or os.path.join(request.from_dir, "portsentry.conf")
    try:
        result = migrate2.plan(request.root, conf, flags, request.output, source)
    except FileNotFoundError as exc:
        err.write(f"portsentinel: no PortSentry 2.0 configuration: {exc.filename}\n")
        return paths.EXIT_FAILURE
    clash = conflicts(request, result.files)
    if clash:
        err.write(
            "portsentinel: these files exist and would change; move them away or choose "
            f"--output: {', '.join(clash)}\n"
        )
        return paths.EXIT_FAILURE
    for target, text in result.files.items():
        path = request.real(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(path, text, 0o640 if target == request.output else 0o644)
    if result.bans:
        state = request.real(request.state_dir)
        added = migrate2.record_bans(state, result.bans, "nftables", time.time())
        result.summary.append(
            f"Bans recorded in {request.state_dir}: {added} new, {len(result.bans) - added} "
            "there already"
        )
    outcome = Outcome(
        summary=result.summary, carried=result.carried, changed=result.changed,
        different=result.different, steps=migrate2.retire_steps(request.output, source),
    )  # fmt: skip
    running = running_portsentry() if request.root.resolve() == Path("/") else []
    _report(outcome, tuple(result.warnings), running, out)
    return paths.EXIT_OK


# --- what PortSentry's KILL_ROUTE left behind ---------------------------------------------


def _leftovers(request: Request, outcome: Outcome) -> tuple[Finder, list[Leftover]]:
    finder = Finder(outcome.legacy.get("KILL_ROUTE", ""))
    texts = []
    history, blocked = (
        outcome.legacy.get("HISTORY_FILE", ""),
        outcome.legacy.get("BLOCKED_FILE", ""),
    )
    names = [history] if history else []
    if blocked:
        folder = request.real(os.path.dirname(blocked))
        base = os.path.basename(blocked)
        if folder.is_dir():
            names += sorted(str(Path(blocked).parent / p.name) for p in folder.glob(f"{base}.*"))
    for name in names:
        try:
            texts.append(
                read_regular(str(request.real(name)), 64 * MIB, "a PortSentry file").decode(
                    "utf-8", "replace"
                )
            )
        except OSError:
            continue
    return finder, finder.find(recorded_addresses(texts))


def _report_leftovers(request: Request, outcome: Outcome, out: TextIO) -> None:
    finder, found = _leftovers(request, outcome)
    if found:
        out.write(
            "\nLeft in the kernel by PortSentry's KILL_ROUTE (`portsentinel migrate "
            "--clean-legacy` removes them; nothing else does):\n"
        )
        for leftover in found:
            out.write(f"  - {leftover.what}\n")
    elif outcome.legacy.get("KILL_ROUTE") and not finder.kind:
        out.write(
            f"\nKILL_ROUTE {outcome.legacy['KILL_ROUTE']!r} is not a route or iptables "
            "command: check by hand what it left behind\n"
        )


def clean_legacy(request: Request, out: TextIO, err: TextIO) -> int:
    """Remove what PortSentry's KILL_ROUTE left behind (``migrate --clean-legacy``)."""
    running = running_portsentry() if request.root.resolve() == Path("/") else []
    if running:
        err.write(
            "portsentinel: PortSentry is running and would add them again: stop it first "
            f"({'; '.join(running)})\n"
        )
        return paths.EXIT_FAILURE
    try:
        outcome = plan(request)
    except FileNotFoundError as exc:
        err.write(f"portsentinel: no PortSentry configuration: {exc.filename}\n")
        return paths.EXIT_FAILURE
    finder, found = _leftovers(request, outcome)
    if not found:
        out.write("nothing left behind by PortSentry's KILL_ROUTE\n")
        return paths.EXIT_OK
    lines = finder.clean(found)
    for line in lines:
        out.write(line + "\n")
    failed = any(not line.startswith("removed ") for line in lines)
    return paths.EXIT_FAILURE if failed else paths.EXIT_OK


def _report(outcome: Outcome, warnings: tuple[str, ...], running: list[str], out: TextIO) -> None:
    say = out.write
    for line in outcome.summary:
        say(line + "\n")
    say(f"\nCarried over unchanged ({len(outcome.carried)}): {', '.join(outcome.carried)}\n")
    sections = (
        ("Changed", outcome.changed),
        ("Different on purpose", outcome.different),
        ("portsentinel config check will warn", list(warnings)),
        ("PortSentry is running now", running),
    )
    for title, items in sections:
        if items:
            say(f"\n{title}:\n")
            for item in items:
                say(f"  - {item}\n")
    say("\nNext steps (migrate stops and disables nothing itself):\n")
    for number, step in enumerate(outcome.steps, start=1):
        say(f"  {number}. {step}\n")
