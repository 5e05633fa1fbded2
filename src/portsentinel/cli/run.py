"""The daemon's verbs: ``run`` (the daemon itself, in the foreground), ``reload`` and
``status``.

This module is on the daemon's own path, so it imports only what the daemon loads anyway.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from collections.abc import Sequence
from typing import TextIO

from portsentinel import paths
from portsentinel.alert.events import iso_time
from portsentinel.alert.sinks import LogSink
from portsentinel.cli.options import (
    PROG,
    Verbs,
    add_config_option,
    add_mode_option,
    add_state_dir_option,
)
from portsentinel.config.setup import Setup, load_setup
from portsentinel.daemon.client import ControlFailure, DaemonNotRunning, request, socket_path
from portsentinel.daemon.service import Daemon, RunOptions, default_log
from portsentinel.errors import CaptureError, ConfigError, PortSentinelError
from portsentinel.respond.restart import COMMAND_SETTINGS
from portsentinel.store.lock import AlreadyRunningError, running_pid
from portsentinel.store.sqlite import Store


def add_parsers(verbs: Verbs) -> None:
    """Register ``run``, ``reload`` and ``status``."""
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
    add_config_option(run)
    add_mode_option(run)
    add_state_dir_option(run)
    run.add_argument(
        "--events",
        metavar="PATH",
        help="also write one JSON event per decision to PATH ('-' for standard output)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="decide, log and record (would-be bans too) in an offline store, but never touch "
        f"a firewall or a file outside it (state directory {paths.STATE_DIR}/dry-run unless "
        "--state-dir says)",
    )
    run.set_defaults(handler=cmd_run)

    reload = verbs.add_parser(
        "reload",
        help="make the running daemon re-read its configuration and ignore files (SIGHUP)",
        description="The daemon re-reads the configuration it was started with (and its ignore "
        "and defaults files). A broken new configuration is refused with its errors (exit 2) "
        "and the old one stays in force; exit 1 when no daemon runs on the state directory.",
    )
    add_state_dir_option(reload)
    reload.set_defaults(handler=cmd_reload)

    status = verbs.add_parser(
        "status",
        help="is the daemon running? modes, ports watched, counters, active bans",
        description="Exit 0 when the daemon runs, 1 when it does not (the store is still shown).",
    )
    add_state_dir_option(status)
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(handler=cmd_status)


def _control_path(state_dir: str) -> str:
    return socket_path(state_dir, paths.STATE_DIR)


def dry_run_dir() -> str:
    """Where ``run --dry-run`` keeps its offline store unless ``--state-dir`` says: beside the
    live store, never in it (a live store holds what was applied; a dry run's holds what
    would have been)."""
    return os.path.join(paths.STATE_DIR, "dry-run")


def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    setup = load_setup(args.config, args.mode)
    return run_daemon(args, setup, default_log(setup), err)


def run_daemon(
    args: argparse.Namespace, setup: Setup, log: LogSink, err: TextIO, notes: Sequence[str] = ()
) -> int:
    """The daemon in the foreground, on a loaded setup and its log: ``run``'s work, shared by
    PortSentry 2.0's command line (``notes``: what its flags mean here, logged first)."""
    for note in notes:
        log.line(note)
    for warning in setup.warnings:
        log.line(f"adminalert: WARNING: {warning}")
    if setup.tcp_mode is None and setup.udp_mode is None:
        raise ConfigError("no mode to run", key="--mode", expected="e.g. atcp,audp")
    state_dir = args.state_dir
    if args.dry_run and state_dir == paths.STATE_DIR:  # never the live store's directory
        state_dir = dry_run_dir()
    options = RunOptions(
        state_dir=state_dir,
        events=args.events,
        dry_run=args.dry_run,
        config=args.config,
        modes=args.mode,
        control_path=_control_path(state_dir),
        invocation=setup.invocation,
    )
    try:
        return Daemon(setup, options, log).run()
    except AlreadyRunningError as exc:
        err.write(f"{PROG}: {exc}\n")
        return paths.EXIT_FAILURE
    except CaptureError as exc:
        log.line(f"adminalert: ERROR: {exc}")
        log.flush()
        return paths.EXIT_FAILURE


