"""The configuration verbs: ``config check`` and ``config defaults`` (their work is in
``config/commands.py``)."""

from __future__ import annotations

import argparse
from typing import TextIO

from portsentinel import paths
from portsentinel.cli.options import Verbs, add_config_option
from portsentinel.config import commands
from portsentinel.config.setup import choose_config_file


def add_parsers(verbs: Verbs) -> None:
    """Register ``config`` with its actions ``check`` and ``defaults``."""
    config = verbs.add_parser(
        "config",
        help="check a configuration or print the defaults",
        description="config check: validate a configuration as run would load it; config "
        "defaults: print every setting with its default, as a commented configuration file.",
    )
    actions = config.add_subparsers(
        dest="config_verb", metavar="ACTION", required=True, help="check or defaults"
    )
    check = actions.add_parser(
        "check",
        help="validate a configuration and print the effective settings",
        description=(
            "Validate a configuration (and the ignore and defaults files it names). Exit 0 "
            "when it loads, with any warnings on stderr; 2 with the errors."
        ),
    )
    add_config_option(check)
    check.add_argument(
        "--json", action="store_true", help="one JSON document: summary, warnings, errors, settings"
    )
    check.set_defaults(handler=cmd_check)
    defaults = actions.add_parser(
        "defaults",
        help="print every setting with its default as a commented config file",
        description="Print every setting (PortSentry 1.2's, 2.0's and PortSentinel's own) with "
        "its default, unit and help, as a configuration file whose lines are all comments: a "
        "starting point to edit.",
    )
    defaults.set_defaults(handler=cmd_defaults)


def cmd_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    return commands.check(choose_config_file(args.config), out, err, as_json=args.json)


def cmd_defaults(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    out.write(commands.render_defaults())
    return paths.EXIT_OK
