"""The CLI's side of the control channel: where it looks for the socket, and every way asking
the daemon can fail, against small fake servers on real Unix sockets in a temporary directory
(the daemon's side, and round trips through it, are tested in test_control.py)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from portsentinel import paths
from portsentinel.daemon.client import (
    MAX_ANSWER,
    MAX_LINE,
    ControlChannelError,
    ControlFailure,
    DaemonNotRunning,
    encode_request,
    path_fits,
    request,
    socket_path,
)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short path: a Unix socket address holds 107 bytes at most."""
    path = Path(tempfile.mkdtemp(prefix="ps-cli-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _serve_once(path: str, reply: Callable[[socket.socket], None]) -> threading.Thread:
    """A fake daemon on ``path`` that accepts one client and hands it to ``reply``."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def run() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                reply(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _answer(data: bytes) -> Callable[[socket.socket], None]:
    def reply(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(data)

    return reply


# --- where the socket is --------------------------------------------------------------------


def test_socket_path_follows_the_state_dir_rule() -> None:
    default = "/var/lib/portsentinel"
    assert socket_path(None, default) == f"{paths.RUN_DIR}/control.sock"
    assert socket_path(default, default) == f"{paths.RUN_DIR}/control.sock"
    assert socket_path(default + "/", default) == f"{paths.RUN_DIR}/control.sock"
    assert socket_path(default + "/./", default) == f"{paths.RUN_DIR}/control.sock"
    assert socket_path("/srv/ps", default) == "/srv/ps/control.sock"


def test_socket_path_reads_the_default_places_when_called(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(paths, "RUN_DIR", "/tmp/ps-run")
    monkeypatch.setattr(paths, "SOCKET_NAME", "ctl")
    assert socket_path(None, "/x") == "/tmp/ps-run/ctl"
    assert socket_path("/srv/ps", "/x") == "/srv/ps/ctl"


def test_path_fits_a_unix_socket_address_up_to_107_bytes() -> None:
    assert path_fits("/" + "a" * 106)
    assert not path_fits("/" + "a" * 107)
    assert not path_fits("/" + "é" * 54)  # counted in bytes, not characters


# --- the request line -----------------------------------------------------------------------


def test_a_request_is_one_json_line() -> None:
    line = encode_request("unblock", {"address": "198.18.0.9"})
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert json.loads(line) == {"cmd": "unblock", "args": {"address": "198.18.0.9"}}
    assert json.loads(encode_request("status")) == {"cmd": "status", "args": {}}


def test_a_request_that_is_not_json_is_refused() -> None:
    with pytest.raises(ControlChannelError, match="cannot send 'block' to the daemon"):
        encode_request("block", {"until": float("nan")})
    with pytest.raises(ControlChannelError, match="cannot send 'block' to the daemon"):
        encode_request("block", {"at": object()})


def test_a_request_too_large_is_refused_before_sending(short_dir: Path) -> None:
    with pytest.raises(ControlChannelError, match="more than the 65536"):
        request(str(short_dir / "control.sock"), "block", {"comment": "x" * MAX_LINE})


def test_too_long_a_path_is_a_clear_error_not_daemon_not_running(short_dir: Path) -> None:
    path = str(short_dir / ("d" * 120) / "control.sock")
    with pytest.raises(ControlChannelError, match="too long") as caught:
        request(path, "status")
    assert not isinstance(caught.value, DaemonNotRunning)


# --- the answer -----------------------------------------------------------------------------


def test_the_result_is_returned_and_a_refusal_raised_with_the_daemons_words(
    short_dir: Path,
) -> None:
    path = str(short_dir / "control.sock")
    thread = _serve_once(path, _answer(b'{"ok": true, "result": {"bans": 3}}\n'))
    assert request(path, "status") == {"bans": 3}
    thread.join(5)
    os.unlink(path)
    thread = _serve_once(path, _answer(b'{"ok": false, "error": "no ban of 198.18.0.9"}\n'))
    with pytest.raises(ControlFailure, match=r"^no ban of 198\.18\.0\.9$"):
        request(path, "unblock")
    thread.join(5)
    os.unlink(path)
    thread = _serve_once(path, _answer(b'{"ok": false}\n'))
    with pytest.raises(ControlFailure, match="refused without a reason"):
        request(path, "unblock")
    thread.join(5)


def test_an_answer_in_pieces_is_put_together(short_dir: Path) -> None:
    path = str(short_dir / "control.sock")

    def trickle(conn: socket.socket) -> None:
        conn.recv(65536)
        for piece in (b'{"ok": tr', b'ue, "result": ', b'"done"}\nignored'):
            conn.sendall(piece)

    thread = _serve_once(path, trickle)
    assert request(path, "reload") == "done"
    thread.join(5)


def test_an_answer_then_a_reset_still_counts(short_dir: Path) -> None:
    """A daemon that refuses at once (not root) answers and closes before reading the request."""
    path = str(short_dir / "control.sock")

    def answer_unread(conn: socket.socket) -> None:
        conn.sendall(b'{"ok": false, "error": "permission denied"}\n')

    thread = _serve_once(path, answer_unread)
    with pytest.raises(ControlFailure, match=r"^permission denied$"):
        request(path, "status")
    thread.join(5)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"hello\n", "malformed answer"),
        (b"[" * 100_000 + b"\n", "malformed answer"),  # too deep for the decoder
        (b'{"result": 1}\n', "malformed answer"),
        (b'{"ok": "yes"}\n', "malformed answer"),
        (b'{"ok": true, "res', "closed the connection without answering"),
    ],
)
def test_a_malformed_answer_is_a_clear_error(short_dir: Path, answer: bytes, message: str) -> None:
    path = str(short_dir / "control.sock")
    thread = _serve_once(path, _answer(answer))
    with pytest.raises(ControlChannelError, match=message) as caught:
        request(path, "status")
    assert not isinstance(caught.value, (DaemonNotRunning, ControlFailure))
    thread.join(5)


def test_an_endless_answer_is_cut_off(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("portsentinel.daemon.client.MAX_ANSWER", 1000)
    path = str(short_dir / "control.sock")
    thread = _serve_once(path, _answer(b"x" * 5000))
    with pytest.raises(ControlChannelError, match="larger than 1000 bytes"):
        request(path, "list")
    thread.join(5)
    assert MAX_ANSWER >= 1 << 20  # the real bound holds a long ban list


def test_a_daemon_that_does_not_answer_in_time(short_dir: Path) -> None:
    path = str(short_dir / "control.sock")
    done = threading.Event()

    def silent(conn: socket.socket) -> None:
        done.wait(5)

    thread = _serve_once(path, silent)
    late = r"did not answer 'status' within 0\.1s"
    with pytest.raises(ControlChannelError, match=late) as caught:
        request(path, "status", timeout=0.1)
    assert not isinstance(caught.value, (DaemonNotRunning, ControlFailure))
    done.set()
    thread.join(5)


# --- a busy daemon is asked again ---------------------------------------------------------


def test_a_busy_answer_is_asked_again_until_a_slot_is_free(short_dir: Path) -> None:
    """All slots taken: the daemon answers "busy" and closes; the next try gets in."""
    path = str(short_dir / "control.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    tries: list[int] = []

    def serve() -> None:
        with server:
            for n in range(3):
                conn, _ = server.accept()
                with conn:
                    tries.append(n)
                    if n < 2:
                        conn.sendall(b'{"ok": false, "error": "busy: 16 control connections"}\n')
                    else:
                        conn.recv(65536)
                        conn.sendall(b'{"ok": true, "result": "in"}\n')

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert request(path, "status") == "in"
    assert tries == [0, 1, 2]
    thread.join(5)


def test_a_daemon_busy_for_longer_than_the_retries_is_said_so(short_dir: Path) -> None:
    path = str(short_dir / "control.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    stop = threading.Event()

    def refuse() -> None:
        with server:
            server.settimeout(0.1)
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.sendall(b'{"ok": false, "error": "busy: 16 control connections"}\n')

    thread = threading.Thread(target=refuse, daemon=True)
    thread.start()
    started = time.monotonic()
    with pytest.raises(ControlChannelError) as caught:
        request(path, "status", retry_for=0.5)
    assert 0.5 <= time.monotonic() - started < 5
    assert str(caught.value) == (
        f"the daemon stayed busy for 0.5s ({path}): busy: 16 control connections"
    )
    assert not isinstance(caught.value, (DaemonNotRunning, ControlFailure))
    stop.set()
    thread.join(5)


def test_a_full_connection_queue_is_asked_again_not_unreachable(short_dir: Path) -> None:
    """A burst of clients fills the listener's queue: connect fails with EAGAIN for a moment.
    That once was "cannot reach the daemon"."""
    path = str(short_dir / "control.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(0)
    waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    waiting.connect(path)  # the one place in the queue: taken
    with pytest.raises(
        ControlChannelError, match=r"stayed busy for 0\.2s .*connection queue is full"
    ):
        request(path, "status", retry_for=0.2)

    def drain() -> None:
        with server:
            for reply in (None, b'{"ok": true, "result": "served"}\n'):
                conn, _ = server.accept()
                with conn:
                    if reply is not None:
                        conn.recv(65536)
                        conn.sendall(reply)

    thread = threading.Thread(target=drain, daemon=True)
    threading.Timer(0.3, thread.start).start()  # the queue frees while the client retries
    assert request(path, "status") == "served"
    waiting.close()
    thread.join(5)


# --- no daemon ------------------------------------------------------------------------------


def test_no_socket_means_the_daemon_is_not_running(short_dir: Path) -> None:
    path = str(short_dir / "control.sock")
    with pytest.raises(DaemonNotRunning, match=f"no control socket at {path}"):
        request(path, "status")


def test_a_stale_socket_means_the_daemon_is_not_running(short_dir: Path) -> None:
    path = str(short_dir / "control.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens: what kill -9 leaves
    with pytest.raises(DaemonNotRunning, match=f"nothing answers on {path}"):
        request(path, "status")


def test_something_else_in_the_way_is_a_channel_error(short_dir: Path) -> None:
    (short_dir / "state").write_text("a file where the state directory should be")
    path = str(short_dir / "state" / "control.sock")
    with pytest.raises(ControlChannelError, match="cannot reach the daemon on") as caught:
        request(path, "status")
    assert not isinstance(caught.value, DaemonNotRunning)


@pytest.mark.skipif(os.geteuid() == 0, reason="root passes any file permission")
def test_a_socket_of_roots_is_a_permission_error(short_dir: Path) -> None:
    path = str(short_dir / "control.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with server:
        server.bind(path)
        server.listen(1)
        os.chmod(path, 0)
        with pytest.raises(ControlChannelError, match="permission denied") as caught:
            request(path, "status")
    assert not isinstance(caught.value, DaemonNotRunning)
