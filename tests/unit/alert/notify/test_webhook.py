"""One POST to a real HTTP server on 127.0.0.1: what counts as delivered, what may be retried,
and what is never done (following a redirect, using a proxy, another scheme)."""

from __future__ import annotations

import json
import socket
import time

import pytest

from portsentinel.alert.notify.webhook import Failure, Webhook

from .notify_fakes import Receiver

PAYLOAD: dict[str, object] = {"type": "event", "src": "198.18.0.2", "port": 31337}


def test_a_2xx_is_delivered_as_compact_json(receiver: Receiver) -> None:
    assert Webhook(receiver.url, 5.0).post(PAYLOAD) is None
    [(path, headers, body)] = receiver.requests
    assert path == "/hook/SECRET-TOKEN"
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("portsentinel/")
    assert body == b'{"type":"event","src":"198.18.0.2","port":31337}'
    assert json.loads(body) == PAYLOAD


@pytest.mark.parametrize(
    ("status", "retry"), [(500, True), (503, True), (429, True), (404, False), (400, False)]
)
def test_server_errors_and_429_may_be_retried_client_errors_not(
    receiver: Receiver, status: int, retry: bool
) -> None:
    receiver.statuses.append(status)
    assert Webhook(receiver.url, 5.0).post(PAYLOAD) == Failure(f"HTTP {status}", retry=retry)


def test_a_redirect_is_a_failure_and_is_not_followed(receiver: Receiver) -> None:
    receiver.statuses.append(302)  # to ftp://127.0.0.1/elsewhere
    assert Webhook(receiver.url, 5.0).post(PAYLOAD) == Failure("HTTP 302", retry=False)
    assert len(receiver.requests) == 1


def test_no_answer_in_time_may_be_retried(receiver: Receiver) -> None:
    receiver.hang.set()
    started = time.monotonic()
    failure = Webhook(receiver.url, 0.2).post(PAYLOAD)
    assert time.monotonic() - started < 3.0
    assert failure is not None
    assert failure.retry
    assert "timed out" in failure.why


def test_a_refused_connection_may_be_retried() -> None:
    with socket.socket() as closed:  # a port nobody listens on once closed
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    failure = Webhook(f"http://127.0.0.1:{port}/hook", 2.0).post(PAYLOAD)
    assert failure is not None
    assert failure.retry
    assert failure.why


def test_proxy_variables_are_not_used(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy on a closed loopback port: going through it would fail.
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert Webhook(receiver.url, 5.0).post(PAYLOAD) is None
    assert len(receiver.requests) == 1


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://198.18.0.1/x", "hooks.example.org"])
def test_only_http_and_https(url: str) -> None:
    with pytest.raises(ValueError, match="http or https"):
        Webhook(url, 5.0)


def test_where_hides_the_path_query_and_credentials() -> None:
    webhook = Webhook("https://user:pw@hooks.example.org:8443/t/SECRET?k=SECRET", 5.0)
    assert webhook.where == "https://hooks.example.org:8443"
    assert Webhook("HTTP://hooks.example.org/SECRET", 5.0).where == "http://hooks.example.org"
