"""Notifications: a real HTTP server on 127.0.0.1 receives the webhook; a fake MTA script
stores the mail. Nothing leaves the loopback interface; every wait is bounded."""

from __future__ import annotations

import collections
import email
import email.policy
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from portsentinel import paths
from portsentinel.alert.notify import (
    Notifier,
    NotifyConfig,
    ban_info,
    host_name,
    mail_message,
    summary_text,
)
from portsentinel.config.outputs import NotifyOn
from portsentinel.config.schema import Settings, spec_for
from portsentinel.config.types import InvalidValueError
from portsentinel.model import Action, Decision, Proto, Reason, ScanKind
from portsentinel.store.records import BanRecord, BanState

EVENT_KEYS = {"time", "src", "dst", "proto", "port", "kind", "action", "reason"}


# --- a webhook receiver on 127.0.0.1 -----------------------------------------------------------


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


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


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


def running(config: NotifyConfig) -> Notifier:
    notifier = Notifier(config)
    notifier.start()
    return notifier


WALL = 1_800_000_000.5


# --- webhook ------------------------------------------------------------------------------------


def test_webhook_posts_the_event_with_host_and_content_type(receiver: Receiver) -> None:
    notifier = running(NotifyConfig(webhook_url=receiver.url, host="sensor-1"))
    try:
        notifier.submit(decision(), WALL)
        wait_for(lambda: len(receiver.requests) == 1)
    finally:
        notifier.close()
    path, headers, _body = receiver.requests[0]
    assert path == "/hook/SECRET-TOKEN"
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("portsentinel/")
    body = receiver.bodies()[0]
    assert set(body) >= EVENT_KEYS | {"host", "ban", "type"}
    assert body["type"] == "event"
    assert body["host"] == "sensor-1"
    assert body["ban"] is None
    assert (body["src"], body["port"], body["kind"], body["action"]) == (
        "198.18.0.2",
        31337,
        "SYN",
        "alert",
    )
    assert body["time"] == "2027-01-15T08:00:00.500000+00:00"
    assert notifier.stats()["webhook_sent"] == 1


def test_only_first_triggers_notify_and_notify_on_block_skips_alerts(receiver: Receiver) -> None:
    notifier = running(NotifyConfig(webhook_url=receiver.url, on=NotifyOn.BLOCK))
    try:
        notifier.submit(decision("198.18.0.3", Action.ALERT), WALL)
        notifier.submit(decision("198.18.0.4", Action.BLOCK, first=False), WALL)
        notifier.submit(decision("198.18.0.5", Action.IGNORED, first=False), WALL)
        notifier.submit(decision("198.18.0.6", Action.COMMAND), WALL)
        notifier.submit(decision("198.18.0.7", Action.BLOCK), WALL)
        wait_for(lambda: len(receiver.requests) == 2)
    finally:
        notifier.close()
    assert [b["src"] for b in receiver.bodies()] == ["198.18.0.6", "198.18.0.7"]


def test_a_500_is_retried_with_backoff_until_it_succeeds(receiver: Receiver) -> None:
    receiver.statuses.extend([500, 503])
    notifier = running(NotifyConfig(webhook_url=receiver.url, backoff=0.05))
    try:
        notifier.submit(decision(), WALL)
        wait_for(lambda: notifier.stats()["webhook_sent"] == 1)
    finally:
        notifier.close()
    assert len(receiver.requests) == 3
    assert len({body for _p, _h, body in receiver.requests}) == 1  # the same event each time
    stats = notifier.stats()
    assert (stats["webhook_retries"], stats["webhook_failed"]) == (2, 0)
    assert notifier.lines() == []


def test_retries_are_bounded_and_the_log_hides_the_url_path(receiver: Receiver) -> None:
    receiver.statuses.extend([500] * 10)
    notifier = running(NotifyConfig(webhook_url=receiver.url, attempts=3, backoff=0.01))
    try:
        notifier.submit(decision(), WALL)
        wait_for(lambda: notifier.stats()["webhook_failed"] == 1)
    finally:
        notifier.close()
    assert len(receiver.requests) == 3
    (line,) = notifier.lines()
    assert "failed after 3 attempts: HTTP 500" in line
    assert "SECRET-TOKEN" not in line
    assert f"http://127.0.0.1:{receiver.server_address[1]}" in line


