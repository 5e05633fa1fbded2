"""``portsentinel migrate`` from PortSentry 2.0: its configuration, ignore file, binary blocked
file and command line (the flags of its systemd unit, or those the admin gives).

2.0's configuration is read by PortSentinel as it is (2.0's strict grammar is a subset of
ours), so its lines are copied unchanged but for KILL_ROUTE (nftables replaces it) and
BLOCKED_FILE (2.0's binary cache: its addresses become bans in PortSentinel's store, each for
BAN_DURATION from now, applied by the daemon at its start as a restart re-applies bans). The
ignore file and HISTORY_FILE stay where they are: with ``LOG_FORMAT="2.0"`` the daemon reads
the one with 2.0's rules and writes 2.0's ``Scan from:`` lines to the other. The flags become
settings and a modes file (``--stealth``: stcp/sudp, ``--connect``: tcp/udp, for the
protocols whose ports are listed). Like the 1.2 path it stops nothing and is idempotent.
"""

from __future__ import annotations

import getopt
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from portsentinel import paths
from portsentinel.config.commands import quote
from portsentinel.config.ignore import MAX_IGNORE_BYTES, parse_ignore
from portsentinel.config.legacy import NOTE
from portsentinel.config.load import MAX_CONFIG_BYTES, parse_config
from portsentinel.config.schema import Settings, spec_for
from portsentinel.errors import ConfigError, ConfigErrors
from portsentinel.files import MIB, read_regular
from portsentinel.store.portsentry_files import read_blocked_2_0
from portsentinel.store.sqlite import Store

UNIT_NAME = "portsentry.service"
UNIT_DIRS = (
    paths.UNIT_DIR, "/usr/local/lib/systemd/system", "/usr/lib/systemd/system",
    "/lib/systemd/system",
)  # fmt: skip
_MAX_UNIT_BYTES = 1 * MIB
_MAX_BLOCKED_BYTES = 64 * MIB
# PortSentry 2.0's getopt_long spellings (src/cmdline.c): the same letters and long names.
_SHORT = "l:c:i:m:DLSdvhV"
_LONG = [
    "connect", "stealth", "interface=", "logoutput=", "configfile=", "daemon", "method=",
    "disable-local-check", "disable-service-check", "debug", "verbose", "help", "version",
]  # fmt: skip
REASON = "PortSentry 2.0's blocked file (migrated)"
MODES_NAME = "modes"


@dataclass(frozen=True, slots=True)
class Flags:
    """What PortSentinel makes of 2.0's command line."""

    mode: str = "stealth"
    config: str = ""
    interfaces: tuple[str, ...] = ()
    logoutput: tuple[str, ...] = ()
    no_local_check: bool = False
    no_service_check: bool = False
    method: str = "pcap"


def read_flags(words: list[str]) -> Flags:
    """2.0's flags as its getopt_long reads them; ConfigError for what 2.0 refuses."""
    try:
        options, rest = getopt.gnu_getopt(words, _SHORT, _LONG)
    except getopt.GetoptError as exc:
        raise ConfigError(str(exc), key="--flags", expected="PortSentry 2.0's options") from None
    if rest:
        raise ConfigError(f"unexpected {' '.join(rest)!r}", key="--flags", expected="options")
    found: dict[str, object] = {}
    interfaces: list[str] = []
    outputs: list[str] = []
    for name, value in options:
        if name in ("--stealth", "--connect"):
            found["mode"] = name[2:]
        elif name in ("-i", "--interface"):
            interfaces.append(value)
        elif name in ("-l", "--logoutput"):
            outputs.append(value)
        elif name in ("-D", "--daemon"):
            outputs.append("syslog")
        elif name in ("-c", "--configfile"):
            found["config"] = value
        elif name in ("-m", "--method"):
            found["method"] = value
        elif name in ("-L", "--disable-local-check"):
            found["no_local_check"] = True
        elif name in ("-S", "--disable-service-check"):
            found["no_service_check"] = True
    return Flags(interfaces=tuple(interfaces), logoutput=tuple(outputs), **found)  # type: ignore[arg-type]


