"""The verbs that fit PortSentinel into the host: ``install``, ``uninstall`` and ``migrate``.

Their work is in ``system/``, imported by the handlers: the daemon builds this parser too.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TextIO

from portsentinel import paths
from portsentinel.cli.options import PROG, Verbs, add_state_dir_option


def add_parsers(verbs: Verbs) -> None:
    """Register ``install``, ``uninstall`` and ``migrate``."""
    put = verbs.add_parser(
        "install",
        help="install the systemd unit, man pages, logrotate rules and a default config",
        description=(
            f"Write {paths.UNIT_DIR}/portsentinel.service, the man pages under "
            f"{paths.MAN_DIR}, {paths.LOGROTATE_DIR}/portsentinel, the default configuration "
            f"{paths.CONFIG_FILE} (never over an existing one) and the state "
            f"directory {paths.STATE_DIR}, then print the systemctl commands to run. "
            "Starts nothing."
        ),
    )
    put.add_argument(
        "--root", default="/", metavar="DIR", help="install below DIR instead of / (staging)"
    )
    put.add_argument("--dry-run", action="store_true", help="print what would be done, only")
    put.set_defaults(handler=cmd_install)

    remove = verbs.add_parser(
        "uninstall",
        help="remove what install put (the configuration and state only with --purge)",
        description=(
            "Remove the files install wrote and the directories it created once they are "
            "empty. Refuses while the service is running or enabled."
        ),
    )
    remove.add_argument("--root", default="/", metavar="DIR", help="uninstall below DIR")
    remove.add_argument(
        "--purge",
        action="store_true",
        help=f"also remove {paths.CONFIG_DIR} and {paths.STATE_DIR} (bans, events)",
    )
    remove.set_defaults(handler=cmd_uninstall)

    migrate = verbs.add_parser(
        "migrate",
        help="write a PortSentinel configuration from an existing PortSentry setup",
        description=(
            "Read portsentry.conf, its ignore files (Debian's portsentry.ignore.static too) "
            "and TCP_MODE/UDP_MODE of the defaults file; write a configuration that keeps "
            "every setting, a merged ignore file and a modes file next to it; say what was "
            "carried over and what changed, and how to stop and disable PortSentry. Stops "
            "nothing and never overwrites a file that differs. From PortSentry 2.0 (its "
            "systemd unit found, or --flags given): its flags become settings and a modes "
            "file, LOG_FORMAT is 2.0, the ignore and history files stay, and the addresses "
            "of its binary blocked file become bans the daemon applies at its start."
        ),
    )
    migrate.add_argument(
        "--from", dest="from_dir", default=paths.PORTSENTRY_DIR, metavar="DIR",
        help=f"PortSentry's configuration directory (default {paths.PORTSENTRY_DIR})",
    )  # fmt: skip
    migrate.add_argument(
        "--defaults", default=paths.DEFAULTS_FILE, metavar="FILE",
        help=f"the defaults file with TCP_MODE and UDP_MODE (default {paths.DEFAULTS_FILE})",
    )  # fmt: skip
    migrate.add_argument(
        "--output", default=paths.CONFIG_FILE, metavar="FILE",
        help=f"the configuration to write; the ignore and modes files go next to it "
        f"(default {paths.CONFIG_FILE})",
    )  # fmt: skip
    migrate.add_argument(
        "--flags", metavar="ARGS",
        help="PortSentry 2.0's command line as you run it, e.g. --flags='--stealth -i eth0' "
        "(migrate from 2.0); without it, 2.0 is recognised by its systemd unit "
        "(portsentry.service)",
    )  # fmt: skip
    add_state_dir_option(migrate, "the state directory where PortSentry 2.0's blocked addresses "
                         "become bans")  # fmt: skip
    migrate.add_argument(
        "--root", default="/", metavar="DIR",
        help="read and write below DIR: all paths above are on that system",
    )  # fmt: skip
    migrate.add_argument(
        "--clean-legacy", action="store_true",
        help="instead of migrating: remove the routes and iptables rules PortSentry's "
        "KILL_ROUTE left for the addresses it recorded (plain migrate only lists them); "
        "refuses while PortSentry runs",
    )  # fmt: skip
    migrate.set_defaults(handler=cmd_migrate)


def cmd_install(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from portsentinel.system import install  # noqa: PLC0415 - not on the daemon's path

    try:
        return install.install(Path(args.root), dry_run=args.dry_run, out=out, err=err)
    except OSError as exc:
        err.write(f"{PROG}: install failed: {exc}\n")
        return paths.EXIT_FAILURE


def cmd_uninstall(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from portsentinel.system import install  # noqa: PLC0415 - not on the daemon's path

    try:
        return install.uninstall(Path(args.root), purge=args.purge, out=out, err=err)
    except OSError as exc:
        err.write(f"{PROG}: uninstall failed: {exc}\n")
        return paths.EXIT_FAILURE


def cmd_migrate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from portsentinel.system import migrate  # noqa: PLC0415 - not on the daemon's path

    # A relative path means what it means everywhere else: from the current directory.
    from_dir, defaults, output = (
        p if p.startswith("/") else os.path.abspath(p)
        for p in (args.from_dir, args.defaults, args.output)
    )
    state_dir = (
        args.state_dir if args.state_dir.startswith("/") else os.path.abspath(args.state_dir)
    )
    request = migrate.Request(Path(args.root), from_dir, defaults, output, args.flags, state_dir)
    try:
        if args.clean_legacy:
            return migrate.clean_legacy(request, out, err)
        return migrate.migrate(request, out, err)
    except OSError as exc:
        err.write(f"{PROG}: migrate failed: {exc}\n")
        return paths.EXIT_FAILURE
