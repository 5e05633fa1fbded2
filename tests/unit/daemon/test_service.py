"""The daemon as a process, in this test process: the state directory's lock, start-up lines,
the control socket's verbs, SIGHUP and SIGTERM (real signals, real handlers, restored after),
the metrics endpoint on loopback, and the shutdown lines. Its packet sources are the fakes of
tests/unit/daemon/fakes.py (no capture, no port bound, no firewall)."""

from __future__ import annotations

import gc
import io
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from portsentinel import __version__
from portsentinel.alert.portsentry_log import ACTIVE, SHUTDOWN, starting_line
from portsentinel.alert.sinks import EventSink, LogSink
from portsentinel.config.setup import Setup, load_setup
from portsentinel.daemon import service
from portsentinel.daemon.client import ControlFailure, request
from portsentinel.daemon.pipeline import Pipeline
from portsentinel.daemon.service import (
    GC_THRESHOLD,
    Daemon,
    RunOptions,
    default_log,
    format_stats,
    settle_gc,
)
from portsentinel.daemon.sources import StartupError
from portsentinel.errors import PortSentinelError
from portsentinel.store.lock import StateLock
from portsentinel.store.sqlite import Store
from unit.daemon.fakes import FakeResponder, build, setup, write_config

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short path: a Unix socket address holds 107 bytes at most."""
    path = Path(tempfile.mkdtemp(prefix="ps-svc-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def handlers() -> Iterator[dict[int, Any]]:
    """This process's signal handlers, put back after the daemon replaced them."""
    saved: dict[int, Any] = {signum: signal.getsignal(signum) for signum in SIGNALS}
    yield saved
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[Pipeline]:
    """``Pipeline.start`` on fakes; the gc is left as it is (``settle_gc`` is tested apart)."""
    pipelines: list[Pipeline] = []

    class Start:
        @staticmethod
        def start(the_setup: Setup, log: LogSink, events: EventSink | None) -> Pipeline:
            pipeline = build(the_setup, log=log, events=events).pipeline
            pipelines.append(pipeline)
            return pipeline

    monkeypatch.setattr(service, "Pipeline", Start)
    monkeypatch.setattr(service, "settle_gc", lambda: None)
    return pipelines


@pytest.fixture
def responders(monkeypatch: pytest.MonkeyPatch) -> list[FakeResponder]:
    """The daemon's response worker, faked: every one it makes, in order."""
    made: list[FakeResponder] = []

    def responder(settings: object, state_dir: str, **_kw: object) -> FakeResponder:
        made.append(FakeResponder(Path(state_dir)))
        return made[-1]

    monkeypatch.setattr(service, "Responder", responder)
    return made


def in_thread(
    handlers: dict[int, Any], then: Callable[[], None]
) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``then`` once the daemon's signal handlers are in (a SIGTERM before would end the
    test process); what it raises is kept for the test to see."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            deadline = time.monotonic() + 10
            while signal.getsignal(signal.SIGTERM) == handlers[signal.SIGTERM]:
                assert time.monotonic() < deadline, "the daemon never installed its handlers"
                time.sleep(0.01)
            then()
        except BaseException as exc:
            failures.append(exc)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, failures


def assert_unlocked(state_dir: str) -> None:
    """The daemon let its lock go: another can take it (``acquire`` raises otherwise)."""
    lock = StateLock(state_dir)
    lock.acquire()
    lock.release()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_a_dry_run_starts_answers_the_cli_reloads_and_stops_on_sigterm(
    short_dir: Path, handlers: dict[int, Any], started: list[Pipeline]
) -> None:
    config = write_config(short_dir, 'KILL_ROUTE="/sbin/route add $TARGET$ reject"\n')
    control = str(short_dir / "control.sock")
    options = RunOptions(
        state_dir=str(short_dir / "state"),
        events=str(short_dir / "events.jsonl"),
        dry_run=True,
        config=config,
        modes="atcp",
        control_path=control,
    )
    out = io.StringIO()
    daemon = Daemon(load_setup(config, "atcp"), options, LogSink(out))
    answers: dict[str, object] = {}

    def ask() -> None:
        wait_for(lambda: os.path.exists(control))  # made just after the signal handlers
        answers["status"] = request(control, "status")
        answers["stats"] = request(control, "stats")
        answers["reload"] = request(control, "reload")
        wait_for(lambda: "configuration reloaded" in out.getvalue())
        os.kill(os.getpid(), signal.SIGHUP)
        wait_for(lambda: out.getvalue().count("configuration reloaded") == 2)

    thread, failures = in_thread(handlers, ask)
    assert daemon.run() == 0
    thread.join(10)
    assert failures == []
    lines = out.getvalue().splitlines()
    assert lines[0] == starting_line(__version__)
    said = "adminalert: dry run: decisions are logged and recorded"
    assert any(line.startswith(said) for line in lines)
    assert (
        "adminalert: KILL_ROUTE is not run: BLOCK_BACKEND=nftables blocks instead "
        "(set BLOCK_BACKEND=legacy to run it as written)"
    ) in lines
    assert ACTIVE in lines
    assert lines.count(f"adminalert: configuration reloaded from {config}") == 2
    assert lines[-3:-1] == list(SHUTDOWN)
    assert lines[-1].startswith("adminalert: statistics: packets=0 probes=0 ")
    status = answers["status"]
    assert isinstance(status, dict)
    assert status["pid"] == os.getpid()
    assert status["modes"] == ["atcp"]
    assert status["dry_run"] is True  # would-be bans recorded, nothing applied
    assert isinstance(answers["stats"], dict)
    assert answers["reload"] == f"configuration read from {config}; applied now"
    assert not os.path.exists(control)  # closed with the daemon
    assert started[0].dry_run  # its responder records would-be bans in an offline store
    with Store.open(options.state_dir, offline=None) as store:
        assert store.offline
    assert_unlocked(options.state_dir)


