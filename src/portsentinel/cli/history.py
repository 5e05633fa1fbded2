"""Looking back at what the store recorded: ``why ADDR`` and ``history``.

The store is read into views by ``cli/history_views.py`` and rendered by
``cli/history_text.py``; both are imported by the verbs, not here, since the daemon builds
this parser too and never looks back.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Final, TextIO

from portsentinel import paths
from portsentinel.cli.options import PROG, Verbs, add_config_option, add_state_dir_option

DEFAULT_SINCE: Final = "24h"


def add_parsers(verbs: Verbs) -> None:
    """Register ``why`` and ``history``."""
    why_parser = verbs.add_parser(
        "why",
        help="the evidence behind a ban or an alert of ADDR (or of the prefix banned with it)",
        description=(
            "Show the current or last ban of ADDR (or of its IPv6 prefix), what each backend "
            "did, and the probes the store recorded from it. Exit 1 when nothing is recorded."
        ),
    )
    why_parser.add_argument("address", metavar="ADDR", help="an address, or ADDR/LEN")
    _add_common(why_parser, "one JSON object")
    add_config_option(why_parser)  # with a fleet: LAPI is asked which hosts reported ADDR
    why_parser.set_defaults(handler=cmd_why)

    history_parser = verbs.add_parser(
        "history",
        help="past bans (all states) and alert decisions, newest last",
        description="The bans (active, expired, lifted, failed) and the alert decisions "
        "recorded since WHEN, oldest first, from the state store, whether or not the daemon "
        "runs. A relative WHEN counts back from now (from the last record for a replay's "
        "store).",
    )
    history_parser.add_argument(
        "--since",
        default=DEFAULT_SINCE,
        metavar="WHEN",
        help="a duration back (30s, 15m, 1h, 7d), an ISO 8601 time, or all "
        f"(default {DEFAULT_SINCE})",
    )
    _add_common(history_parser, "JSON Lines, one ban or alert per line")
    history_parser.set_defaults(handler=cmd_history)


def _add_common(parser: argparse.ArgumentParser, json_help: str) -> None:
    add_state_dir_option(parser, "state directory to read")
    parser.add_argument("--json", action="store_true", help=json_help)


def cmd_why(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    return why(args.state_dir, args.address, as_json=args.json, now=time.time(), out=out, err=err,
               config=args.config)  # fmt: skip


def cmd_history(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    return history(args.state_dir, args.since, as_json=args.json, now=time.time(), out=out, err=err)


def why(
    state_dir: str, address: str, *, as_json: bool, now: float, out: TextIO, err: TextIO,
    config: str | None = None,
) -> int:  # fmt: skip
    """Exit 0 with the ban and probes of ``address``, 1 when the store has nothing on it.
    With a fleet (``config`` sets CROWDSEC_LAPI_URL and the machine's credentials) and a ban
    or a fleet decision on it, LAPI's alerts on it say which hosts reported it."""
    # Imported here: see the module's docstring.
    from portsentinel.cli import history_views as views  # noqa: PLC0415
    from portsentinel.cli.history_text import why_lines  # noqa: PLC0415
    from portsentinel.cli.tables import json_line  # noqa: PLC0415

    target = views.parse_target(address)
    with views.reading(state_dir, err) as store:
        view = (
            None
            if store is None
            else views.why_view(store, target, views.reference_time(store, now))
        )
    if view is None:
        err.write(f"{PROG}: {address.strip()}: nothing recorded\n")
        return paths.EXIT_FAILURE
    views.add_dropped(view)
    if view["ban"] is not None or view["fleet"]:
        reported = _reported_by(config, str(target.network_address))
        if reported is not None:
            view["reported_by"] = reported
    out.write(json_line(view) + "\n" if as_json else "".join(why_lines(view)))
    return paths.EXIT_OK


def _reported_by(config: str | None, address: str) -> object:
    from portsentinel.config.setup import load_setup  # noqa: PLC0415 - see the docstring
    from portsentinel.errors import PortSentinelError  # noqa: PLC0415

    try:
        settings = load_setup(config, "atcp,audp").settings
    except PortSentinelError as exc:
        return f"the configuration cannot be read: {exc}"
    if not settings.crowdsec_lapi_url:
        return None
    from portsentinel.fleet.reporters import reported_by  # noqa: PLC0415 - only with a fleet

    return reported_by(settings, address)


def history(
    state_dir: str, since: str, *, as_json: bool, now: float, out: TextIO, err: TextIO | None = None
) -> int:
    """The bans and alerts since ``since`` (a duration back, or a time), oldest first."""
    from portsentinel.cli import history_views as views  # noqa: PLC0415 - see the docstring
    from portsentinel.cli.history_text import HISTORY_COLUMNS  # noqa: PLC0415
    from portsentinel.cli.tables import write_rows  # noqa: PLC0415

    value, relative = views.parse_since(since)  # a bad --since is an error even without a store
    with views.reading(state_dir, err) as store:
        anchor = now if store is None else views.reference_time(store, now)
        start = anchor - value if relative else value
        rows = [] if store is None else views.history_rows(store, start)
    empty = f"nothing recorded since {_short(start)}" if start > 0 else "nothing recorded"
    write_rows(rows, HISTORY_COLUMNS, out, as_json=as_json, empty=empty)
    return paths.EXIT_OK


def _short(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
