"""The ``replay`` verb: run a capture through the detector and print its decisions, and with
``--state-dir`` record them into an offline store.

The engine (``cli/replay_capture.py``) and the recorder (``cli/replay_record.py``) are
imported by the handler: the daemon builds this parser too, and never replays.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from portsentinel import paths
from portsentinel.alert import portsentry2_log
from portsentinel.alert.events import event_line, iso_time, summary_line
from portsentinel.alert.portsentry_log import decoy_cut_line, detection_lines, held_back_line
from portsentinel.cli.options import PROG, Verbs, add_config_option, add_mode_option
from portsentinel.config.modes import modes_text
from portsentinel.config.setup import Setup, detector_config, load_setup
from portsentinel.detect.detector import Detector
from portsentinel.model import Decision, DecoyCut, Mode, Proto

if TYPE_CHECKING:
    from portsentinel.cli.replay_capture import ReplayStats
    from portsentinel.cli.replay_repeats import Held
    from portsentinel.config.schema import Settings


def add_parsers(verbs: Verbs) -> None:
    """Register ``replay``."""
    replay = verbs.add_parser(
        "replay",
        help="run a pcap/pcapng capture through the detector and print its decisions",
        description=(
            "Run a capture through the whole detection core as if live and print one JSON "
            "event per probe that reached a decision (or PortSentry-style lines with --log). "
            "As the daemon does, a source's repeats (a blocked scanner's next probes) are "
            "printed 20 at once and one a second after that, on the capture's clock, and "
            "what was held back is summarised every 10 s and at the end (a JSON line with "
            '"type": "summary"); --every-probe prints them all. Never touches a firewall. A '
            "port counts as in use when the capture shows the watched host answering on it "
            "anywhere in the file (SYN-ACK, or UDP sent from it): an approximation of the "
            "live socket table."
        ),
    )
    replay.add_argument("capture", metavar="CAPTURE", help="pcap or pcapng file")
    add_config_option(replay)
    add_mode_option(replay)
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
    replay.add_argument(
        "--every-probe",
        action="store_true",
        help="a record for every probe that reached a decision, repeats included (as "
        "run --events writes them), instead of the daemon's limit and summary",
    )
    replay.add_argument(  # without it a replay keeps everything in memory
        "--state-dir",
        metavar="DIR",
        default=None,
        help="also record the decisions and bans into DIR's store, marked offline (records "
        "only, never applied to a firewall); list, why and history then read it",
    )
    replay.set_defaults(handler=cmd_replay)


def cmd_replay(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    # Imported here: see the module's docstring.
    from portsentinel.cli.replay_capture import (  # noqa: PLC0415
        parse_in_use,
        parse_local,
        run_replay,
        summary,
    )
    from portsentinel.cli.replay_progress import Progress  # noqa: PLC0415
    from portsentinel.cli.replay_record import record_replay  # noqa: PLC0415

    setup, notes = for_capture(load_setup(args.config, args.mode))
    for warning in setup.warnings:
        err.write(f"{PROG}: warning: {warning}\n")
    for note in notes:
        err.write(f"{PROG}: {note}\n")
    local = parse_local(args.local) if args.local else None
    in_use = parse_in_use(args.in_use)
    detector = Detector(detector_config(setup), ignore=setup.ignore, local=local)
    two = setup.settings.log_format == "2.0"
    writer = _LogWriter(out, setup.settings, portsentry2=two) if args.log else _EventWriter(out)
    summarise = None if args.every_probe else writer.held
    progress = Progress(err)  # a line on a terminal only

    def replay(emit: Callable[[Decision], None], on_cut: Callable[[DecoyCut], None]) -> ReplayStats:
        try:
            return run_replay(args.capture, detector, emit, local=local, in_use=in_use,
                              summarise=summarise, watch=progress.watch,
                              unsolicited=setup.settings.ack_probes, on_cut=on_cut)  # fmt: skip
        finally:
            progress.close()

    writer.decoy_seconds = setup.settings.decoy_ban_duration
    if args.state_dir is None:
        stats = replay(writer, writer.cut)
        recorded = None
    else:
        recorded = record_replay(replay, detector, writer, state_dir=args.state_dir,
                                 settings=setup.settings, on_cut=writer.cut)  # fmt: skip
        stats = recorded.stats
    out.flush()
    modes = modes_text(setup.tcp_mode, setup.udp_mode)
    err.write(f"{PROG}: {summary(args.capture, stats)}; modes: {modes} (from {setup.modes_from})\n")
    if recorded is not None:
        err.write(f"{PROG}: {recorded.summary()}\n")
    return paths.EXIT_OK


_STEALTH = {Mode.TCP: Mode.STCP, Mode.UDP: Mode.SUDP}


def for_capture(setup: Setup) -> tuple[Setup, list[str]]:
    """The modes a capture can be judged in, and what was changed: a bound mode (tcp, udp)
    binds its ports and sees connections through them, which no capture shows, so it would
    decide nothing (Debian's portsentry ships TCP_MODE="tcp"); its stealth counterpart
    watches the same ports in the packets, and replaces it, said in one line each."""
    notes = []
    chosen: list[Mode | None] = []
    for mode in (setup.tcp_mode, setup.udp_mode):
        if mode is None or not mode.bound:
            chosen.append(mode)
            continue
        chosen.append(_STEALTH[mode])
        notes.append(
            f"replay: {mode.value} (from {setup.modes_from}) binds its ports, and a capture "
            f"cannot show connections to bound ports: replaying as {_STEALTH[mode].value}, "
            "the same ports seen in the packets (--mode stcp,sudp or atcp,audp to choose)"
        )
    return dataclasses.replace(setup, tcp_mode=chosen[0], udp_mode=chosen[1]), notes


class _EventWriter:
    """JSON lines: an event per decision, a summary line for what was held back, a cut line
    for a ban cut as a decoy's."""

    def __init__(self, out: TextIO) -> None:
        self._write = out.write
        self.decoy_seconds = 300.0  # DECOY_BAN_DURATION

    def cut(self, cut: DecoyCut) -> None:
        line = {"time": iso_time(cut.time), "type": "cut", "src": cut.src,
                "group": list(cut.group), "seconds": self.decoy_seconds}  # fmt: skip
        self._write(json.dumps(line, separators=(",", ":")) + "\n")

    def __call__(self, decision: Decision) -> None:
        self._write(event_line(decision, decision.time) + "\n")

    def held(self, held: Held) -> None:
        self._write(summary_line(held.count, held.seconds, held.top, held.time) + "\n")


class _LogWriter:
    """PortSentry's log lines, each after its capture time; the daemon's line for what was
    held back."""

    def __init__(self, out: TextIO, settings: Settings, *, portsentry2: bool = False) -> None:
        self._write = out.write
        self._portsentry2 = portsentry2  # LOG_FORMAT 2.0: the Scan from: line
        levels = {Proto.TCP: settings.block_tcp, Proto.UDP: settings.block_udp}
        self._log_only = frozenset(p for p, level in levels.items() if level == 0)
        self.decoy_seconds = settings.decoy_ban_duration

    def cut(self, cut: DecoyCut) -> None:
        self._write(
            f"{iso_time(cut.time)} {decoy_cut_line(cut.src, cut.group, self.decoy_seconds)}\n"
        )

    def __call__(self, decision: Decision) -> None:
        stamp = iso_time(decision.time)
        if self._portsentry2:
            log_only = decision.proto in self._log_only
            lines = portsentry2_log.detection_lines(decision, dry_run=True, log_only=log_only)
        else:
            lines = detection_lines(decision)
        for line in lines:
            self._write(f"{stamp} {line}\n")

    def held(self, held: Held) -> None:
        top = [(f"{src} {reason}", n) for src, reason, n in held.top]
        self._write(f"{iso_time(held.time)} {held_back_line(held.count, held.seconds, top)}\n")