def unit_command(root: Path) -> tuple[str, list[str]] | None:
    """The installed portsentry.service and the arguments of its ExecStart (the last one
    wins, as in systemd); None when there is no unit, or it does not run PortSentry 2.0 (1.2
    had no unit and took -atcp style flags)."""
    for folder in UNIT_DIRS:
        target = os.path.join(folder, UNIT_NAME)
        try:
            data = read_regular(str(root / target.lstrip("/")), _MAX_UNIT_BYTES, "a unit file")
        except OSError:
            continue
        command = None
        for line in data.decode("utf-8", "replace").splitlines():
            key, _, value = line.strip().partition("=")
            if key.strip() == "ExecStart" and value.strip():
                command = value.strip().lstrip("-@:+!")
        if command is None:
            continue
        words = shlex.split(command)
        if not words or os.path.basename(words[0]) != "portsentry":
            return None
        if any(w in ("-tcp", "-udp", "-stcp", "-sudp", "-atcp", "-audp") for w in words[1:]):
            return None
        return target, words[1:]
    return None


@dataclass(slots=True)
class Plan:
    """The files to write, the bans to record, and the report."""

    files: dict[str, str] = field(default_factory=dict)
    bans: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    carried: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def plan(root: Path, conf_target: str, flags: Flags, output: str, source: str) -> Plan:
    """Read 2.0's files below ``root``; writes nothing. ``source`` says where the flags came
    from. Raises FileNotFoundError without the config, ConfigErrors for a file PortSentinel
    cannot read, OSError for one that is there but unreadable."""
    data = read_regular(str(root / conf_target.lstrip("/")), MAX_CONFIG_BYTES, "a configuration")
    text = data.decode("utf-8", "surrogateescape")
    found = parse_config(text, conf_target)
    if found.config is None:
        raise ConfigErrors(list(found.errors))
    settings, where = found.config.settings, found.config.origins
    result = Plan()
    result.warnings += found.warnings
    lines = [*_header(conf_target, source)]
    for line in text.removesuffix("\n").split("\n"):
        key = line.split("=", 1)[0].strip()
        if key == "KILL_ROUTE":
            lines += [f"{NOTE} nftables applies the bans (BLOCK_BACKEND below); was:", f"#{line}"]
            result.changed.append("KILL_ROUTE: kept as a comment (nftables replaces it)")
        elif key == "BLOCKED_FILE":
            lines += [f"{NOTE} 2.0's binary cache, read once into bans; was:", f"#{line}"]
        else:
            lines.append(line)
            if key and not key.startswith("#") and "=" in line:
                result.carried.append(key)
    if settings.blocked_file:
        _plan_bans(root, settings.blocked_file, result)
    if settings.ignore_file:
        _check_ignore(root, settings.ignore_file, result)
    tcp = "stcp" if flags.mode == "stealth" else "tcp"
    udp = "sudp" if flags.mode == "stealth" else "udp"
    modes = (
        tcp if where["TCP_PORTS"] != "default" else "",
        udp if where["UDP_PORTS"] != "default" else "",
    )
    lines += ["", *_added(flags, output, modes, result)]
    result.files[output] = "\n".join(lines) + "\n"
    result.summary.insert(0, f"Configuration: {output}  (from {conf_target}, PortSentry 2.0)")
    _differences(settings.history_file, flags, result)
    return result


def _header(source: str, flags: str) -> list[str]:
    return [
        "# PortSentinel configuration, migrated from PortSentry 2.0 by `portsentinel migrate`",
        f"# from {source} and the command line of {flags}.",
        "# PortSentry's lines follow unchanged, except those marked 'migrate:'. Settings",
        "# PortSentinel adds are at the end; `portsentinel config defaults` explains them all.",
        "",
    ]


def _plan_bans(root: Path, blocked: str, result: Plan) -> None:
    try:
        data = read_regular(str(root / blocked.lstrip("/")), _MAX_BLOCKED_BYTES, "a blocked file")
    except FileNotFoundError:
        result.summary.append(f"Bans: none ({blocked} does not exist)")
        return
    addresses, tail = read_blocked_2_0(data)
    result.bans = addresses
    length = spec_for("BAN_DURATION").default
    result.summary.append(
        f"Bans: {len(addresses)} addresses of {blocked}, each banned for {length} from now "
        "(BAN_DURATION); the daemon applies them at its start"
    )
    result.changed.append(f"BLOCKED_FILE: {blocked} read into bans; kept as a comment")
    if tail:
        result.warnings.append(f"{blocked}: {tail} bytes at its end are not a whole record")


def _check_ignore(root: Path, ignore: str, result: Plan) -> None:
    try:
        data = read_regular(str(root / ignore.lstrip("/")), MAX_IGNORE_BYTES, "an ignore file")
    except FileNotFoundError:
        result.warnings.append(f"{ignore}: IGNORE_FILE does not exist; nothing is ignored")
        return
    networks, notes = parse_ignore(data.decode("utf-8", "replace"), ignore, portsentry2=True)
    result.summary.append(f"Ignore file: {ignore} stays  ({len(networks)} entries)")
    result.warnings += notes


