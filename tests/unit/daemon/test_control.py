"""The daemon's side of the control channel, over real Unix sockets in a temporary directory
and asked through the real client (no root needed, except for the one test that connects as
another user). The client's own failures are tested in test_client.py."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from portsentinel.daemon.client import (
    MAX_LINE,
    ControlChannelError,
    ControlFailure,
    DaemonNotRunning,
    request,
)
from portsentinel.daemon.control import (
    ControlError,
    ControlServer,
    ControlSocketError,
    Handler,
    peer_allowed,
)
from portsentinel.errors import PortSentinelError

BIG = 4 * 1024 * 1024  # larger than both socket buffers together


def _refuse(args: dict[str, object]) -> object:
    raise ControlError(f"no ban of {args.get('address')}")


def _boom(_args: dict[str, object]) -> object:
    raise RuntimeError("handler bug")


BIG_CALLS: list[int] = []


def _big(_args: dict[str, object]) -> object:
    BIG_CALLS.append(1)
    return "x" * BIG


HANDLERS: dict[str, Handler] = {
    "status": lambda args: {"running": True, "echo": args},
    "list": lambda _args: [{"address": "198.18.0.7", "until": None}],
    "reload": lambda _args: None,
    "unblock": _refuse,
    "boom": _boom,
    "nan": lambda _args: float("nan"),
    "big": _big,
}


class Running:
    """A server driven by a real selector loop in a thread, as the daemon drives it."""

    def __init__(self, path: str, *, max_clients: int = 16, read_timeout: float = 5.0) -> None:
        self.logged: list[str] = []
        self.server = ControlServer(
            path,
            HANDLERS,
            log=self.logged.append,
            max_clients=max_clients,
            read_timeout=read_timeout,
        )
        self.path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            self.server.register(selector)
            while not self._stop.is_set():
                for key, _mask in selector.select(0.02):
                    key.data()
                self.server.expire(time.monotonic())

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.server.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short path: a Unix socket address holds 107 bytes at most."""
    path = Path(tempfile.mkdtemp(prefix="ps-ctl-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def run(short_dir: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(*, max_clients: int = 16, read_timeout: float = 5.0) -> Running:
        running = Running(
            str(short_dir / "state" / "control.sock"),
            max_clients=max_clients,
            read_timeout=read_timeout,
        )
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def _connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(path)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (a reset after its answer counts as closing)."""
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _answers(raw: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in raw.splitlines()]


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# --- the socket's place and file ------------------------------------------------------------


def test_socket_is_0600_in_a_new_0750_directory(short_dir: Path) -> None:
    path = short_dir / "new" / "control.sock"
    with ControlServer(str(path), HANDLERS):
        assert stat.S_ISSOCK(path.lstat().st_mode)
        assert stat.S_IMODE(path.lstat().st_mode) == 0o600
        assert path.lstat().st_uid == os.geteuid()
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
        assert os.listdir(path.parent) == ["control.sock"]  # no temporary name left behind
    assert not path.exists()  # close removes it


def test_stale_socket_of_a_killed_daemon_is_replaced(short_dir: Path) -> None:
    path = str(short_dir / "control.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens: what kill -9 leaves
    with pytest.raises(DaemonNotRunning, match="nothing answers"):
        request(path, "status")
    running = Running(path)
    try:
        assert request(path, "reload") is None
    finally:
        running.stop()


def test_live_socket_is_not_taken_over(short_dir: Path) -> None:
    path = str(short_dir / "control.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(path)
        live.listen(1)
        inode = os.lstat(path).st_ino
        with pytest.raises(ControlSocketError, match="another daemon answers"):
            ControlServer(path, HANDLERS)
        assert os.lstat(path).st_ino == inode


def test_a_regular_file_in_the_way_is_not_replaced(short_dir: Path) -> None:
    path = short_dir / "control.sock"
    path.write_text("precious")
    with pytest.raises(ControlSocketError, match="not a socket"):
        ControlServer(str(path), HANDLERS)
    assert path.read_text() == "precious"


def test_close_leaves_a_successor_socket_alone(short_dir: Path) -> None:
    path = short_dir / "control.sock"
    server = ControlServer(str(path), HANDLERS)
    path.unlink()
    path.write_text("successor")
    server.close()
    server.close()  # idempotent
    assert path.read_text() == "successor"


def test_too_long_a_path_is_a_clear_error(short_dir: Path) -> None:
    path = str(short_dir / ("d" * 120) / "control.sock")
    with pytest.raises(ControlSocketError, match="too long"):
        ControlServer(path, HANDLERS)


# --- answers --------------------------------------------------------------------------------


def test_each_kind_of_answer_round_trips(run: Callable[..., Running]) -> None:
    r = run()
    assert request(r.path, "status", {"verbose": True}) == {
        "running": True,
        "echo": {"verbose": True},
    }
    assert request(r.path, "list") == [{"address": "198.18.0.7", "until": None}]
    assert request(r.path, "reload") is None
    with pytest.raises(ControlFailure, match=r"^no ban of 198\.18\.0\.9$"):
        request(r.path, "unblock", {"address": "198.18.0.9"})
    with pytest.raises(ControlFailure, match=r"unknown command 'nope' \(expected one of: big"):
        request(r.path, "nope")
    assert r.logged == []


def test_a_failing_handler_is_logged_and_the_loop_goes_on(run: Callable[..., Running]) -> None:
    r = run()
    with pytest.raises(ControlFailure, match="internal error while running 'boom'"):
        request(r.path, "boom")
    with pytest.raises(ControlFailure, match="internal error while running 'nan'"):
        request(r.path, "nan")  # NaN is not JSON: the answer cannot be encoded
    assert r.alive()
    assert request(r.path, "reload") is None
    assert any("'boom' failed: RuntimeError: handler bug" in line for line in r.logged)
    assert any("'nan' failed: ValueError" in line for line in r.logged)


def test_control_errors_belong_to_the_project_hierarchy() -> None:
    for error in (ControlError, ControlSocketError, DaemonNotRunning, ControlFailure):
        assert issubclass(error, PortSentinelError)


def test_pipelined_requests_are_answered_in_order(run: Callable[..., Running]) -> None:
    r = run()
    with _connect(r.path) as sock:
        sock.sendall(
            b'{"cmd": "reload"}\n\n{"cmd": "status", "args": {"n": 2}}\n{"cmd": "unblock"}\n'
        )
        sock.shutdown(socket.SHUT_WR)
        answers = _answers(_read_all(sock))
    assert answers == [
        {"ok": True, "result": None},
        {"ok": True, "result": {"running": True, "echo": {"n": 2}}},
        {"ok": False, "error": "no ban of None"},
    ]


def test_a_last_request_without_newline_is_answered_at_eof(run: Callable[..., Running]) -> None:
    r = run()
    with _connect(r.path) as sock:
        sock.sendall(b'{"cmd": "reload"}')
        sock.shutdown(socket.SHUT_WR)
        assert _answers(_read_all(sock)) == [{"ok": True, "result": None}]


@pytest.mark.parametrize(
    ("sent", "error"),
    [
        (b"garbage\n", "invalid JSON request"),
        (b"\xff\xfe\n", "invalid JSON request"),
        (b"[" * 60000 + b"\n", "invalid JSON request"),  # nesting deeper than the stack
        (b"[1, 2]\n", "invalid request: expected"),
        (b'{"cmd": 3}\n', "invalid request: expected"),
        (b'{"cmd": "status", "args": [1]}\n', "invalid request: args must be a JSON object"),
        (b"x" * (MAX_LINE + 10), f"request larger than {MAX_LINE} bytes"),
        (b"x" * (MAX_LINE + 1) + b"\n", f"request larger than {MAX_LINE} bytes"),
    ],
)
def test_a_bad_client_is_answered_and_closed_without_disturbing_another(
    run: Callable[..., Running], sent: bytes, error: str
) -> None:
    r = run()
    with _connect(r.path) as other:
        other.sendall(b'{"cmd": "sta')  # half a request, waiting across the bad one
        with _connect(r.path) as bad:
            bad.sendall(sent + b'{"cmd": "reload"}\n')  # nothing after the error is served
            answers = _answers(_read_all(bad))
        assert len(answers) == 1
        assert answers[0]["ok"] is False
        assert str(answers[0]["error"]).startswith(error)
        other.sendall(b'tus"}\n')
        assert json.loads(other.recv(65536)) == {
            "ok": True,
            "result": {"running": True, "echo": {}},
        }
    assert r.alive()


def test_an_oversize_request_is_refused_before_its_newline(run: Callable[..., Running]) -> None:
    r = run()
    with _connect(r.path) as bad:
        # No newline, and the client keeps the line open. The server refuses once it holds
        # MAX_LINE bytes and closes; when the socket's buffer was full the rest of the send
        # meets the closed end (a loaded machine makes that likelier). The answer was queued
        # before the close: it is still read below.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            bad.sendall(b"x" * (2 * MAX_LINE))
        assert _answers(_read_all(bad)) == [
            {"ok": False, "error": f"request larger than {MAX_LINE} bytes"}
        ]


def test_two_clients_at_once_interleave(run: Callable[..., Running]) -> None:
    r = run()
    with _connect(r.path) as first, _connect(r.path) as second:
        first.sendall(b'{"cmd": "status", ')
        second.sendall(b'{"cmd": "list"}\n')
        assert json.loads(second.recv(65536))["result"] == [
            {"address": "198.18.0.7", "until": None}
        ]
        first.sendall(b'"args": {"who": 1}}\n')
        assert json.loads(first.recv(65536))["result"] == {"running": True, "echo": {"who": 1}}
        _wait_for(lambda: r.server.client_count == 2)


def test_a_silent_client_times_out_and_others_are_served(run: Callable[..., Running]) -> None:
    r = run(read_timeout=0.3)
    with _connect(r.path) as silent:
        assert request(r.path, "reload") is None  # served while the silent one waits
        started = time.monotonic()
        answers = _answers(_read_all(silent))
        assert 0.25 < time.monotonic() - started < 3
    assert answers == [{"ok": False, "error": "timed out waiting for a request"}]
    _wait_for(lambda: r.server.client_count == 0)


def test_a_client_that_does_not_read_is_dropped(run: Callable[..., Running]) -> None:
    r = run(read_timeout=0.3)
    BIG_CALLS.clear()
    with _connect(r.path) as stuck:
        stuck.sendall(b'{"cmd": "big"}\n' * 50)  # never reads: answers must not pile up
        assert request(r.path, "reload") is None
        _wait_for(lambda: r.server.client_count == 0)
        received = _read_all(stuck)
    assert 0 < len(received) < BIG  # part of the first answer, then the server hung up
    assert received.count(b"\n") == 0
    assert len(BIG_CALLS) == 1  # the next request waits until the previous answer is sent
    assert r.alive()


def test_clients_beyond_the_limit_are_told_busy(run: Callable[..., Running]) -> None:
    r = run(max_clients=2)
    with _connect(r.path) as a, _connect(r.path):
        _wait_for(lambda: r.server.client_count == 2)
        with _connect(r.path) as third:
            assert _answers(_read_all(third)) == [
                {"ok": False, "error": "busy: 2 control connections already open, try again"}
            ]
        with pytest.raises(ControlChannelError, match="busy: 2 control connections"):
            request(r.path, "reload", retry_for=0.2)
        a.close()
        _wait_for(lambda: r.server.client_count == 1)
        assert request(r.path, "reload", retry_for=0) is None


def test_the_cli_waits_out_clients_that_hold_every_slot(run: Callable[..., Running]) -> None:
    r = run(max_clients=2, read_timeout=0.5)
    with _connect(r.path), _connect(r.path):
        _wait_for(lambda: r.server.client_count == 2)
        assert request(r.path, "reload") is None  # asked again until they were dropped


def test_bytes_that_never_make_a_request_do_not_keep_a_connection(
    run: Callable[..., Running],
) -> None:
    """A byte now and then once restarted the idle timeout: 16 such clients held every slot
    for as long as they went on."""
    r = run(read_timeout=0.5)
    payload = b'{"cmd": "status", "args": {}}'
    with _connect(r.path) as trickler:
        _wait_for(lambda: r.server.client_count == 1)
        started = time.monotonic()
        with contextlib.suppress(OSError):  # the daemon hangs up in the middle
            for sent in range(200):  # one byte every 0.05 s: ten times the timeout
                trickler.send(payload[sent % len(payload) :][:1])
                if r.server.client_count == 0:
                    break
                time.sleep(0.05)
        assert r.server.client_count == 0
        assert time.monotonic() - started < 5
        assert _answers(_read_all(trickler)) == [
            {"ok": False, "error": "timed out waiting for a request"}
        ]


def test_each_whole_request_restarts_the_timeout(run: Callable[..., Running]) -> None:
    r = run(read_timeout=0.6)
    with _connect(r.path) as sock:
        reader = sock.makefile("rb")
        started = time.monotonic()
        while time.monotonic() - started < 2:  # three times the timeout, one connection
            sock.sendall(b'{"cmd": "reload"}\n')
            assert json.loads(reader.readline()) == {"ok": True, "result": None}
            time.sleep(0.2)
        assert r.server.client_count == 1


# --- peers ----------------------------------------------------------------------------------


def test_peer_rule() -> None:
    assert peer_allowed(0, 0)
    assert peer_allowed(0, 1000)  # root may always ask
    assert peer_allowed(1000, 1000)  # the daemon's own user
    assert not peer_allowed(1000, 0)
    assert not peer_allowed(1001, 1000)


NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="connecting as another user needs root")
def test_another_user_is_refused_even_through_a_widened_socket() -> None:
    directory = tempfile.mkdtemp(prefix="ps-ctl-")
    try:
        os.chmod(directory, 0o755)
        path = os.path.join(directory, "control.sock")
        running = Running(path)
        try:
            os.chmod(path, 0o666)  # a careless operator: the peer check still holds
            answer = _as_user(NOBODY, path)
            assert json.loads(answer) == {
                "ok": False,
                "error": f"permission denied: uid {NOBODY} may not control the daemon (root only)",
            }
            assert any(f"refused a client with uid {NOBODY}" in line for line in running.logged)
            assert request(path, "reload") is None  # root still may
        finally:
            running.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _as_user(uid: int, path: str) -> bytes:
    """Connect and ask as ``uid`` from a forked child (SO_PEERCRED reports the connector)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then _exit
        status = 1
        try:
            os.close(read_end)
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(path)
                with contextlib.suppress(BrokenPipeError):  # refused before reading it
                    sock.sendall(b'{"cmd": "reload"}\n')
                os.write(write_end, sock.recv(65536))
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return data
