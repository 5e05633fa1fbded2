"""The CLI's side of the control channel: one JSON request to the running daemon, one answer.

The protocol (shared with ``daemon/control.py``): newline-delimited JSON over a Unix stream
socket. A request is ``{"cmd": NAME, "args": {...}}`` on one line; the answer is
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}`` on one line. JSON only,
never pickle: the daemon runs as root and must not execute what a client sends.

``DaemonNotRunning`` is the one failure a caller may recover from (read-only verbs then work
from the store); every other failure is a ``ControlChannelError`` with a message for the user.

A daemon that is busy for a moment is asked again, for up to ``RETRY_FOR`` seconds, before the
user hears about it: when its connection queue is full (a burst of clients: connect fails with
EAGAIN) and when every connection slot is taken (it answers ``busy: ...`` and closes). Each
connection may go ``IDLE_TIMEOUT`` seconds without a whole request before the daemon drops it,
so the retries outlast the clients that hold every slot without asking anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time

from portsentinel import paths
from portsentinel.errors import PortSentinelError

MAX_LINE = 64 * 1024  # largest request line, in bytes, without its newline
MAX_ANSWER = 64 * 1024 * 1024  # a bound on what the client buffers (a long ban list fits)
IDLE_TIMEOUT = 5.0  # seconds a connection may go without a whole request (the daemon's rule)
BUSY = "busy"  # how the daemon's refusal for lack of a free connection slot starts
RETRY_FOR = IDLE_TIMEOUT + 5.0  # how long a busy daemon is asked again
_RETRY_FIRST, _RETRY_MOST = 0.05, 0.5  # seconds between tries: doubling, up to this
# sun_path holds 108 bytes including the terminating NUL.
MAX_PATH_BYTES = 107


class ControlChannelError(PortSentinelError):
    """The daemon could not be asked, or its answer could not be read."""


class DaemonNotRunning(ControlChannelError):  # noqa: N818 - named for what the user is told
    """No daemon listens on the control socket (absent, or a stale file nobody answers on)."""


class ControlFailure(ControlChannelError):  # noqa: N818 - the daemon's own ``ok: false``
    """The daemon understood the request and refused it; the message is the daemon's."""


def socket_path(state_dir: str | None, default_state_dir: str) -> str:
    """Where the control socket lives (DESIGN.md): ``/run/portsentinel/control.sock`` for the
    default state directory, ``DIR/control.sock`` for any other ``--state-dir DIR``.

    The comparison ignores a trailing slash or ``.`` segments, so ``/var/lib/portsentinel/``
    is the default too; symlinks are not resolved (the daemon and the CLI see the same text).
    """
    if state_dir is None or os.path.normpath(state_dir) == os.path.normpath(default_state_dir):
        return os.path.join(paths.RUN_DIR, paths.SOCKET_NAME)
    return os.path.join(state_dir, paths.SOCKET_NAME)


def path_fits(path: str) -> bool:
    """Can ``path`` be a Unix socket address? (The kernel refuses longer ones.)"""
    return len(os.fsencode(path)) <= MAX_PATH_BYTES


