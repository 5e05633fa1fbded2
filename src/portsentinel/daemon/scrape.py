"""The metrics endpoint's HTTP server: a bounded number of connections, each with a deadline.

prometheus_client's own server starts a thread for every connection and never times one out:
300 idle local clients made 302 threads, for as long as they stayed. Here at most
``MAX_CONNECTIONS`` connections are served at once, each on its thread; a further one is
answered ``503`` and closed at once, with no thread. A connection that is not done
``CONNECTION_TIMEOUT`` seconds after its accept, however slowly it sends its request or reads
the answer, is shut down. A scrape (Prometheus sends one at a time) takes milliseconds.

Imported only when the endpoint is on: it pulls in ``http.server`` and prometheus_client.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app

MAX_CONNECTIONS = 8  # served at once; a further one is answered 503 and closed
CONNECTION_TIMEOUT = 10.0  # seconds from a connection's accept to its end, at most
POLL_INTERVAL = 0.5  # seconds between two looks for connections past their deadline


def _busy_answer(max_connections: int) -> bytes:
    text = f"busy: {max_connections} metrics connections already open, try again\n".encode()
    return (
        b"HTTP/1.0 503 Service Unavailable\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: " + str(len(text)).encode() + b"\r\n"
        b"Connection: close\r\n\r\n" + text
    )


class _QuietHandler(WSGIRequestHandler):
    """Logs nothing: a client that times out, resets or sends junk is its own fault, and
    the daemon's log is no place for it. The per-read and per-write timeout is a backstop
    behind the server's deadline for the whole connection."""

    timeout = CONNECTION_TIMEOUT + 5 * POLL_INTERVAL

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def get_stderr(self) -> io.StringIO:
        return io.StringIO()  # wsgiref writes a client's timeout there as a traceback


class ScrapeServer(ThreadingMixIn, WSGIServer):
    """The threading WSGI server with a cap on its threads and a deadline per connection."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 64  # the listen backlog: a burst waits to be answered (or refused)

    def __init__(
        self,
        address: tuple[str, int],
        *,
        family: int = socket.AF_INET,
        max_connections: int = MAX_CONNECTIONS,
        deadline: float = CONNECTION_TIMEOUT,
    ) -> None:
        self.address_family = family  # before the base class makes the socket
        self.max_connections = max_connections
        self.deadline = deadline
        self.refused = 0  # connections answered 503: every slot was taken
        self.cut = 0  # connections shut down at their deadline
        self._busy = _busy_answer(max_connections)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._open: dict[socket.socket, float] = {}  # connection -> its accept time
        super().__init__(address, _QuietHandler)

    @property
    def connections(self) -> int:
        """Connections being served now."""
        with self._lock:
            return len(self._open)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            with contextlib.suppress(OSError):
                request.send(self._busy, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            self.shutdown_request(request)
            return
        with self._lock:
            self._open[request] = time.monotonic()
        try:
            super().process_request(request, client_address)  # starts its thread
        except BaseException:
            self._finished(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._finished(request)

    def service_actions(self) -> None:
        """Called by ``serve_forever`` every ``POLL_INTERVAL``: shut down the connections past
        their deadline (their thread's read or write then returns, and the thread ends)."""
        oldest = time.monotonic() - self.deadline
        with self._lock:
            late = [sock for sock, since in self._open.items() if since < oldest]
        for sock in late:
            # A connection that ended meanwhile is a closed socket object (fd -1): harmless.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
                self.cut += 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that reset, timed out or was cut: nothing to report."""

    def _finished(self, request: socket.socket) -> None:
        with self._lock:
            if self._open.pop(request, None) is None:
                return
        self._slots.release()


def serve(
    host: str, port: int, registry: CollectorRegistry
) -> tuple[ScrapeServer, threading.Thread]:
    """Bind ``host:port`` and serve ``registry`` from a thread; OSError when it cannot bind."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server = ScrapeServer((host, port), family=family)
    server.set_app(make_wsgi_app(registry))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL}, daemon=True
    )
    thread.name = "metrics"
    thread.start()
    return server, thread
