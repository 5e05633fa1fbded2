"""daemon/scrape.py: the metrics endpoint serves a bounded number of connections, answers the
rest 503 at once, and cuts a connection at its deadline however it trickles."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, make_wsgi_app

from portsentinel.daemon.scrape import MAX_CONNECTIONS, ScrapeServer, serve


@pytest.fixture
def endpoint() -> Iterator[Callable[..., ScrapeServer]]:
    started: list[ScrapeServer] = []

    def start(*, max_connections: int = 2, deadline: float = 0.5) -> ScrapeServer:
        registry = CollectorRegistry()
        Counter("probes", "probes seen", registry=registry).inc(3)
        server = ScrapeServer(("127.0.0.1", 0), max_connections=max_connections, deadline=deadline)
        server.set_app(make_wsgi_app(registry))
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def _url(server: ScrapeServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/metrics"


def _idle(server: ScrapeServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10)


def _read_all(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_a_scrape_is_served(endpoint: Callable[..., ScrapeServer]) -> None:
    server = endpoint()
    with urllib.request.urlopen(_url(server), timeout=10) as answer:
        assert b"probes_total 3.0" in answer.read()


def test_idle_clients_beyond_the_cap_get_503_and_no_thread(
    endpoint: Callable[..., ScrapeServer],
) -> None:
    """prometheus_client's server gave each of 300 idle clients a thread of its own."""
    server = endpoint(max_connections=2, deadline=5.0)
    before = threading.active_count()
    held = [_idle(server) for _ in range(2)]
    _wait_for(lambda: server.connections == 2)
    refused = [_idle(server) for _ in range(20)]
    for sock in refused:
        answer = _read_all(sock)
        assert answer.startswith(b"HTTP/1.0 503 Service Unavailable\r\n")
        assert answer.endswith(b"busy: 2 metrics connections already open, try again\n")
        sock.close()
    assert server.refused == 20
    assert threading.active_count() <= before + 2
    for sock in held:
        sock.close()
    _wait_for(lambda: server.connections == 0)
    with urllib.request.urlopen(_url(server), timeout=10) as answer:
        assert answer.status == 200


def test_a_connection_is_cut_at_its_deadline_however_it_trickles(
    endpoint: Callable[..., ScrapeServer],
) -> None:
    server = endpoint(deadline=0.5)
    started = time.monotonic()
    with _idle(server) as trickler:
        trickler.send(b"GET /")
        _wait_for(lambda: server.connections == 1)  # accepted: it now holds a slot
        try:
            while time.monotonic() - started < 5:  # ten times the deadline
                trickler.send(b"a")  # a request line that never ends
                time.sleep(0.05)
                if server.connections == 0:
                    break
        except OSError:
            pass  # cut while sending
        # The count follows the shutdown, which may end the connection's thread first.
        _wait_for(lambda: server.cut >= 1 and server.connections == 0)
        assert time.monotonic() - started < 5
    with urllib.request.urlopen(_url(server), timeout=10) as answer:  # the slot is free again
        assert answer.status == 200


def test_serve_binds_the_address_family_of_the_host() -> None:
    registry = CollectorRegistry()
    server, thread = serve("127.0.0.1", 0, registry)
    try:
        assert server.address_family == socket.AF_INET
        assert thread.name == "metrics"
        assert server.max_connections == MAX_CONNECTIONS
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