@pytest.mark.parametrize(
    "broken",
    [
        ("SCAN_TRIGGER", "many"),
        # These two once raised a traceback from the parser, which ended the daemon on reload.
        ("WEBHOOK_URL", "http://[fd00::1/hook"),
        ("METRICS_LISTEN", "127.0.0.1:9²"),
    ],
)
def test_responses_metrics_and_a_refused_reload(
    short_dir: Path,
    handlers: dict[int, Any],
    started: list[Pipeline],
    responders: list[FakeResponder],
    broken: tuple[str, str],
) -> None:
    key, value = broken
    config = write_config(short_dir, f'METRICS_LISTEN="127.0.0.1:{free_port()}"\n')
    options = RunOptions(
        state_dir=str(short_dir / "state"),
        config=config,
        modes="atcp",
        control_path=str(short_dir / ("d" * 120) / "control.sock"),  # too long: no channel
    )
    out = io.StringIO()
    daemon = Daemon(load_setup(config, "atcp"), options, LogSink(out))

    def break_the_config_and_reload() -> None:
        Path(config).write_text(f'{key}="{value}"\n')
        os.kill(os.getpid(), signal.SIGHUP)
        wait_for(lambda: "stays in force" in out.getvalue())

    thread, failures = in_thread(handlers, break_the_config_and_reload)
    assert daemon.run() == 0
    thread.join(10)
    assert failures == []
    lines = out.getvalue().splitlines()
    assert any(line.startswith("adminalert: WARNING: no control socket (") for line in lines)
    assert any(
        line.startswith("adminalert: metrics on http://127.0.0.1:") and line.endswith("/metrics")
        for line in lines
    )
    refused = [line for line in lines if "reload refused" in line]
    assert refused
    assert all(key in line for line in refused)
    assert "adminalert: the running configuration stays in force" in lines
    assert started[0].setup.settings.scan_trigger == 0  # unchanged
    assert [r.started for r in responders] == [True]
    assert responders[0].closed
    assert "alerts_dropped=0" in lines[-1]


def test_a_reload_over_the_control_socket_is_refused_with_the_errors(
    short_dir: Path, handlers: dict[int, Any], started: list[Pipeline]
) -> None:
    """The CLI's ``reload`` hears the refusal (``portsentinel reload`` exits 2 with it)."""
    config = write_config(short_dir, "")
    control = str(short_dir / "control.sock")
    options = RunOptions(state_dir=str(short_dir / "state"), dry_run=True, config=config,
                         modes="atcp", control_path=control)  # fmt: skip
    out = io.StringIO()
    daemon = Daemon(load_setup(config, "atcp"), options, LogSink(out))
    refusals: list[str] = []

    def ask() -> None:
        wait_for(lambda: os.path.exists(control))
        Path(config).write_text('SCAN_TRIGGER="many"\n')
        try:
            request(control, "reload")
        except ControlFailure as exc:
            refusals.append(str(exc))
        os.kill(os.getpid(), signal.SIGTERM)

    thread, failures = in_thread(handlers, ask)
    assert daemon.run() == 0
    thread.join(10)
    assert failures == []
    [refusal] = refusals
    assert refusal.startswith(f"{config}:1: SCAN_TRIGGER: ")
    assert refusal.endswith("\nthe running configuration stays in force")
    assert "adminalert: the running configuration stays in force" in out.getvalue()
    assert started[0].setup.settings.scan_trigger == 0
    assert "configuration reloaded" not in out.getvalue()