def _added(flags: Flags, output: str, modes: tuple[str, str], result: Plan) -> list[str]:
    modes_target = os.path.join(os.path.dirname(output) or "/", MODES_NAME)
    result.files[modes_target] = (
        "# The modes PortSentinel runs without --mode, from PortSentry 2.0's "
        f"--{flags.mode}\n# (a protocol whose ports portsentry.conf does not list: none).\n"
        f'TCP_MODE="{modes[0]}"\nUDP_MODE="{modes[1]}"\n'
    )
    shown = ",".join(m for m in modes if m) or "none"
    result.summary.append(f"Modes: {modes_target}  ({shown}, from --{flags.mode})")
    lines = ["#" * 94, "# Added by `portsentinel migrate` (PortSentry 2.0)", "#" * 94]
    lines += ["# PortSentry 2.0's words: the Scan from: line, here and in HISTORY_FILE"]
    lines += ['LOG_FORMAT="2.0"', f"DEFAULTS_FILE={quote(modes_target)}"]
    names = [n for n in flags.interfaces if n not in ("ALL", "ALL_NLO", "any")]
    if names:
        lines += [f"INTERFACES={quote(','.join(names))}"]
        result.changed.append(f"-i {' -i '.join(names)} -> INTERFACES")
    if "syslog" in flags.logoutput:
        lines += ['SYSLOG="1"']
        result.changed.append("-l syslog (or -D) -> SYSLOG=1")
    lines += [
        "# How bans are applied: nftables (table inet portsentinel) replaces KILL_ROUTE.",
        'BLOCK_BACKEND="nftables"',
        "# Bans expire (repeat offenders get longer ones); PortSentry 2.0's never did.",
        f'BAN_DURATION="{spec_for("BAN_DURATION").default}"',
    ]
    return lines


def _differences(history: str, flags: Flags, result: Plan) -> None:
    say = result.different.append
    if history:
        say(
            f"HISTORY_FILE stays {history}: 2.0's Scan from: lines (LOG_FORMAT 2.0), so 2.0's "
            "fail2ban filter keeps working; it is appended to and rotated, not truncated at "
            "each start as 2.0 did"
        )
    say("Bans expire (BAN_DURATION) and SIGHUP reloads the configuration (2.0 died of it)")
    say("This host's addresses, gateways, resolvers and SSH peers are never blocked")
    if flags.no_local_check:
        say("-L has no equivalent: the host's own addresses are never acted against")
    if flags.no_service_check:
        say(
            "-S has no setting: `portsentinel run` never watches a port a service uses; "
            "run `portsentinel --stealth -S` in the unit to keep it"
        )
    if "ALL" in flags.interfaces or "any" in flags.interfaces:
        say("-i ALL has no setting (loopback is not watched by `portsentinel run`)")
    if flags.method != "pcap":
        say(f"-m {flags.method}: PortSentinel captures with one AF_PACKET ring either way")


def record_bans(state_dir: Path, addresses: list[str], backend: str, now: float) -> int:
    """The blocked file's addresses as pending bans the daemon applies at its start (as a
    restart re-applies bans); an address with a live ban already is left alone. The count
    of bans added."""
    seconds = Settings().ban_duration  # the migrated configuration's BAN_DURATION
    added = 0
    state_dir.mkdir(parents=True, exist_ok=True)
    with Store.open(str(state_dir)) as store:
        for address in addresses:
            if store.ban_for(address) is not None:
                continue
            store.begin_ban(
                address, None, created=now,
                expires=None if seconds is None else now + seconds,
                reason=REASON, rule=None, evidence={"plan": [backend]}, offence=1,
            )  # fmt: skip
            added += 1
    return added


def retire_steps(output: str, unit: str | None) -> list[str]:
    return [
        "Stop PortSentry 2.0: systemctl stop portsentry",
        "Keep it from starting at boot: systemctl disable portsentry"
        + (f"   (its unit: {unit})" if unit else ""),
        "Check that it is gone: pgrep -a portsentry   (prints nothing)",
        f"Check the new configuration: portsentinel config check --config {output}",
        "Install and start the service: portsentinel install; systemctl daemon-reload; "
        "systemctl enable --now portsentinel",
        "Rules PortSentry's KILL_ROUTE added stay in the firewall: remove them by hand",
    ]
