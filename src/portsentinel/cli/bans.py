"""The ban verbs: ``list``, ``block``, ``unblock`` and ``allow``.

Their work on the store and the backends is in ``cli/ban_operations.py``, imported by the
handlers: the daemon builds this parser too, and never lists or lifts a ban from the CLI.
"""

from __future__ import annotations

import argparse
from typing import TextIO

from portsentinel import paths
from portsentinel.cli.options import PROG, Verbs, add_config_option, add_state_dir_option
from portsentinel.config.setup import load_setup
from portsentinel.errors import ConfigError


def add_parsers(verbs: Verbs) -> None:
    """Register ``list``, ``block``, ``unblock`` and ``allow``."""
    listing = verbs.add_parser(
        "list",
        help="the bans in force: address, since, until, reason, ports seen",
        description="The bans in force, from the state store, whether or not the daemon runs: "
        "address (or prefix), since, until (or permanent), reason and the ports seen. "
        "With none in force it says 'no active bans'; the exit status is 0 either way.",
    )
    add_state_dir_option(listing)
    listing.add_argument("--json", action="store_true", help="JSON Lines, one ban per line")
    listing.set_defaults(handler=cmd_list)

    block = verbs.add_parser(
        "block",
        help="ban an address now (refused for this host's own, gateways, resolvers ...)",
        description="Ban ADDR now with the configured backends (nftables by default), for "
        "BAN_DURATION or --for, whether or not the daemon runs (it follows within a second). "
        "An address of the never-block set (this host's own, its gateways and resolvers, the "
        "ignore and allow lists, SSH peers) is refused: exit 1. Run it where the firewall is "
        "(in a network namespace: ip netns exec NS portsentinel block ...).",
    )
    block.add_argument("address", metavar="ADDR", help="an IPv4 or IPv6 address")
    block.add_argument(
        "--for",
        dest="duration",
        metavar="DURATION",
        help="30s, 15m, 1h, 7d or permanent (default BAN_DURATION)",
    )
    add_config_option(block)
    add_state_dir_option(block)
    block.set_defaults(handler=cmd_block)

    unblock = verbs.add_parser(
        "unblock",
        help="lift a ban: firewall, route, hosts.deny line and blocked-file line",
        description="Lift bans, whether or not the daemon runs (it follows within a second).",
    )
    unblock.add_argument(
        "address", metavar="ADDR", nargs="*", help="the addresses (or banned prefixes) to lift"
    )
    unblock.add_argument("--all", action="store_true", help="lift every ban in force")
    unblock.add_argument(
        "--local",
        action="store_true",
        help="lift it on this host only: the fleet's decisions on it stay in force elsewhere "
        "(and are not applied here again); without it they are deleted fleet-wide",
    )
    add_config_option(unblock)
    add_state_dir_option(unblock)
    unblock.set_defaults(handler=cmd_unblock)

    allow = verbs.add_parser(
        "allow",
        help="lift any ban of ADDR (or CIDR) and never block it again",
        description="Lift every ban that covers ADDR (an address or a CIDR network) and add it "
        "to the allow list in the state store: the detector never acts against it again and a "
        "running daemon follows within a second. The entry is kept in the state store (no verb "
        "removes it yet).",
    )
    allow.add_argument("address", metavar="ADDR", help="an IPv4 or IPv6 address or CIDR network")
    allow.add_argument("--comment", default="", help="why (kept in the store)")
    add_config_option(allow)
    add_state_dir_option(allow)
    allow.set_defaults(handler=cmd_allow)


def cmd_list(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from portsentinel.cli import ban_operations  # noqa: PLC0415 - not on the daemon's path

    return ban_operations.list_bans(args.state_dir, args.json, out, err)


def dry_run_refusal(state_dir: str, verb: str) -> str | None:
    """Why ``verb`` must not act on ``state_dir``: a daemon runs there as a dry run, and a dry
    run bans nothing and writes no file outside its state directory; None otherwise (no
    daemon, or a real one)."""
    from portsentinel.daemon.client import ControlChannelError, request, socket_path  # noqa: PLC0415

    try:
        status = request(socket_path(state_dir, paths.STATE_DIR), "status", retry_for=2.0)
    except ControlChannelError:  # none runs, or none answers: the verb works on the store
        return None
    if isinstance(status, dict) and status.get("dry_run") is True:
        return (f"the daemon on {state_dir} (pid {status.get('pid')}) runs as a dry run: "
                f"{verb} would touch the firewall or files outside the state directory; stop "
                "it, or give another --state-dir")  # fmt: skip
    return None


def _refused(state_dir: str, verb: str, err: TextIO) -> bool:
    why = dry_run_refusal(state_dir, verb)
    if why is not None:
        err.write(f"{PROG}: {verb} refused: {why}\n")
    return why is not None


def cmd_block(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from portsentinel.cli import ban_operations  # noqa: PLC0415 - not on the daemon's path

    if _refused(args.state_dir, "block", err):
        return paths.EXIT_FAILURE

    setup = load_setup(args.config, "atcp,audp")
    duration = (
        setup.settings.ban_duration
        if args.duration is None
        else ban_operations.parse_duration(args.duration)
    )
    return ban_operations.block(
        setup, args.state_dir, args.address, duration=duration, out=out, err=err
    )


def cmd_unblock(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from portsentinel.cli import ban_operations  # noqa: PLC0415 - not on the daemon's path

    if bool(args.address) == args.all:
        raise ConfigError("give addresses or --all", key="unblock", expected="ADDR... or --all")
    if _refused(args.state_dir, "unblock", err):
        return paths.EXIT_FAILURE
    setup = load_setup(args.config, "atcp,audp")
    return ban_operations.unblock(
        setup, args.state_dir, args.address, every=args.all, local=args.local, out=out, err=err
    )


def cmd_allow(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from portsentinel.cli import ban_operations  # noqa: PLC0415 - not on the daemon's path

    if _refused(args.state_dir, "allow", err):
        return paths.EXIT_FAILURE
    setup = load_setup(args.config, "atcp,audp")
    return ban_operations.allow(
        setup, args.state_dir, args.address, comment=args.comment, out=out, err=err
    )
