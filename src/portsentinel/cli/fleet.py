"""``portsentinel fleet join FILE``: the PortSentinel host's half of the fleet's two-command
set-up (``fleet/join``; the LAPI host's half is ``packaging/portsentinel-fleet-enroll``).

The work is imported by the handler: the daemon builds this parser too, and the fleet's
modules are loaded only where a fleet is used.
"""

from __future__ import annotations

import argparse
from typing import TextIO

from portsentinel import paths
from portsentinel.cli.options import PROG, Verbs


def add_parsers(verbs: Verbs) -> None:
    """Register ``fleet`` (one sub-verb: ``join``)."""
    fleet = verbs.add_parser(
        "fleet",
        help="join this host to a CrowdSec fleet (fleet join FILE)",
        description="The fleet through CrowdSec's Local API (README, 'The fleet').",
    )
    sub = fleet.add_subparsers(dest="fleet_verb", metavar="ACTION", required=True, help="join")
    join = sub.add_parser(
        "join",
        help="use the enrolment file portsentinel-fleet-enroll wrote on the LAPI host",
        description=(
            "Split the enrolment FILE into the machine's credentials file and the bouncer key "
            "file (mode 0600, in --dir), set CROWDSEC_LAPI_URL, CROWDSEC_CREDENTIALS_FILE and "
            "CROWDSEC_BOUNCER_KEY_FILE (and CROWDSEC_CA_FILE) in the configuration, then ask "
            "LAPI whether both work. Reload the daemon afterwards. Exit 1 when LAPI refused "
            "or did not answer (the files are written all the same)."
        ),
    )
    join.add_argument("file", metavar="FILE", help="the enrolment file")
    join.add_argument(
        "--config", default=paths.CONFIG_FILE, metavar="FILE",
        help=f"the configuration to change (default {paths.CONFIG_FILE})",
    )  # fmt: skip
    join.add_argument(
        "--dir", default=paths.CONFIG_DIR, metavar="DIR",
        help=f"where the two credential files go (default {paths.CONFIG_DIR})",
    )  # fmt: skip
    join.add_argument(
        "--ca-file", default="", metavar="FILE",
        help="CA certificates of LAPI's TLS certificate (CROWDSEC_CA_FILE)",
    )  # fmt: skip
    join.add_argument("--no-check", action="store_true", help="do not ask LAPI")
    join.set_defaults(handler=cmd_join)


def cmd_join(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from portsentinel.fleet import join  # noqa: PLC0415 - see the module's docstring

    enrolment, said = join.join(args.file, args.config, args.dir, args.ca_file)
    for line in said:
        out.write(line + "\n")
    if not args.no_check:
        m = enrolment.machine
        try:
            out.write(join.check(m.url, m, enrolment.key, args.ca_file) + "\n")
        except join.LapiError as exc:
            err.write(f"{PROG}: fleet join: LAPI {m.url}: {exc}\n")
            return paths.EXIT_FAILURE
    out.write(f"fleet: reload the daemon to start the fleet link ({PROG} reload)\n")
    return paths.EXIT_OK
