"""What the verb modules share: the handler's shape, the program's name in messages, and the
options several verbs take (``--config``, ``--mode``, ``--state-dir``), declared once so that
they read the same in every verb's help and in the man page.

Defaults come from ``portsentinel.paths`` when the parser is built, not when this module is
imported, so that a redirected path shows in the help and reaches the handler.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TextIO, TypeAlias

from portsentinel import paths

PROG = "portsentinel"

# Every verb's handler: the parsed arguments, standard output and error -> the exit status.
Handler = Callable[[argparse.Namespace, TextIO, TextIO], int]
# A string: argparse's class is subscriptable for the type checker only.
Verbs: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"configuration file (default {paths.CONFIG_FILE} if present, "
        "else the embedded defaults)",
    )


def add_mode_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode",
        help="e.g. atcp,audp (default: TCP_MODE/UDP_MODE of the defaults file, else atcp,audp)",
    )


def add_state_dir_option(
    parser: argparse.ArgumentParser,
    what: str = "state directory: lock, store, control socket",
) -> None:
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        default=paths.STATE_DIR,
        help=f"{what} (default {paths.STATE_DIR})",
    )