def test_client_errors_and_redirects_are_not_retried_or_followed(receiver: Receiver) -> None:
    receiver.statuses.extend([404, 302])
    notifier = running(NotifyConfig(webhook_url=receiver.url, backoff=0.01))
    try:
        notifier.submit(decision("198.18.0.2"), WALL)
        notifier.submit(decision("198.18.0.3"), WALL)
        wait_for(lambda: notifier.stats()["webhook_failed"] == 2)
    finally:
        notifier.close()
    assert len(receiver.requests) == 2
    lines = notifier.lines()
    assert "after 1 attempt: HTTP 404" in lines[0]
    assert "after 1 attempt: HTTP 302" in lines[1]


def test_a_server_that_never_answers_times_out_in_bounded_time(receiver: Receiver) -> None:
    receiver.hang.set()
    config = NotifyConfig(webhook_url=receiver.url, webhook_timeout=0.2, attempts=2, backoff=0.05)
    notifier = running(config)
    started = time.monotonic()
    try:
        notifier.submit(decision(), WALL)
        wait_for(lambda: notifier.stats()["webhook_failed"] == 1)
    finally:
        notifier.close()
    assert time.monotonic() - started < 3.0
    assert len(receiver.requests) == 2
    (line,) = notifier.lines()
    assert "failed after 2 attempts: timed out" in line


