"""The service manager's notification socket, against a real datagram socket standing in for
systemd's: what the daemon says, when the loop feeds the watchdog (and that only its turns do),
and that a missing manager or a broken socket never stops it."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from portsentinel.daemon.pipeline import TICK_EVERY
from portsentinel.daemon.sdnotify import ServiceManager
from unit.daemon.fakes import Driver, build, setup


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.setblocking(False)
    yield sock, path
    sock.close()


def received(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def test_each_message_is_one_datagram(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    manager = ServiceManager(path)
    assert manager.enabled
    assert manager.ready("watching")
    assert manager.watchdog()
    assert manager.stopping()
    assert received(sock) == ["READY=1\nSTATUS=watching", "WATCHDOG=1", "STOPPING=1"]
    assert (manager.sent, manager.failures) == (3, 0)
    manager.close()
    assert not manager.send("READY=1")


def test_an_abstract_socket_is_reached_through_its_leading_at() -> None:
    name = f"portsentinel-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        ServiceManager("@" + name).ready()
        assert sock.recv(100) == b"READY=1"


def test_without_a_manager_nothing_is_sent() -> None:
    manager = ServiceManager(None, 10_000_000)
    assert not manager.enabled
    assert manager.feed_every is None
    assert not manager.ready()
    assert manager.sent == 0


def test_a_manager_gone_away_is_counted_not_raised(tmp_path: Path) -> None:
    manager = ServiceManager(str(tmp_path / "nobody-listens"))
    assert not manager.watchdog()
    assert manager.failures == 1


def test_the_environment_is_read_and_taken_away_from_the_children(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    manager = ServiceManager.from_environment()
    assert manager.address == "/run/systemd/notify"
    assert manager.feed_every == 15.0  # half of WatchdogSec
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(os.environ)
    manager.close()


@pytest.mark.parametrize(
    ("env", "usec"),
    [
        ({"WATCHDOG_USEC": "2000000"}, 2_000_000),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_the_watchdog_is_ours_only_when_its_pid_is(env: dict[str, str], usec: int | None) -> None:
    manager = ServiceManager.from_environment({"NOTIFY_SOCKET": "/x", **env})
    assert manager.watchdog_usec == usec
    manager.close()


def test_the_loop_feeds_the_watchdog_from_its_own_turns(
    tmp_path: Path, listener: tuple[socket.socket, str]
) -> None:
    """WATCHDOG=1 comes from a timer of the loop: every half WatchdogSec of the loop's clock,
    and only while the loop turns. A turn that took far longer (a stuck loop, here ten
    seconds in one turn) feeds once when it ends, never for the time it was stuck: systemd,
    which waited 2 s, has already killed it by then."""
    sock, path = listener
    parts = build(setup(tmp_path))
    parts.pipeline.manager = ServiceManager(path, watchdog_usec=2_000_000)
    clock = parts.clock
    seen: list[list[str]] = []
    steps = [lambda: clock.advance(TICK_EVERY), lambda: seen.append(received(sock))] * 3
    steps += [lambda: clock.advance(10 * TICK_EVERY), lambda: seen.append(received(sock))]
    Driver(parts).run(steps)
    assert seen == [["WATCHDOG=1"]] * 4
    assert received(sock) == []  # the loop ended: nothing feeds the watchdog any more


def test_a_reload_is_announced_and_ends_ready(
    tmp_path: Path, listener: tuple[socket.socket, str]
) -> None:
    sock, path = listener
    parts = build(setup(tmp_path))
    parts.pipeline.manager = ServiceManager(path)
    driver = Driver(parts)
    fresh = setup(tmp_path, 'SCAN_TRIGGER="2"\n')
    driver.run([lambda: driver.reloads.append(fresh), lambda: None])
    assert received(sock) == ["RELOADING=1", "READY=1"]
