"""PortSentry 2.0's command line: ``portsentinel --stealth -c /etc/portsentry/portsentry.conf``
runs the daemon, so that 2.0's unit files, scripts and habits keep working.

2.0 spells its options ``--stealth`` (the default) or ``--connect``, ``-m/--method``,
``-i/--interface`` (repeatable), ``-L``, ``-S``, ``-l/--logoutput``, ``-c/--configfile``,
``-D/--daemon``, ``-d``, ``-v``, ``-h``, ``-V``; PortSentinel's ``--state-dir``, ``--events``
and ``--dry-run`` are accepted beside them. Stealth is PortSentinel's stcp and sudp (one
capture watching TCP_PORTS and UDP_PORTS, ranges included, with the per-packet check for
ports in use), connect is tcp and udp (the ports bound); a protocol whose ports the config file
does not list is not watched, as in 2.0. Where a flag asks for something PortSentinel does
otherwise, the daemon says so in its first lines.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from portsentinel import __version__, paths
from portsentinel.alert.sinks import LogSink
from portsentinel.cli.options import PROG, add_state_dir_option
from portsentinel.cli.run import run_daemon
from portsentinel.config.setup import Invocation, load_setup
from portsentinel.config.types import InvalidValueError
from portsentinel.config.types import interfaces as interface_list
from portsentinel.errors import ConfigError

# 2.0's two modes as PortSentinel's mode pairs.
MODES = {"stealth": "stcp,sudp", "connect": "tcp,udp"}
# -i keywords: every interface (loopback included), and every one but loopback (the default).
ALL_INTERFACES = frozenset({"ALL", "any"})
ALL_BUT_LOOPBACK = "ALL_NLO"


def is_portsentry2(argv: Sequence[str], prog: str = PROG) -> bool:
    """Whether ``argv`` is 2.0's invocation: it starts with an option that is neither one of
    PortSentinel's own (``--version``, ``-h``) nor 1.2's ``-atcp`` style (``main`` handles
    those), or it is empty and the program was called ``portsentry`` (a link put in 2.0's
    place: its unit runs it without arguments). ``portsentinel -h`` stays PortSentinel's
    help, which names this invocation."""
    if not argv:
        return os.path.basename(prog) == "portsentry"
    return argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")


def config_file(given: str | None) -> str | None:
    """``-c``, else PortSentinel's installed configuration, else 2.0's own
    (``/etc/portsentry/portsentry.conf``, which 2.0 reads without ``-c``), else None: the
    embedded defaults."""
    if given is not None:
        return given
    for path in (paths.CONFIG_FILE, os.path.join(paths.PORTSENTRY_DIR, "portsentry.conf")):
        if os.path.lexists(path):
            return path
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [--stealth | --connect] [options]",
        description="PortSentry 2.0's command line: runs the daemon in the foreground, as "
        "'portsentinel run' does, with 2.0's options. --stealth watches TCP_PORTS and UDP_PORTS "
        "(ranges allowed) by packet capture, skipping ports a service uses; --connect binds "
        "them. A protocol whose ports the config file does not list is not watched.",
        epilog="Unless the configuration sets LOG_FORMAT, a daemon started this way logs "
        "PortSentry 2.0's lines.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--stealth", dest="sentry_mode", action="store_const", const="stealth",
        help="stealth mode (the default): packet capture, PortSentinel's stcp and sudp",
    )  # fmt: skip
    mode.add_argument(
        "--connect", dest="sentry_mode", action="store_const", const="connect",
        help="connect mode: the ports are bound, PortSentinel's tcp and udp",
    )  # fmt: skip
    parser.add_argument(
        "-i", "--interface", dest="interfaces", action="append", metavar="IF",
        help="ALL (loopback too; 'any' alike), ALL_NLO (all but loopback, the default) or an "
        "interface name (repeatable); interfaces are followed as they come and go",
    )  # fmt: skip
    parser.add_argument(
        "-m", "--method", choices=("pcap", "raw"), default="pcap",
        help="accepted: PortSentinel captures with one AF_PACKET ring whichever is named",
    )  # fmt: skip
    parser.add_argument(
        "-L", "--disable-local-check", dest="no_local_check", action="store_true",
        help="accepted: PortSentinel never acts against this host's own addresses (a forged "
        "probe could make it), so the local check stays on",
    )  # fmt: skip
    parser.add_argument(
        "-S", "--disable-service-check", dest="no_service_check", action="store_true",
        help="watch ports a service uses too (by default a probe to such a port is not one)",
    )  # fmt: skip
    parser.add_argument(
        "-l", "--logoutput", action="append", choices=("stdout", "syslog"),
        help="where the log lines go (default stdout; errors go to standard error); "
        "repeatable for both",
    )  # fmt: skip
    parser.add_argument(
        "-c", "--configfile", dest="config", metavar="FILE",
        help=f"configuration file (default {paths.CONFIG_FILE} if present, else "
        f"{paths.PORTSENTRY_DIR}/portsentry.conf, as 2.0 reads it)",
    )  # fmt: skip
    parser.add_argument(
        "-D", "--daemon", action="store_true",
        help="go to the background, logging to syslog; under systemd the unit runs the daemon "
        "in the foreground and this only chooses syslog",
    )  # fmt: skip
    parser.add_argument(
        "-d", "--debug", action="store_true",
        help="log the command line's configuration at the start",
    )  # fmt: skip
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="accepted: PortSentinel's log has one level ('portsentinel status' shows more)",
    )  # fmt: skip
    parser.add_argument("-V", "--version", action="version", version=f"{PROG} {__version__}")
    add_state_dir_option(parser)
    parser.add_argument(
        "--events", metavar="PATH", help="also write one JSON event per decision to PATH"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="decide, log and record, but ban nothing"
    )
    return parser


def invocation_of(args: argparse.Namespace) -> Invocation:
    """The flags' say over the settings. ConfigError when ``-i`` mixes ALL, ALL_NLO and
    interface names, which 2.0 refuses too."""
    given: list[str] = args.interfaces or []
    kinds = {
        "ALL" if n in ALL_INTERFACES else n if n == ALL_BUT_LOOPBACK else "names" for n in given
    }
    if len(kinds) > 1:
        raise ConfigError(
            f"{', '.join(given)}: only one kind of interface can be given",
            key="--interface",
            expected="ALL, ALL_NLO, or interface names",
        )
    interfaces: tuple[str, ...] | None = None
    if kinds == {"names"}:
        try:
            interfaces = interface_list.parse(",".join(given))
        except InvalidValueError as exc:
            raise ConfigError(str(exc), key="--interface", expected="interface names") from None
    elif kinds:
        interfaces = ()
    return Invocation(
        portsentry2=True,
        interfaces=interfaces,
        loopback=kinds == {"ALL"},
        service_check=not args.no_service_check,
    )


def notes(args: argparse.Namespace, invocation: Invocation, systemd: bool) -> list[str]:
    """The first lines of the log: what 2.0's flags do here where PortSentinel differs."""
    lines = [
        f"adminalert: PortSentry 2.0 command line: {args.sentry_mode or 'stealth'} mode "
        f"({MODES[args.sentry_mode or 'stealth']}); -m {args.method}: one AF_PACKET ring "
        "captures whichever method is named"
    ]
    if args.no_local_check:
        lines.append(
            "adminalert: -L: the local check stays on: PortSentinel never acts against this "
            "host's own addresses"
        )
    if not invocation.service_check:
        lines.append("adminalert: -S: ports a service uses are watched too")
    if args.daemon and systemd:
        lines.append(
            "adminalert: -D: running under systemd, which keeps the daemon in the foreground; "
            "the unit does not need -D (it only sends the log to syslog)"
        )
    if args.verbose:
        lines.append("adminalert: -v: PortSentinel's log has one level")
    if args.debug:
        lines.append(
            f"debug: command line: mode {args.sentry_mode or 'stealth'}, interfaces "
            f"{','.join(args.interfaces or [ALL_BUT_LOOPBACK])}, log output "
            f"{','.join(log_outputs(args))}, config {args.config or paths.CONFIG_FILE}, "
            f"service check {'on' if invocation.service_check else 'off'}"
        )
    return lines


