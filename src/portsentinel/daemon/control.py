"""The daemon's side of the control channel: a Unix socket served inside the daemon's loop.

The protocol is described in ``portsentinel/daemon/client.py``. Everything here is
non-blocking and registered in the caller's selector, so a client can never stall packet
capture: reads are buffered until a whole line arrives, answers are sent without blocking, and
a client that sends junk, too much, nothing, or stops reading is answered (when it can be) and
dropped. Only root and the daemon's own user may talk to it (SO_PEERCRED), whatever the
socket file's mode.

The idle timeout counts whole requests, not bytes: a connection has ``IDLE_TIMEOUT`` seconds
from its accept, and then from each request it made, to send its next whole request line and
read the answer to the last one. A byte now and then keeps no connection open, so clients that
trickle cannot hold the ``MAX_CLIENTS`` slots and lock the CLI out (the CLI retries a busy
daemon for longer than that timeout).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import stat
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from portsentinel.daemon.client import BUSY, IDLE_TIMEOUT, MAX_LINE, path_fits
from portsentinel.errors import PortSentinelError

Handler = Callable[[dict[str, object]], object]

MAX_CLIENTS = 16  # connections served at once; more are told "busy" and closed
READ_TIMEOUT = IDLE_TIMEOUT  # seconds a connection may go without a whole request
RECV_SIZE = 64 * 1024
ACCEPTS_PER_WAKE = 16  # a connect flood cannot keep the loop in accept()
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class ControlError(PortSentinelError):
    """Raised by a handler to refuse a request; the message goes to the client as is."""


class ControlSocketError(PortSentinelError):
    """The control socket cannot be opened (path too long, in use, not a socket ...)."""


def peer_allowed(peer_uid: int, own_uid: int) -> bool:
    """Root may always ask; anyone else only if the daemon itself runs as that user."""
    return peer_uid in (0, own_uid)


@dataclass(eq=False)
class _Client:
    sock: socket.socket
    last_request: float  # monotonic time of the accept, then of each whole request taken
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    eof: bool = False  # the client shut its side: answer what is buffered, then close
    closing: bool = False  # close once ``outbuf`` is sent; read nothing more


class ControlServer:
    """Listens on ``path`` and answers each request line with ``handlers[cmd](args)``.

    The socket is bound when the server is built: the directory is created 0750, the socket
    is 0600 and owned by the daemon's user, and a socket file left by a killed daemon is
    replaced only once nobody answers on it. Call ``register`` with the daemon's selector,
    ``expire`` from a periodic timer (it enforces the read timeout), and ``close`` at exit.
    Not thread-safe: every call comes from the loop's thread.
    """

    def __init__(
        self,
        path: str,
        handlers: Mapping[str, Handler],
        *,
        log: Callable[[str], None] | None = None,
        max_clients: int = MAX_CLIENTS,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.path = path
        self.handlers = dict(handlers)
        self.max_clients = max_clients
        self.read_timeout = read_timeout
        self._log = log
        self._own_uid = os.geteuid()
        self._clients: set[_Client] = set()
        self._selector: selectors.BaseSelector | None = None
        self._paused = False  # not accepting until the next ``expire`` (out of descriptors)
        self._listener, self._inode = _bind(path, backlog=max_clients)

    # --- lifecycle ------------------------------------------------------------------------

    def register(self, selector: selectors.BaseSelector) -> None:
        """Serve from ``selector``; each key's ``data`` is a callable to run on readiness."""
        self._selector = selector
        selector.register(self._listener, selectors.EVENT_READ, self._on_accept)

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def expire(self, now: float) -> None:
        """Drop connections that went longer than the read timeout without a whole request
        (however many bytes they sent meanwhile), or without reading the last answer.

        ``now`` is ``time.monotonic()``; the pipeline's tick timer passes its clock.
        """
        if self._paused and self._selector is not None:
            self._paused = False
            self._selector.register(self._listener, selectors.EVENT_READ, self._on_accept)
        for client in list(self._clients):
            if now - client.last_request > self.read_timeout:
                if not client.outbuf and not client.closing:
                    # Best effort: a client that only forgot to send learns why it was closed.
                    _try_send(client.sock, _error_line("timed out waiting for a request"))
                self._drop(client)

    def close(self) -> None:
        """Close every connection and the listener; remove the socket file if still ours."""
        if self._listener.fileno() < 0:
            return
        for client in list(self._clients):
            self._drop(client)
        if self._selector is not None and not self._paused:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._listener)
        self._listener.close()
        with contextlib.suppress(OSError):
            if os.lstat(self.path).st_ino == self._inode:
                os.unlink(self.path)

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- connections ----------------------------------------------------------------------

    def _on_accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._pause_accepting(exc)
                return
            sock.setblocking(False)
            refusal = self._refusal(sock)
            if refusal is not None:
                _try_send(sock, _error_line(refusal))
                sock.close()
                continue
            self._admit(sock)

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of descriptors (EMFILE, ENFILE ...): the listener stays readable, so stop
        watching it until the next ``expire`` instead of spinning the loop on it."""
        self._say(f"adminalert: ERROR: control socket: accept failed: {exc}")
        if self._selector is not None and not self._paused:
            self._selector.unregister(self._listener)
            self._paused = True

    def _refusal(self, sock: socket.socket) -> str | None:
        if len(self._clients) >= self.max_clients:
            return f"{BUSY}: {self.max_clients} control connections already open, try again"
        try:
            pid, uid, _gid = _PEERCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            )
        except OSError as exc:
            return f"cannot identify the client: {exc}"
        if peer_allowed(uid, self._own_uid):
            return None
        self._say(f"adminalert: control socket: refused a client with uid {uid} (pid {pid})")
        return f"permission denied: uid {uid} may not control the daemon (root only)"

    def _admit(self, sock: socket.socket) -> None:
        client = _Client(sock, last_request=time.monotonic())
        self._clients.add(client)
        if self._selector is not None:
            self._selector.register(sock, selectors.EVENT_READ, lambda: self._on_ready(client))

    def _drop(self, client: _Client) -> None:
        self._clients.discard(client)
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(client.sock)
        client.sock.close()

    def _on_ready(self, client: _Client) -> None:
        """One readiness event: send what is pending, else read; the interest set says which."""
        if client.outbuf:
            self._progress(client)
            return
        try:
            data = client.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        if data:
            client.inbuf += data  # bytes alone do not reset the idle timeout: requests do
        else:
            client.eof = True
            if client.inbuf.strip():
                client.inbuf += b"\n"  # a last request sent without its newline still counts
        self._progress(client)

    def _progress(self, client: _Client) -> None:
        """Send what is pending, then answer the next buffered request, while the socket
        takes it. The next request is answered only once the previous answer is sent, so a
        client that never reads cannot make the daemon buffer answers without bound."""
        while True:
            if client.outbuf:
                if not self._send_now(client):
                    return
                if client.outbuf:
                    self._watch(client, selectors.EVENT_WRITE)
                    return
            if client.closing:
                self._drop(client)
                return
            if not self._next_request(client):
                self._watch(client, selectors.EVENT_READ)
                return

    def _next_request(self, client: _Client) -> bool:
        """Answer the next buffered request line; False while no whole line has arrived."""
        while True:
            end = client.inbuf.find(b"\n")
            if end > MAX_LINE or (end < 0 and len(client.inbuf) > MAX_LINE):
                self._fail(client, f"request larger than {MAX_LINE} bytes")
                return True
            if end < 0:
                client.closing = client.eof
                return client.eof
            line = bytes(client.inbuf[:end])
            del client.inbuf[: end + 1]
            if line.strip():  # blank lines are skipped (handy with socat and nc)
                client.last_request = time.monotonic()
                self._answer(client, line)
                return True

    def _send_now(self, client: _Client) -> bool:
        """Send without blocking; False if the client is gone (and dropped)."""
        try:
            sent = client.sock.send(client.outbuf, socket.MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            self._drop(client)
            return False
        del client.outbuf[:sent]
        return True

    def _watch(self, client: _Client, events: int) -> None:
        if self._selector is None:
            return
        key = self._selector.get_key(client.sock)
        if key.events != events:
            self._selector.modify(client.sock, events, key.data)

    def _fail(self, client: _Client, message: str) -> None:
        """A protocol error: answer it, then close (the stream cannot be trusted after it)."""
        client.outbuf += _error_line(message)
        client.closing = True

    # --- requests -------------------------------------------------------------------------

    def _answer(self, client: _Client, line: bytes) -> None:
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):  # deep nesting exhausts the parser's stack
            self._fail(client, "invalid JSON request")
            return
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            self._fail(client, 'invalid request: expected {"cmd": NAME, "args": {...}}')
            return
        args = request.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, dict):
            self._fail(client, "invalid request: args must be a JSON object")
            return
        client.outbuf += self.dispatch(request["cmd"], args)

    def dispatch(self, cmd: str, args: dict[str, object]) -> bytes:
        """Run one command and return its answer line; never raises for a handler's fault."""
        handler = self.handlers.get(cmd)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            return _error_line(f"unknown command {cmd!r} (expected one of: {known})")
        try:
            result = handler(args)
            return _answer_line({"ok": True, "result": result})
        except ControlError as exc:
            return _error_line(str(exc))
        except Exception as exc:  # a handler's bug must not stop the daemon
            self._say(
                f"adminalert: ERROR: control command {cmd!r} failed: {type(exc).__name__}: {exc}"
            )
            return _error_line(f"internal error while running {cmd!r} (see the daemon's log)")

    def _say(self, line: str) -> None:
        if self._log is not None:
            self._log(line)


