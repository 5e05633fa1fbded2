"""The ``portsentinel`` command: parses arguments and joins the rooms for each verb.

Exit status (DESIGN.md): 0 success, 1 runtime failure, 2 usage or configuration error.
Errors are printed as one clear line each, never as a traceback.

``run`` is a long-lived daemon, so what only other verbs use (the ban verbs' ``operate``,
the replay) is imported by those verbs' handlers, not here: every module imported at the
top stays resident in the daemon. The parser still names every verb, so the modules that
declare verbs (evidence, report, install, migrate) keep their own heavy imports lazy.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from portsentinel import __version__
from portsentinel.alert.events import event_line, iso_time
from portsentinel.alert.portsentry_log import detection_lines
from portsentinel.cli import history as evidence
from portsentinel.cli import report as report_cli
from portsentinel.config import commands as config_commands
from portsentinel.config.setup import choose_config_file, detector_config, load_setup
from portsentinel.daemon.client import DaemonNotRunning, request, socket_path
from portsentinel.daemon.service import Daemon, RunOptions, default_log
from portsentinel.detect.detector import Detector
from portsentinel.errors import CaptureError, ConfigError, ConfigErrors, PortSentinelError
from portsentinel.model import Decision
from portsentinel.store.lock import AlreadyRunningError, running_pid
from portsentinel.system import install, migrate

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

PROG = "portsentinel"
DEFAULT_STATE_DIR = "/var/lib/portsentinel"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="PortSentinel: port-scan detection and active response (a modern PortSentry).",
        epilog="Exit status: 0 success, 1 runtime failure, 2 usage or configuration error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    replay = verbs.add_parser(
        "replay",
        help="run a pcap/pcapng capture through the detector and print its decisions",
        description=(
            "Run a capture through the whole detection core as if live and print one JSON "
            "event per probe that reached a decision (or PortSentry-style lines with --log). "
            "Never touches a firewall. A port counts as in use when the capture shows the "
            "watched host answering on it anywhere in the file (SYN-ACK, or UDP sent from it): "
            "an approximation of the live socket table."
        ),
    )
    replay.add_argument("capture", metavar="CAPTURE", help="pcap or pcapng file")
    _add_config_option(replay)
    _add_mode_option(replay)
    replay.add_argument(
        "--local",
        action="append",
        default=[],
        metavar="ADDR",
        help="an address of the watched host (repeatable; default: every destination of probes)",
    )
    replay.add_argument(
        "--in-use",
        action="append",
        default=[],
        metavar="PROTO:PORTS",
        help="ports in use besides those seen answering, e.g. tcp:22,80 (repeatable)",
    )
    replay.add_argument(
        "--log", action="store_true", help="print PortSentry-style log lines instead of JSON"
    )
    evidence.add_replay_state_option(replay)
    replay.set_defaults(handler=_cmd_replay)

    run = verbs.add_parser(
        "run",
        help="watch this host: the daemon, in the foreground",
        description=(
            "Run the daemon in the foreground (systemd style): one TCP mode and one UDP mode, "
            "IPv4 and IPv6. PortSentry-style lines go to standard error (and syslog with "
            "SYSLOG=1); SIGTERM or SIGINT stops it. PortSentry's own invocation works too: "
            "portsentinel -atcp -audp."
        ),
    )
    _add_config_option(run)
    _add_mode_option(run)
    _add_state_dir_option(run)
    run.add_argument(
        "--events",
        metavar="PATH",
        help="also write one JSON event per decision to PATH ('-' for standard output)",
    )
    run.add_argument(
        "--dry-run", action="store_true", help="decide and log, but never touch a firewall"
    )
    run.set_defaults(handler=_cmd_run)

    listing = verbs.add_parser(
        "list", help="the bans in force: address, since, until, reason, ports seen"
    )
    _add_state_dir_option(listing)
    listing.add_argument("--json", action="store_true", help="JSON Lines, one ban per line")
    listing.set_defaults(handler=_cmd_list)
    evidence.add_parsers(verbs)
    report_cli.add_parser(verbs)
    install.add_parsers(verbs)
    migrate.add_parsers(verbs)

    block = verbs.add_parser(
        "block",
        help="ban an address now (refused for this host's own, gateways, resolvers ...)",
    )
    block.add_argument("address", metavar="ADDR")
    block.add_argument(
        "--for",
        dest="duration",
        metavar="DURATION",
        help="30s, 15m, 1h, 7d or permanent (default BAN_DURATION)",
    )
    _add_config_option(block)
    _add_state_dir_option(block)
    block.set_defaults(handler=_cmd_block)

    unblock = verbs.add_parser(
        "unblock",
        help="lift a ban: firewall, route, hosts.deny line and blocked-file line",
        description="Lift bans, whether or not the daemon runs (it follows within a second).",
    )
    unblock.add_argument("address", metavar="ADDR", nargs="*")
    unblock.add_argument("--all", action="store_true", help="lift every ban in force")
    _add_config_option(unblock)
    _add_state_dir_option(unblock)
    unblock.set_defaults(handler=_cmd_unblock)

    allow = verbs.add_parser(
        "allow", help="lift any ban of ADDR (or CIDR) and never block it again"
    )
    allow.add_argument("address", metavar="ADDR")
    allow.add_argument("--comment", default="", help="why (kept in the store)")
    _add_config_option(allow)
    _add_state_dir_option(allow)
    allow.set_defaults(handler=_cmd_allow)

    status = verbs.add_parser(
        "status",
        help="is the daemon running? modes, ports watched, counters, active bans",
        description="Exit 0 when the daemon runs, 1 when it does not (the store is still shown).",
    )
    _add_state_dir_option(status)
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(handler=_cmd_status)

    reload = verbs.add_parser(
        "reload",
        help="make the running daemon re-read its configuration and ignore files (SIGHUP)",
        description="A broken new configuration is refused; the old one stays in force.",
    )
    _add_config_option(reload)  # accepted for symmetry; the daemon re-reads its own
    _add_state_dir_option(reload)
    reload.set_defaults(handler=_cmd_reload)

    config = verbs.add_parser("config", help="check a configuration or print the defaults")
    config_verbs = config.add_subparsers(dest="config_verb", metavar="ACTION", required=True)
    check = config_verbs.add_parser(
        "check",
        help="validate a configuration and print the effective settings",
        description=(
            "Validate a configuration (and the ignore and defaults files it names). Exit 0 "
            "when it loads, with any warnings on stderr; 2 with the errors."
        ),
    )
    _add_config_option(check)
    check.set_defaults(handler=_cmd_config_check)
    defaults = config_verbs.add_parser(
        "defaults", help="print every setting with its default as a commented config file"
    )
    defaults.set_defaults(handler=_cmd_config_defaults)
    return parser


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="configuration file (default /etc/portsentinel/portsentinel.conf if present, "
        "else the embedded defaults)",
    )


def _add_mode_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode",
        help="e.g. atcp,audp (default: TCP_MODE/UDP_MODE of the defaults file, else atcp,audp)",
    )


def _add_state_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        default=DEFAULT_STATE_DIR,
        help=f"state directory: lock, store, control socket (default {DEFAULT_STATE_DIR})",
    )


def _cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    setup = load_setup(args.config, args.mode)
    log = default_log(setup)
    for warning in setup.warnings:
        log.line(f"adminalert: WARNING: {warning}")
    if setup.tcp_mode is None and setup.udp_mode is None:
        raise ConfigError("no mode to run", key="--mode", expected="e.g. atcp,audp")
    options = RunOptions(
        state_dir=args.state_dir,
        events=args.events,
        dry_run=args.dry_run,
        config=args.config,
        modes=args.mode,
        control_path=socket_path(args.state_dir, DEFAULT_STATE_DIR),
    )
    try:
        return Daemon(setup, options, log).run()
    except AlreadyRunningError as exc:
        err.write(f"{PROG}: {exc}\n")
        return EXIT_FAILURE
    except CaptureError as exc:
        log.line(f"adminalert: ERROR: {exc}")
        log.flush()
        return EXIT_FAILURE


def _cmd_reload(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        request(socket_path(args.state_dir, DEFAULT_STATE_DIR), "reload")
        out.write("asked the daemon to reload its configuration (see its log for the outcome)\n")
        return EXIT_OK
    except DaemonNotRunning:
        pass  # no control socket (or none answering): fall back to the signal
    pid = running_pid(args.state_dir)
    if pid is None:
        err.write(f"{PROG}: no daemon is running on {args.state_dir}\n")
        return EXIT_FAILURE
    os.kill(pid, signal.SIGHUP)
    out.write(f"asked the daemon (pid {pid}) to reload its configuration (SIGHUP)\n")
    return EXIT_OK


def _cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from portsentinel.cli import bans as operate  # noqa: PLC0415 - not on the daemon's path

    try:
        status = request(socket_path(args.state_dir, DEFAULT_STATE_DIR), "status")
    except DaemonNotRunning:
        status = None
    report = operate.status_report(args.state_dir, status)
    if args.json:
        out.write(json.dumps(report, separators=(",", ":")) + "\n")
    else:
        out.write(operate.status_text(report))
    return EXIT_OK if status is not None else EXIT_FAILURE


def _cmd_list(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from portsentinel.cli import bans as operate  # noqa: PLC0415 - not on the daemon's path

    return operate.list_bans(args.state_dir, args.json, out)


def _cmd_block(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from portsentinel.cli import bans as operate  # noqa: PLC0415 - not on the daemon's path

    setup = load_setup(args.config, "atcp,audp")
    duration = (
        setup.settings.ban_duration
        if args.duration is None
        else operate.parse_duration(args.duration)
    )
    return operate.block(setup, args.state_dir, args.address, duration=duration, out=out, err=err)


def _cmd_unblock(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from portsentinel.cli import bans as operate  # noqa: PLC0415 - not on the daemon's path

    if bool(args.address) == args.all:
        raise ConfigError("give addresses or --all", key="unblock", expected="ADDR... or --all")
    setup = load_setup(args.config, "atcp,audp")
    return operate.unblock(setup, args.state_dir, args.address, every=args.all, out=out, err=err)


def _cmd_allow(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from portsentinel.cli import bans as operate  # noqa: PLC0415 - not on the daemon's path

    setup = load_setup(args.config, "atcp,audp")
    return operate.allow(
        setup, args.state_dir, args.address, comment=args.comment, out=out, err=err
    )


# PortSentry's own invocation: ``portsentry -atcp`` (1.2 took one mode per process).
PORTSENTRY_FLAGS = frozenset({"-tcp", "-udp", "-stcp", "-sudp", "-atcp", "-audp"})


def translate_portsentry_flags(argv: Sequence[str]) -> list[str]:
    """``-atcp -audp [options]`` -> ``run --mode atcp,audp [options]``; other argv unchanged."""
    flags = []
    rest = list(argv)
    while rest and rest[0] in PORTSENTRY_FLAGS:
        flags.append(rest.pop(0)[1:])
    if not flags:
        return list(argv)
    return ["run", "--mode", ",".join(flags), *rest]


def _cmd_config_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    return config_commands.check(choose_config_file(args.config), out, err)


def _cmd_config_defaults(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    out.write(config_commands.render_defaults())
    return EXIT_OK


def _cmd_replay(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from portsentinel.cli.replay import (  # noqa: PLC0415 - not on the daemon's path
        parse_in_use,
        parse_local,
        run_replay,
        summary,
        survey_in_use,
    )

    setup = load_setup(args.config, args.mode)
    for warning in setup.warnings:
        err.write(f"{PROG}: warning: {warning}\n")
    local = parse_local(args.local) if args.local else None
    extra_tcp, extra_udp = parse_in_use(args.in_use)
    seen = survey_in_use(args.capture, local)
    detector = Detector(
        detector_config(setup),
        ignore=setup.ignore,
        local=local,
        in_use_tcp=seen.tcp | extra_tcp,
        in_use_udp=seen.udp | extra_udp,
    )
    emit = _log_writer(out) if args.log else _event_writer(out)
    if args.state_dir is None:
        stats = run_replay(args.capture, detector, emit)
        recorded = None
    else:
        recorded = evidence.record_replay(
            args.capture, detector, emit, state_dir=args.state_dir, settings=setup.settings
        )
        stats = recorded.stats
    out.flush()
    err.write(f"{PROG}: {summary(args.capture, stats)}\n")
    if recorded is not None:
        err.write(f"{PROG}: {recorded.summary()}\n")
    return EXIT_OK


def _event_writer(out: TextIO) -> Callable[[Decision], None]:
    def emit(decision: Decision) -> None:
        out.write(event_line(decision, decision.time) + "\n")

    return emit


def _log_writer(out: TextIO) -> Callable[[Decision], None]:
    def emit(decision: Decision) -> None:
        stamp = iso_time(decision.time)
        for line in detection_lines(decision):
            out.write(f"{stamp} {line}\n")

    return emit


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(
        translate_portsentry_flags(sys.argv[1:] if argv is None else argv)
    )
    handler: Callable[[argparse.Namespace, TextIO, TextIO], int] = args.handler
    try:
        return handler(args, sys.stdout, sys.stderr)
    except (ConfigError, ConfigErrors) as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_USAGE
    except CaptureError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return EXIT_FAILURE
    except BrokenPipeError:
        return EXIT_OK
    except PortSentinelError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