def test_a_reload_with_warnings_logs_them(short_dir: Path, started: list[Pipeline]) -> None:
    config = write_config(short_dir, f'IGNORE_FILE="{short_dir}/missing.ignore"\n')
    out = io.StringIO()
    options = RunOptions(state_dir=str(short_dir / "state"), config=config, modes="atcp")
    daemon = Daemon(load_setup(config, "atcp"), options, LogSink(out))
    assert daemon._take_reload() is None  # not asked
    daemon.request_reload()
    fresh = daemon._take_reload()
    assert fresh is not None
    assert fresh.config.path == config
    assert f"{short_dir}/missing.ignore does not exist" in out.getvalue()
    assert out.getvalue().startswith("adminalert: WARNING: ")
    assert daemon._take_reload() is None  # taken once


def test_a_metrics_port_in_use_is_one_clear_error_and_exit_status_one(
    short_dir: Path, started: list[Pipeline], responders: list[FakeResponder]
) -> None:
    """Once a traceback: now one line naming the address and the setting, the responses
    worker closed, the lock let go, and exit status 1 for the service manager."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(short_dir, f'METRICS_LISTEN="127.0.0.1:{port}"\n')
        options = RunOptions(state_dir=str(short_dir / "state"), config=config, modes="atcp")
        out = io.StringIO()
        assert Daemon(load_setup(config, "atcp"), options, LogSink(out)).run() == 1
    last = out.getvalue().splitlines()[-1]
    assert last.startswith(f"adminalert: ERROR: cannot serve metrics on 127.0.0.1:{port} ")
    assert "(METRICS_LISTEN)" in last
    assert [r.closed for r in responders] == [True]
    assert_unlocked(options.state_dir)


def test_a_worker_that_can_no_longer_ban_stops_the_daemon_with_status_one(
    short_dir: Path, started: list[Pipeline], responders: list[FakeResponder]
) -> None:
    """Failing closed: a response worker that stopped (a damaged store) is not left for dead
    while detection goes on; the daemon ends, says why, and exits 1 for a restart."""
    from portsentinel.respond.worker import WorkerMessage  # noqa: PLC0415

    options = RunOptions(state_dir=str(short_dir / "state"), modes="atcp")
    out = io.StringIO()
    daemon = Daemon(setup(short_dir), options, LogSink(out))

    def stop_the_worker() -> None:
        wait_for(lambda: bool(responders) and responders[0].started)
        responders[0].tell(WorkerMessage("fatal", "the response worker stopped: malformed"))

    worker = threading.Thread(target=stop_the_worker, daemon=True)
    worker.start()
    assert daemon.run() == 1
    worker.join(10)
    last = out.getvalue().splitlines()[-1]
    assert last == (
        "adminalert: ERROR: the response worker stopped: malformed; exiting with status 1 so "
        "that the service manager restarts the daemon"
    )
    assert responders[0].closed
    assert_unlocked(options.state_dir)


def test_nothing_to_watch_is_exit_status_one_and_the_lock_is_let_go(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Start:
        @staticmethod
        def start(_setup: Setup, _log: LogSink, _events: EventSink | None) -> Pipeline:
            raise StartupError("adminalert: ERROR: could not bind any TCP sockets.")

    monkeypatch.setattr(service, "Pipeline", Start)
    out = io.StringIO()
    options = RunOptions(state_dir=str(short_dir / "state"))
    daemon = Daemon(setup(short_dir), options, LogSink(out))
    assert daemon.run() == 1
    assert out.getvalue().splitlines()[-1] == "adminalert: ERROR: could not bind any TCP sockets."
    assert_unlocked(options.state_dir)


def test_a_second_daemon_on_the_same_state_dir_refuses(short_dir: Path) -> None:
    state = str(short_dir / "state")
    held = StateLock(state)
    held.acquire()
    try:
        daemon = Daemon(setup(short_dir), RunOptions(state_dir=state), LogSink(io.StringIO()))
        with pytest.raises(PortSentinelError):
            daemon.run()
    finally:
        held.release()


def test_settle_gc_freezes_the_start_up_objects_and_collects_less_often() -> None:
    before = gc.get_threshold()
    try:
        settle_gc()
        assert gc.get_threshold() == (GC_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_statistics_read_as_key_value_pairs() -> None:
    assert format_stats({"packets": 3, "probes": 0}) == "packets=3 probes=0"
    assert format_stats({}) == ""


def test_the_log_goes_to_syslog_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    monkeypatch.setattr("syslog.openlog", lambda ident, *_a: opened.append(ident))
    default_log(setup(tmp_path))
    assert opened == []
    default_log(setup(tmp_path, 'SYSLOG="1"\nSYSLOG_IDENT="ps-test"\n'))
    assert opened == ["ps-test"]


def test_no_notifier_unless_one_is_configured(tmp_path: Path) -> None:
    assert service._notifier(setup(tmp_path), dry_run=False) is None
