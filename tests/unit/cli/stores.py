"""What the cli tests share: stores with known contents, and the verbs run as ``cli.main``
runs them. (A helper module, not a test module: pytest collects ``test_*.py`` only.)"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest

from portsentinel.cli.main import build_parser, main
from portsentinel.cli.replay_capture import parse_local, run_replay
from portsentinel.cli.replay_record import Recorded, record_replay
from portsentinel.cli.replay_repeats import Held
from portsentinel.config.setup import detector_config, load_setup
from portsentinel.detect.detector import Detector
from portsentinel.errors import ConfigError, ConfigErrors, PortSentinelError
from portsentinel.store.records import EventRow, LiftedBy
from portsentinel.store.sqlite import Store

CAPTURES = Path(__file__).resolve().parents[2] / "fixtures" / "captures"
DEBIAN = Path(__file__).resolve().parents[2] / "fixtures" / "config" / "debian"
SCANNER = "198.18.0.2"
LOCAL = ["198.18.0.1", "fd00:5e::1"]
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20+00:00
HOUR, DAY = 3600.0, 86400.0


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``portsentinel ARGV`` through the console script's own entry point: (status, out, err)."""
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def run(argv: list[str]) -> tuple[int, str, str]:
    """A verb as cli.main runs it: usage errors exit 2, runtime failures 1."""
    args = build_parser().parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    try:
        status = args.handler(args, out, err)
    except (ConfigError, ConfigErrors) as exc:
        err.write(f"{exc}\n")
        status = 2
    except PortSentinelError as exc:
        err.write(f"portsentinel: {exc}\n")
        status = 1
    return status, out.getvalue(), err.getvalue()


def event(
    time: float, port: int, *, src: str = "203.0.113.7", dst: str = "192.0.2.1", **kw: object
) -> EventRow:
    fields: dict[str, object] = {
        "proto": "tcp", "kind": "SYN", "action": "ignored", "reason": "below trigger",
        "mode": "atcp", "rule": None, "hits": 1, "ports_seen": 1, "flags": "SYN",
    }  # fmt: skip
    fields.update(kw)
    return EventRow(time, src, dst, port=port, **fields)  # type: ignore[arg-type]


def small_store(state_dir: Path) -> None:
    """One scanner, three probes, one active ban with one backend applied and one failing."""
    with Store.open(str(state_dir)) as store:
        store.add_events(
            [
                event(T0, 21),
                event(T0 + 1, 23, action="block", reason="scan trigger reached",
                      rule="scan_trigger", hits=2, ports_seen=2),
                event(T0 + 2, 25, dst="192.0.2.2", kind="FIN", reason="already blocked",
                      rule="scan_trigger", hits=3, ports_seen=3),
            ]
        )  # fmt: skip
        ban = store.begin_ban(
            "203.0.113.7",
            None,
            created=T0 + 1,
            expires=T0 + 1 + HOUR,
            reason="SYN scan: scan trigger reached",
            rule="scan_trigger",
            evidence={"hits": 2, "ports": ["tcp/21", "tcp/23"], "kinds": ["SYN"],
                      "first_seen": T0, "last_seen": T0 + 1, "plan": ["nftables", "hosts_deny"],
                      "port": 23, "proto": "tcp", "mode": "atcp"},
            offence=1,
        )  # fmt: skip
        store.record_action(ban.id, "nftables", {"set": "ban4"}, "applied", at=T0 + 1)
        for _ in range(2):
            store.record_action(ban.id, "hosts_deny", None, "failed", "denied", at=T0 + 1)
        store.activate(ban.id)


def history_store(state_dir: Path) -> None:
    """An expired ban, an alert, a lifted ban and an active permanent one, over two days."""
    with Store.open(str(state_dir)) as store:
        old = store.begin_ban(
            "192.0.2.1", None, created=T0, expires=T0 + HOUR, reason="SYN scan: scan trigger "
            "reached", rule="scan_trigger", evidence={"ports": ["tcp/1", "tcp/2", "tcp/3"]},
            offence=1,
        )  # fmt: skip
        store.activate(old.id)
        store.lift(old.id, T0 + HOUR, LiftedBy.EXPIRY)
        store.add_events(
            [event(T0 + DAY, 7, src="192.0.2.9", proto="udp", kind="UDP", flags=None),
             event(T0 + DAY + 1, 9, src="192.0.2.9", proto="udp", kind="UDP", flags=None,
                   action="alert", reason="scan trigger reached", rule="scan_trigger")]
        )  # fmt: skip
        lifted = store.begin_ban(
            "192.0.2.2", None, created=T0 + DAY + 5, expires=T0 + 2 * DAY, reason="manual block",
            rule=None, evidence={"plan": ["run_cmd"], "port": 0, "proto": "tcp"}, offence=1,
        )  # fmt: skip
        store.activate(lifted.id)
        store.lift(lifted.id, T0 + DAY + 60, LiftedBy.UNBLOCK)
        live = store.begin_ban(
            "192.0.2.3", None, created=T0 + DAY + 10, expires=None, reason="FIN scan: scan "
            "trigger reached", rule="scan_trigger", evidence={"ports": ["tcp/80", "udp/53"]},
            offence=2,
        )  # fmt: skip
        store.activate(live.id)


def replay_into(
    state_dir: Path,
    capture: str,
    tmp_path: Path,
    config: str = 'SCAN_TRIGGER="0"\n',
    summarise: Callable[[Held], None] | None = None,
) -> Recorded:
    """What ``portsentinel replay --state-dir`` does, built as cli.replay.cmd_replay builds it;
    with every probe (``--every-probe``) unless a ``summarise`` is given."""
    conf = tmp_path / f"replay-{capture}.conf"
    conf.write_text(config)
    setup = load_setup(str(conf), "atcp,audp")
    path = str(CAPTURES / capture)
    local = parse_local(LOCAL)
    detector = Detector(detector_config(setup), ignore=setup.ignore, local=local)
    printed: list[str] = []
    recorded = record_replay(
        lambda emit, on_cut: run_replay(
            path, detector, emit, local=local, summarise=summarise, on_cut=on_cut
        ),
        detector,
        lambda d: printed.append(d.action.value),
        state_dir=str(state_dir),
        settings=setup.settings,
    )
    assert len(printed) == recorded.events  # every printed decision is recorded
    return recorded
