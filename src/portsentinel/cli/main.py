"""The ``portsentinel`` command: the parser's skeleton, the dispatch to a verb's handler, and
the mapping from errors to exit statuses.

Each family of verbs declares and handles its verbs in its own module (run, bans, history,
replay, report, config, system). Exit status (DESIGN.md): 0 success, 1 runtime failure, 2
usage or configuration error. Errors are printed as one clear line each, never as a traceback.

``run`` is a long-lived daemon and builds this whole parser, so every module imported here
stays resident in the daemon: the verb modules import the work that only their verbs need
(the ban operations, the replay, the report, install) in their handlers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from portsentinel import __version__, paths
from portsentinel.cli import (
    bans,
    config,
    fleet,
    history,
    portsentry2,
    replay,
    report,
    run,
    system,
)
from portsentinel.cli.options import PROG, Handler
from portsentinel.errors import CaptureError, ConfigError, ConfigErrors, PortSentinelError

# The families in the order of ``--help`` and the man page.
FAMILIES = (run, bans, history, replay, report, config, system, fleet)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, every verb included."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="PortSentinel: port-scan detection and active response (a modern PortSentry).",
        epilog="PortSentry's own command lines run the daemon too: 1.2's 'portsentinel -atcp "
        "-audp', and 2.0's 'portsentinel --stealth -c FILE' (see 'portsentinel --stealth -h'). "
        "Exit status: 0 success, 1 runtime failure, 2 usage or configuration error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for family in FAMILIES:
        family.add_parsers(verbs)
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    words = translate_portsentry_flags(sys.argv[1:] if argv is None else argv)
    if portsentry2.is_portsentry2(words, sys.argv[0] if argv is None else PROG):
        args = portsentry2.parse(words)
    else:
        args = build_parser().parse_args(words)
    handler: Handler = args.handler
    try:
        return handler(args, sys.stdout, sys.stderr)
    except (ConfigError, ConfigErrors) as exc:
        sys.stderr.write(f"{exc}\n")
        return paths.EXIT_USAGE
    except CaptureError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return paths.EXIT_FAILURE
    except BrokenPipeError:
        return paths.EXIT_OK
    except PortSentinelError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return paths.EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