def cmd_reload(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        answer = request(_control_path(args.state_dir), "reload")
        out.write(f"{answer}\n")
        return paths.EXIT_OK
    except ControlFailure as exc:  # the daemon refused the new configuration
        for line in str(exc).splitlines():
            err.write(f"{PROG}: reload refused: {line}\n")
        return paths.EXIT_USAGE
    except DaemonNotRunning:
        pass  # no control socket (or none answering): fall back to the signal
    pid = running_pid(args.state_dir)
    if pid is None:
        err.write(f"{PROG}: no daemon is running on {args.state_dir}\n")
        return paths.EXIT_FAILURE
    os.kill(pid, signal.SIGHUP)
    out.write(
        f"asked the daemon (pid {pid}) to reload its configuration (SIGHUP, no control "
        "socket: see its log for the outcome)\n"
    )
    return paths.EXIT_OK


def cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        status = request(_control_path(args.state_dir), "status")
    except DaemonNotRunning:
        status = None
    report = status_report(args.state_dir, status)
    if args.json:
        out.write(json.dumps(report, separators=(",", ":")) + "\n")
    else:
        out.write(status_text(report))
    return paths.EXIT_OK if status is not None else paths.EXIT_FAILURE


def status_report(state_dir: str, daemon: object | None) -> dict[str, object]:
    """The daemon's own status (None when it does not run) and the store's active bans."""
    report: dict[str, object] = {"running": daemon is not None, "state_dir": state_dir}
    if isinstance(daemon, dict):
        report.update(daemon)
    if not os.path.exists(os.path.join(state_dir, paths.STORE_NAME)):  # a read creates no store
        report["store"] = f"no state store in {state_dir}"
        return report
    try:
        store = Store.open(state_dir, offline=None)
    except PortSentinelError as exc:
        report["store"] = str(exc)
        return report
    try:
        report["active_bans"] = len(store.active_bans(time.time()))
        # Commands the daemon may have died running (respond/restart.py): said until the
        # admin settles them (unblock, then block to run them again).
        uncertain = store.uncertain()
        report["uncertain_actions"] = len(uncertain)
        report["uncertain"] = [{"address": target, "backend": name} for target, name in uncertain]
    finally:
        store.close()
    return report


_COUNTER_NAMES = {
    "ingress_dropped_packets": "banned packets dropped at ingress",
    "quiet_packets": "repeats counted in the kernel",
}


def status_text(report: dict[str, object]) -> str:
    lines = []
    if not report.get("running"):
        lines.append(f"portsentinel is not running on {report['state_dir']}")
    else:
        started = report.get("started")
        since = iso_time(started) if isinstance(started, float) else "?"
        dry = " as a DRY RUN (decisions only: no ban, no firewall)" if report.get("dry_run") else ""
        lines.append(
            f"portsentinel {report.get('version')} is running{dry} (pid {report.get('pid')}, "
            f"since {since})"
        )
        lines.append(f"configuration: {report.get('config') or 'embedded defaults'}")
        watched = report.get("ports_watched")
        in_use = report.get("ports_in_use")
        if isinstance(watched, dict) and isinstance(in_use, dict):
            for mode, count in watched.items():
                busy = in_use.get("tcp" if mode.endswith("tcp") else "udp", 0)
                lines.append(f"mode {mode}: {count} ports watched, {busy} in use now")
        counters = report.get("counters")
        if isinstance(counters, dict):
            keys = ("packets", "probes", "decisions_alert", "decisions_block",
                    "decisions_command", "kernel_drops", "decode_errors",
                    "ingress_dropped_packets", "quiet_packets")  # fmt: skip
            shown = ", ".join(
                f"{_COUNTER_NAMES.get(k, k.replace('decisions_', ''))} {counters[k]}"
                for k in keys
                if k in counters
            )
            lines.append(f"counters: {shown}")
        lines.append(f"never-block set: {report.get('never_block_networks')} networks")
        lines += _fleet_lines(report.get("fleet"))
        outage = report.get("store_outage")
        if isinstance(outage, dict):
            began = outage.get("since")
            lines.append(
                "WARNING: the state store refuses writes since "
                f"{iso_time(began) if isinstance(began, float) else '?'} ({outage.get('error')}); "
                "bans wait for it and are retried"
            )
    if "active_bans" in report:
        lines.append(f"active bans: {report['active_bans']}")
    elif "store" in report:
        lines.append(f"store: {report['store']}")
    lines += _uncertain_lines(report.get("uncertain"))
    return "\n".join(lines) + "\n"


def _fleet_lines(fleet: object) -> list[str]:
    if not isinstance(fleet, dict):
        return []
    state = {True: "connected", False: "NOT connected", None: "connecting"}[fleet.get("connected")]

    def when(key: str) -> str:
        value = fleet.get(key)
        return iso_time(value) if isinstance(value, float) else "never"

    lines = [
        f"fleet: LAPI {fleet.get('lapi')} {state}; last push {when('last_push')}, last pull "
        f"{when('last_pull')}",
        f"fleet: outbox {fleet.get('outbox_depth')} waiting, {fleet.get('pushed')} bans pushed, "
        f"{fleet.get('withdrawn')} withdrawn, {fleet.get('fleet_bans_applied')} fleet bans "
        f"applied, {fleet.get('fleet_refused')} refused (never-block set)",
    ]
    if fleet.get("last_error") and fleet.get("connected") is not True:
        lines.append(f"fleet: last error: {fleet.get('last_error')}")
    return lines


def _uncertain_lines(uncertain: object) -> list[str]:
    if not isinstance(uncertain, list) or not uncertain:
        return []
    shown = ", ".join(
        f"{item['address']} ({COMMAND_SETTINGS.get(item['backend'], item['backend'])})"
        for item in uncertain[:5]
    ) + (" ..." if len(uncertain) > 5 else "")
    commands = "ban command" if len(uncertain) == 1 else "ban commands"
    return [
        f"WARNING: {len(uncertain)} {commands} may or may not have run (uncertain: the daemon "
        f"stopped before their outcome was recorded): {shown}; see portsentinel why ADDRESS"
    ]
