"""The notifier's worker, end to end on the loopback interface: a real HTTP server receives the
webhook, a fake MTA script stores the mail; every wait is bounded."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from portsentinel.alert.notify import Notifier, NotifyConfig, ban_info, message
from portsentinel.alert.notify import worker as worker_module
from portsentinel.config.endpoints import NotifyOn
from portsentinel.model import Action

from .notify_fakes import (
    EVENT_KEYS,
    WALL,
    Receiver,
    decision,
    fake_mta,
    mailed,
    record,
    wait_for,
)


def running(config: NotifyConfig) -> Notifier:
    notifier = Notifier(config)
    notifier.start()
    return notifier


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


# --- mail ---------------------------------------------------------------------------------------


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


def test_the_notifier_refuses_other_schemes() -> None:
    with pytest.raises(ValueError, match="http or https"):
        Notifier(NotifyConfig(webhook_url="file:///etc/passwd"))


# --- a worker that fails ------------------------------------------------------------------------


def test_a_notification_that_fails_is_dropped_said_and_the_worker_goes_on(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = message.event_payload
    calls = []

    def flaky(*args: Any, **kwargs: Any) -> dict[str, object]:
        calls.append(args)
        if len(calls) == 1:
            raise ValueError("a bug met by the first event")
        return real(*args, **kwargs)

    monkeypatch.setattr(worker_module, "event_payload", flaky)
    notifier = running(NotifyConfig(webhook_url=receiver.url))
    try:
        notifier.submit(decision("198.18.0.3"), WALL)
        notifier.submit(decision("198.18.0.4"), WALL)
        wait_for(lambda: len(receiver.requests) == 1)
        assert notifier.alive()
    finally:
        notifier.close()
    assert [b["src"] for b in receiver.bodies()] == ["198.18.0.4"]
    assert notifier.stats()["errors"] == 1
    lines = notifier.lines()
    assert any("a notification failed and was dropped" in line and "a bug met" in line
               for line in lines), lines  # fmt: skip


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_worker_thread_that_ends_unasked_is_not_alive(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What no ``except Exception`` catches ends the thread: ``alive`` says so, and the
    daemon's loop, which asks it every tick, exits (tests/unit/daemon/test_pipeline.py)."""

    def killed(*_args: Any, **_kwargs: Any) -> dict[str, object]:
        raise SystemExit("killed")

    monkeypatch.setattr(worker_module, "event_payload", killed)
    notifier = Notifier(NotifyConfig(webhook_url=receiver.url))
    assert notifier.alive()  # not started yet: nothing has died
    notifier.start()
    assert notifier.alive()
    notifier.submit(decision("198.18.0.3"), WALL)
    wait_for(lambda: not notifier.alive())
    notifier.close()
    assert notifier.alive()  # asked to stop: no longer a failure