def log_outputs(args: argparse.Namespace) -> list[str]:
    """``-l`` as given (stdout by default); ``-D`` adds syslog, as 2.0 does."""
    outputs: list[str] = list(dict.fromkeys(args.logoutput or ["stdout"]))
    if args.daemon and "syslog" not in outputs:
        outputs.append("syslog")
    return outputs


def under_systemd(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """systemd sets INVOCATION_ID for every unit it runs."""
    return bool(environ.get("INVOCATION_ID"))


def daemonize() -> None:
    """The classic double fork: the parent exits 0, the daemon has no terminal and no stdio."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def cmd_portsentry2(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    invocation = invocation_of(args)
    args.mode = MODES[args.sentry_mode or "stealth"]
    args.config = config_file(args.config)  # a reload reads the same file
    setup = load_setup(args.config, args.mode, invocation)
    outputs = log_outputs(args)
    syslog = "syslog" in outputs or setup.settings.syslog
    log = LogSink(
        sys.stdout,
        syslog_ident=setup.settings.syslog_ident if syslog else None,
        echo="stdout" in outputs,
    )
    systemd = under_systemd()
    if args.daemon and not systemd:
        daemonize()
    return run_daemon(args, setup, log, err, notes(args, invocation, systemd))


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """2.0's command line parsed; its handler is ``cmd_portsentry2``."""
    args = build_parser().parse_args(argv)
    args.handler = cmd_portsentry2
    return args