def test_proxy_variables_are_not_used(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy on a closed loopback port: going through it would fail.
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    notifier = running(NotifyConfig(webhook_url=receiver.url))
    try:
        notifier.submit(decision(), WALL)
        wait_for(lambda: len(receiver.requests) == 1)
    finally:
        notifier.close()


# --- rate limit and overflow -------------------------------------------------------------------


def test_rate_limit_sends_a_summary_of_what_it_held(receiver: Receiver) -> None:
    notifier = running(NotifyConfig(webhook_url=receiver.url, rate=2, window=0.5))
    try:
        for i in range(5):
            notifier.submit(decision(f"198.18.0.{10 + i % 2}"), WALL)
        wait_for(lambda: len(receiver.requests) == 3)
    finally:
        notifier.close()
    first, second, summary = receiver.bodies()
    assert (first["type"], second["type"]) == ("event", "event")
    assert summary["type"] == "summary"
    assert summary["held"] == 3
    assert summary["dropped"] == 0
    assert summary["text"] == "3 more alerts in the last 0.5 s"
    assert summary["sources"] == [
        {"src": "198.18.0.10", "count": 2},
        {"src": "198.18.0.11", "count": 1},
    ]
    stats = notifier.stats()
    assert (stats["limited"], stats["summaries"]) == (3, 1)
    assert notifier.lines() == ["adminalert: notifications: 3 more alerts in the last 0.5 s"]


def test_queue_overflow_is_counted_and_summarised(receiver: Receiver) -> None:
    notifier = Notifier(NotifyConfig(webhook_url=receiver.url, queue_size=2, window=0.3))
    for i in range(5):  # the worker is not running yet: the queue fills up
        notifier.submit(decision(f"198.18.0.{20 + i}"), WALL)
    assert notifier.stats()["dropped"] == 3
    notifier.start()
    try:
        wait_for(lambda: len(receiver.requests) == 3)
    finally:
        notifier.close()
    bodies = receiver.bodies()
    assert [b["src"] for b in bodies[:2]] == ["198.18.0.20", "198.18.0.21"]
    assert bodies[2]["type"] == "summary"
    assert bodies[2]["dropped"] == 3
    assert bodies[2]["text"] == "3 alerts lost: the queue was full"


def test_summary_text() -> None:
    assert summary_text(1, 0, 60.0) == "1 more alert in the last minute"
    assert summary_text(7, 2, 60.0) == (
        "7 more alerts in the last minute; 2 alerts lost: the queue was full"
    )
    assert summary_text(0, 1, 30.0) == "1 alert lost: the queue was full"
    assert summary_text(2, 0, 30.0) == "2 more alerts in the last 30 s"


def test_close_sends_what_is_left_then_the_summary(receiver: Receiver) -> None:
    notifier = running(NotifyConfig(webhook_url=receiver.url, rate=1, window=3600.0))
    notifier.submit(decision("198.18.0.2"), WALL)
    notifier.submit(decision("198.18.0.3"), WALL)
    wait_for(lambda: notifier.stats()["limited"] == 1)
    notifier.close()
    assert [b["type"] for b in receiver.bodies()] == ["event", "summary"]
    assert receiver.bodies()[1]["text"] == "1 more alert in the last 3600 s"


# --- ban outcome -------------------------------------------------------------------------------


def test_a_block_waits_for_its_ban_and_carries_it(receiver: Receiver) -> None:
    notifier = running(NotifyConfig(webhook_url=receiver.url, ban_wait=5.0))
    try:
        notifier.submit(decision("198.18.0.2", Action.BLOCK), WALL)
        time.sleep(0.1)
        assert receiver.requests == []  # held until the responder reports
        notifier.ban_result("198.18.0.2", ban_info(record(), name="scanner.example.org."))
        wait_for(lambda: len(receiver.requests) == 1)
    finally:
        notifier.close()
    ban = receiver.bodies()[0]["ban"]
    assert ban == {
        "target": "198.18.0.2",
        "since": "2027-01-15T08:00:00.000000+00:00",
        "until": "2027-01-15T09:00:00.000000+00:00",
        "offence": 2,
        "reason": "SYN scan: scan trigger reached",
        "name": "scanner.example.org",
    }


def test_a_ban_outcome_may_arrive_first_and_a_missing_one_times_out(receiver: Receiver) -> None:
    notifier = running(NotifyConfig(webhook_url=receiver.url, ban_wait=0.3))
    try:
        notifier.ban_result("198.18.0.8", None)  # nothing applied, reported before the event
        notifier.submit(decision("198.18.0.8", Action.BLOCK), WALL)
        notifier.submit(decision("198.18.0.9", Action.BLOCK), WALL)  # no outcome ever
        wait_for(lambda: len(receiver.requests) == 2)
    finally:
        notifier.close()
    assert [(b["src"], b["ban"]) for b in receiver.bodies()] == [
        ("198.18.0.8", None),
        ("198.18.0.9", None),
    ]


def test_ban_info_drops_a_name_that_is_not_a_plain_host_name() -> None:
    assert "name" not in ban_info(record(), name="evil.example;touch /tmp/x")
    assert "name" not in ban_info(record(), name="a\nb")
    assert ban_info(replace(record(), expires=None))["until"] is None


# --- mail ---------------------------------------------------------------------------------------


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


def test_mail_goes_to_the_mta_on_stdin_with_to_and_subject(tmp_path: Path) -> None:
    argv = fake_mta(tmp_path)
    config = NotifyConfig(mail_to=("root", "ops@example.org"), mail_command=argv, host="gw")
    notifier = running(config)
    try:
        notifier.submit(decision("198.18.0.2", Action.ALERT), WALL)
        wait_for(lambda: notifier.stats()["mail_sent"] == 1)
    finally:
        notifier.close()
    assert (tmp_path / "argv").read_text().split("\n")[:2] == ["-t", "-oi"]
    message = mailed(tmp_path)
    assert message["To"] == "root, ops@example.org"
    assert message["Subject"] == "PortSentinel on gw: alert 198.18.0.2 (SYN scan, tcp/31337)"
    assert message["Auto-Submitted"] == "auto-generated"
    content = message.get_content()
    assert "Source: 198.18.0.2\n" in content
    assert "Port: tcp/31337\n" in content
    assert "Reason: scan trigger reached\n" in content


def test_no_field_reaches_a_shell_or_forges_a_header(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("still here")
    argv = fake_mta(tmp_path)
    notifier = running(NotifyConfig(mail_to=("root",), mail_command=argv, ban_wait=5.0))
    evil_rule = f"x; rm -rf {victim} $(touch {tmp_path}/pwned)\nBcc: evil@example.org"
    try:
        notifier.submit(decision("198.18.0.2", Action.BLOCK, rule=evil_rule), WALL)
        ban = ban_info(record(reason=f"; rm -rf {victim}"), name="x.example;touch /tmp/pwned")
        notifier.ban_result("198.18.0.2", ban)
        wait_for(lambda: notifier.stats()["mail_sent"] == 1)
    finally:
        notifier.close()
    assert victim.read_text() == "still here"
    assert not (tmp_path / "pwned").exists()
    assert (tmp_path / "argv").read_text() == "-t\n-oi\n"  # the argv is the configured one
    message = mailed(tmp_path)
    assert message["Bcc"] is None
    content = message.get_content()
    assert f"Ban reason: ; rm -rf {victim}\n" in content
    assert f"Rule: x; rm -rf {victim} $(touch {tmp_path}/pwned)Bcc: evil@example.org" in content
    assert "Name:" not in content


def failed(notifier: Notifier) -> Callable[[], bool]:
    return lambda: notifier.stats()["mail_failed"] == 1


def test_mail_failures_are_counted_and_logged(tmp_path: Path) -> None:
    failing = fake_mta(tmp_path, body='echo "no route to relay" >&2\nexit 75')
    config = NotifyConfig(mail_to=("root",), mail_command=failing, mail_timeout=0.3)
    for argv, expected in (
        (failing, "failed: exit 75; stderr: no route to relay"),
        ((str(tmp_path / "missing-mta"),), "failed: cannot run"),
        (fake_mta(tmp_path, body="sleep 5", name="slow-mta"), "failed: timed out after 0.3s"),
    ):
        notifier = running(replace(config, mail_command=argv))
        started = time.monotonic()
        try:
            notifier.submit(decision(), WALL)
            wait_for(failed(notifier))
        finally:
            notifier.close()
        assert time.monotonic() - started < 3.0
        (line,) = notifier.lines()
        assert line.startswith("adminalert: notifications: mail to root ")
        assert expected in line


def test_mail_message_summary_lists_sources() -> None:
    payload: dict[str, object] = {
        "type": "summary",
        "text": "4 more alerts in the last minute",
        "sources": [{"src": "198.18.0.2", "count": 3}, {"src": "not an address", "count": 1}],
    }
    message = email.message_from_string(mail_message(payload, ("root",), "gw"))
    assert message["Subject"] == "PortSentinel on gw: 4 more alerts in the last minute"
    body = message.get_payload()
    assert isinstance(body, str)
    assert "  198.18.0.2: 3\n" in body
    assert "  ?: 1\n" in body


# --- settings ----------------------------------------------------------------------------------


def test_off_by_default_and_settings_map_to_the_config() -> None:
    assert not NotifyConfig.from_settings(Settings(), await_bans=True).enabled
    settings = replace(
        Settings(),
        webhook_url="https://hooks.example.org/x",
        mail_to=("root",),
        notify_rate=3,
        notify_on=NotifyOn.BLOCK,
    )
    config = NotifyConfig.from_settings(settings, await_bans=True)
    assert config.enabled
    assert (config.rate, config.on, config.webhook_timeout) == (3, NotifyOn.BLOCK, 5.0)
    assert config.mail_command == (paths.SENDMAIL, "-t", "-oi")
    assert config.ban_wait == settings.command_timeout + 5.0
    assert NotifyConfig.from_settings(settings, await_bans=False).ban_wait == 0.0


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("WEBHOOK_URL", "file:///etc/passwd"),
        ("WEBHOOK_URL", "ftp://198.18.0.1/x"),
        ("WEBHOOK_URL", "http://host:99999/"),
        ("WEBHOOK_URL", "http://exa mple/"),
        ("MAIL_TO", "root, a@b;rm -rf /"),
        ("MAIL_TO", "-oQ/tmp"),
        ("MAIL_COMMAND", "/usr/sbin/sendmail 'unclosed"),
        ("NOTIFY_ON", "everything"),
        ("NOTIFY_RATE", "0"),
    ],
)
def test_bad_notification_settings_are_refused(key: str, raw: str) -> None:
    with pytest.raises(InvalidValueError):
        spec_for(key).parse(raw)


def test_the_notifier_refuses_other_schemes_and_keeps_host_names_plain() -> None:
    with pytest.raises(ValueError, match="http or https"):
        Notifier(NotifyConfig(webhook_url="file:///etc/passwd"))
    assert host_name("gw-1.example.org") == "gw-1.example.org"
    assert host_name("bad name\n") == "unknown-host"
