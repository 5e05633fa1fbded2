"""The notifier's tests' stand-ins: a webhook receiver on 127.0.0.1 (nothing leaves the
loopback interface), a fake MTA script that stores the mail, a decision and a ban record."""

from __future__ import annotations

import collections
import email
import email.message
import email.policy
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from portsentinel.model import Action, Decision, Proto, Reason, ScanKind
from portsentinel.store.records import BanRecord, BanState

EVENT_KEYS = {"time", "src", "dst", "proto", "port", "kind", "action", "reason"}


class Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.statuses: collections.deque[int] = collections.deque()
        self.hang = threading.Event()  # set: accept the request, never answer
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook/SECRET-TOKEN"

    def bodies(self) -> list[dict[str, object]]:
        return [json.loads(body) for _path, _headers, body in list(self.requests)]


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests.append((self.path, dict(self.headers.items()), body))
        if self.server.hang.is_set():
            self.server.release.wait(10)
            return
        status = self.server.statuses.popleft() if self.server.statuses else 200
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", "ftp://127.0.0.1/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def decision(
    src: str = "198.18.0.2",
    action: Action = Action.ALERT,
    *,
    first: bool = True,
    rule: str | None = None,
) -> Decision:
    return Decision(
        time=100.0,
        src=src,
        dst="198.18.0.1",
        proto=Proto.TCP,
        port=31337,
        kind=ScanKind.SYN,
        action=action,
        reason=Reason.TRIGGERED if action is not Action.IGNORED else Reason.IGNORE_LIST,
        flags=0x02,
        hits=3,
        ports_seen=2,
        rule=rule,
        first=first,
    )


def record(
    address: str = "198.18.0.2", reason: str = "SYN scan: scan trigger reached"
) -> BanRecord:
    return BanRecord(
        id=1, address=address, prefix=32, created=1_800_000_000.0, expires=1_800_003_600.0,
        state=BanState.ACTIVE, reason=reason, rule=None, evidence={}, offence=2,
        lifted_at=None, lifted_by=None, offline=False,
    )  # fmt: skip


WALL = 1_800_000_000.5


def fake_mta(
    tmp_path: Path, body: str = 'cat > "$OUT/mail"', name: str = "fake-sendmail"
) -> tuple[str, ...]:
    """A real executable that stores its argv and its standard input."""
    script = tmp_path / name
    script.write_text(f'#!/bin/sh\nOUT="{tmp_path}"\nprintf "%s\\n" "$@" > "$OUT/argv"\n{body}\n')
    script.chmod(0o755)
    return (str(script), "-t", "-oi")


def mailed(tmp_path: Path) -> email.message.EmailMessage:
    message = email.message_from_bytes(
        (tmp_path / "mail").read_bytes(), policy=email.policy.default
    )
    assert isinstance(message, email.message.EmailMessage)
    return message