def encode_request(cmd: str, args: dict[str, object] | None = None) -> bytes:
    """One request line; ``ControlChannelError`` if it is not JSON or longer than the daemon
    accepts."""
    try:
        text = json.dumps({"cmd": cmd, "args": args or {}}, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ControlChannelError(f"cannot send {cmd!r} to the daemon: {exc}") from None
    line = text.encode("utf-8")
    if len(line) > MAX_LINE:
        raise ControlChannelError(
            f"request {cmd!r} is {len(line)} bytes, more than the {MAX_LINE} the daemon accepts"
        )
    return line + b"\n"


class _Busy(Exception):  # noqa: N818 - not an error: a reason to try again
    """The daemon could not take the connection now; ``str`` says why."""


def request(
    path: str,
    cmd: str,
    args: dict[str, object] | None = None,
    timeout: float = 5.0,
    retry_for: float = RETRY_FOR,
) -> object:
    """Send ``cmd`` to the daemon listening on ``path`` and return its ``result``.

    A daemon that is busy (its queue full, or every slot taken) is asked again with a short
    pause, for up to ``retry_for`` seconds. Raises ``DaemonNotRunning`` when the socket is
    absent or nobody answers on it, ``ControlFailure`` when the daemon answers ``ok: false``,
    and ``ControlChannelError`` for anything else (no permission, still busy after
    ``retry_for`` seconds, no answer within ``timeout`` seconds, a malformed answer).
    """
    line = encode_request(cmd, args)
    if not path_fits(path):
        raise ControlChannelError(
            f"control socket path too long for a Unix socket ({MAX_PATH_BYTES} bytes at most): "
            f"{path} (use a shorter --state-dir)"
        )
    give_up = time.monotonic() + retry_for
    pause = _RETRY_FIRST
    while True:
        try:
            return _ask(path, cmd, line, timeout)
        except _Busy as busy:
            left = give_up - time.monotonic()
            if left <= 0:
                raise ControlChannelError(
                    f"the daemon stayed busy for {retry_for:g}s ({path}): {busy}"
                ) from None
            time.sleep(min(pause, left))
            pause = min(pause * 2, _RETRY_MOST)


def _ask(path: str, cmd: str, line: bytes, timeout: float) -> object:
    """One connection, one request, one answer; ``_Busy`` when the daemon could not take it."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        _connect(sock, path, timeout)
        try:
            _send(sock, line)
            raw = _read_line(sock, deadline)
        except TimeoutError:
            raise ControlChannelError(
                f"the daemon did not answer {cmd!r} within {timeout:g}s ({path})"
            ) from None
        except OSError as exc:
            raise ControlChannelError(
                f"lost the connection to the daemon ({path}): {exc}"
            ) from None
    return _result(raw, cmd)


def _connect(sock: socket.socket, path: str, timeout: float) -> None:
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except FileNotFoundError:
        raise DaemonNotRunning(f"the daemon is not running (no control socket at {path})") from None
    except ConnectionRefusedError:
        raise DaemonNotRunning(f"the daemon is not running (nothing answers on {path})") from None
    except BlockingIOError:  # EAGAIN: a listener whose queue is full for the moment
        raise _Busy("its connection queue is full") from None
    except PermissionError:
        raise ControlChannelError(
            f"permission denied on the control socket {path} (it is root's: run as root)"
        ) from None
    except TimeoutError:
        raise ControlChannelError(
            f"the daemon did not accept the connection within {timeout:g}s ({path})"
        ) from None
    except OSError as exc:
        raise ControlChannelError(f"cannot reach the daemon on {path}: {exc}") from None


def _send(sock: socket.socket, line: bytes) -> None:
    """Send the request; a daemon that refuses at once (busy, not root) answers and closes
    before reading it, so a broken pipe here still leaves its answer to read."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(line)


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    """Bytes up to the first newline; the overall deadline holds however the answer trickles."""
    buf = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(1 << 16)
        except ConnectionResetError:
            chunk = b""  # the daemon closed after answering; what it sent is in ``buf``
        end = chunk.find(b"\n")
        if end >= 0:
            buf += chunk[:end]
            return bytes(buf)
        if not chunk:
            raise ControlChannelError("the daemon closed the connection without answering")
        buf += chunk
        if len(buf) > MAX_ANSWER:
            raise ControlChannelError(f"the daemon's answer is larger than {MAX_ANSWER} bytes")


def _result(raw: bytes, cmd: str) -> object:
    try:
        answer = json.loads(raw)
    except (ValueError, RecursionError):
        raise ControlChannelError(f"malformed answer from the daemon to {cmd!r}") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
        raise ControlChannelError(f"malformed answer from the daemon to {cmd!r}")
    if not answer["ok"]:
        error = str(answer.get("error") or "the daemon refused without a reason")
        if error.startswith(f"{BUSY}:"):
            raise _Busy(error)
        raise ControlFailure(error)
    return answer.get("result")
