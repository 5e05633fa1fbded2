"""The ``report`` verb: read a store (a daemon's or a replay's), write one HTML page.

``add_parsers(verbs)`` registers it; the handler follows the CLI's ``(args, out, err) -> int``
shape. The only I/O of the report lives here: the store, the clock, the output file.

The CLI imports this module to build its parser, and so does the daemon (``run``): the
report's own modules (data, html, svg) are imported by the handler only.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, TextIO

from portsentinel import __version__, paths
from portsentinel.cli.options import PROG, Verbs, add_state_dir_option
from portsentinel.config.types import InvalidValueError, positive_duration
from portsentinel.errors import ConfigError, StoreError
from portsentinel.store.records import BanRecord
from portsentinel.store.sqlite import Store

if TYPE_CHECKING:
    from portsentinel.report.data import Report
    from portsentinel.report.scale import Zone

ALL: Final = "all"
_EVER: Final = 1e300  # bounds for "every record" (SQLite compares them with any REAL)


def add_parsers(verbs: Verbs) -> None:
    """Register ``report``."""
    parser = verbs.add_parser(
        "report",
        help="write a self-contained HTML page with plots of probes and bans",
        description=(
            "Write one HTML file with summary numbers, plots (probes over time by kind, top "
            "sources, probed ports over time, ban timeline) and tables of the top sources and "
            "the bans in force. It works on a running daemon's store or on the offline store "
            "of `replay --state-dir`; for the latter the period ends at the store's last "
            "record, not now. The page has no script and loads nothing from the network."
        ),
    )
    parser.add_argument(
        "--since",
        default="24h",
        metavar="DURATION",
        help="the period to cover, back from now (or from an offline store's last record): "
        "30m, 24h, 7d ..., or 'all' (default 24h)",
    )
    parser.add_argument(
        "--html", required=True, metavar="FILE", help="the page to write ('-' for standard output)"
    )
    parser.add_argument(
        "--tz",
        choices=("UTC", "local"),
        default="UTC",
        help="write times in UTC (the default, as every other output) or in this machine's "
        "local zone",
    )
    add_state_dir_option(parser, "state directory holding the store")
    parser.set_defaults(handler=cmd_report)


def time_zone(choice: str) -> Zone:
    """UTC, or this machine's zone now (named as ``date`` names it)."""
    from portsentinel.report.scale import UTC_ZONE, Zone  # noqa: PLC0415 - see the docstring

    if choice == "UTC":
        return UTC_ZONE
    here = datetime.now().astimezone()
    return Zone(here.tzinfo or UTC, here.strftime("%Z") or here.strftime("%z"))


def parse_since(text: str) -> float | None:
    """``24h`` -> seconds; ``all`` -> None (everything the store holds)."""
    if text.strip().lower() == ALL:
        return None
    try:
        return positive_duration(text)
    except InvalidValueError as exc:
        raise ConfigError(str(exc), key="--since", expected="30m, 24h, 7d ... or all") from None


def cmd_report(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """The handler: exit 0 with the page written, 1 when the store or the file fails."""
    from portsentinel.report.html import render_page  # noqa: PLC0415 - see the docstring
    from portsentinel.report.svg import plural  # noqa: PLC0415

    since = parse_since(args.since)
    now = time.time()
    try:
        report, path = load_report(args.state_dir, since, now)
        zone = time_zone(args.tz)
        page = render_page(report, store_path=path, generated=now, version=__version__, zone=zone)
        if args.html == "-":
            out.write(page)
        else:
            write_atomically(args.html, page)
    except StoreError as exc:
        err.write(f"{PROG}: {exc}\n")
        return paths.EXIT_FAILURE
    except OSError as exc:
        err.write(f"{PROG}: {args.html}: cannot write the report: {exc.strerror}\n")
        return paths.EXIT_FAILURE
    s = report.summary
    done = out if args.html != "-" else err
    done.write(
        f"report written to {args.html}: {plural(s.probes, 'probe')} from "
        f"{plural(s.sources, 'source')}, {plural(s.bans, 'ban')}\n"
    )
    return paths.EXIT_OK


def load_report(state_dir: str, since: float | None, now: float) -> tuple[Report, str]:
    """Read the store (never creating one) and reduce its window: from the rollups, in one
    snapshot; from the events themselves only when some lie after the window's end."""
    from portsentinel.report.aggregate import report_from_rollups  # noqa: PLC0415
    from portsentinel.report.data import (  # noqa: PLC0415
        build_report,
        choose_window,
        span_of,
        with_fleet,
    )

    path = os.path.join(state_dir, paths.STORE_NAME)
    if not os.path.isfile(path):
        raise StoreError(f"{path}: no store here (give the --state-dir of a daemon or a replay)")
    with Store.open(state_dir, offline=None) as store, store.rollup_reader() as reader:
        offline = store.offline
        follow = offline or since is None
        bans = _bans(store, since, now, follow_records=follow)
        start, end = choose_window(span_of(reader.span(), bans), since, now, follow_records=follow)
        fleet = [(d.id, d.address, d.origin, d.scenario, d.until)
                 for d in store.fleet_decisions() if d.state == "applied"]  # fmt: skip
        pushed = [ban_id for ban_id, _a, _s in store.fleet_bans_in("pushed")]
        if not reader.events_from(end):
            report = report_from_rollups(reader, bans, start, end, offline=offline)
        else:
            events = store.events_between(start, end)  # a clock that went back: the slow path
            report = build_report(events, bans, start, end, offline=offline)
    return with_fleet(report, fleet, pushed), path


def _bans(
    store: Store, since: float | None, now: float, *, follow_records: bool
) -> list[BanRecord]:
    """A live store's window is known before reading; an offline store's (a capture's own
    times) and 'all' are found from the records, so those read every ban."""
    if follow_records or since is None:
        return store.bans_between(-_EVER, _EVER)
    return store.bans_between(now - since, now)


def write_atomically(path: str, text: str) -> None:
    """Write beside the target, then rename: a reader never sees half a page."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