# --- helpers ----------------------------------------------------------------------------------


def _answer_line(answer: dict[str, object]) -> bytes:
    """Strict JSON (no NaN): a result that cannot be encoded is the handler's fault."""
    return json.dumps(answer, allow_nan=False, separators=(",", ":")).encode() + b"\n"


def _error_line(message: str) -> bytes:
    return _answer_line({"ok": False, "error": message})


def _try_send(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.send(data, socket.MSG_NOSIGNAL)


def _bind(path: str, backlog: int) -> tuple[socket.socket, int]:
    """Bind ``path`` 0600 with no window where it is wider, and listen.

    The socket is bound under a temporary name, restricted, then renamed over ``path``, so
    clients never see it with the umask's mode and a live daemon's socket is never unlinked.
    """
    if not path_fits(path):
        raise ControlSocketError(f"control socket path too long for a Unix socket: {path}")
    directory = os.path.dirname(path) or "."
    _make_dir(directory)
    _check_stale(path)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}")
    if not path_fits(temporary):
        raise ControlSocketError(f"control socket path too long for a Unix socket: {path}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)  # left by an earlier process with our pid
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(temporary)
        os.chmod(temporary, 0o600)
        os.rename(temporary, path)
        sock.listen(backlog)
        sock.setblocking(False)
        return sock, os.lstat(path).st_ino
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise ControlSocketError(f"cannot open the control socket {path}: {exc}") from None


def _make_dir(directory: str) -> None:
    if os.path.isdir(directory):
        return
    try:
        os.makedirs(directory, mode=0o750, exist_ok=True)
        os.chmod(directory, 0o750)  # exactly, whatever the umask
    except OSError as exc:
        raise ControlSocketError(f"cannot create {directory}: {exc}") from None


def _check_stale(path: str) -> None:
    """Refuse to take ``path`` over unless it is absent or a socket nobody answers on."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlSocketError(f"{path} exists and is not a socket; not replacing it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return  # stale: its daemon died without removing it
        except TimeoutError:
            pass  # a full backlog: someone is listening
        except OSError as exc:
            raise ControlSocketError(f"cannot check the control socket {path}: {exc}") from None
    raise ControlSocketError(f"another daemon answers on {path}")
