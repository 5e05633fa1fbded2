"""RESOLVE_HOST lookups: sanitised, cached, beside the caller, from a bounded queue."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from portsentinel.host.resolver import Resolver, sanitise

DEADLINE = 10.0  # for a lookup that is not held back to end (a busy machine is slow)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("scanner.example.org", "scanner.example.org"),
        ("scanner.example.org.", "scanner.example.org"),
        ("host_1.lan", "host_1.lan"),
        ("evil.example\nattackalert: Host 10.0.0.1 has been blocked", None),
        ("with space.example", None),
        ("\x1b[31mred.example", None),
        ("a" * 64 + ".example", None),  # a label longer than 63
        ("", None),
        ("$(reboot).example", None),
    ],
)
def test_sanitise(raw: str, clean: str | None) -> None:
    assert sanitise(raw) == clean


class Held:
    """A lookup that waits until released (a server that does not answer), recording calls."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[str] = []
        self.started = threading.Semaphore(0)

    def __call__(self, address: str) -> str:
        self.calls.append(address)
        self.started.release()
        self.release.wait(DEADLINE)
        return f"h{address.rsplit('.', 1)[1]}.example"

    def wait_started(self) -> None:
        assert self.started.acquire(timeout=DEADLINE), "no lookup started"


@pytest.fixture
def held() -> Iterator[Held]:
    lookup = Held()
    yield lookup
    lookup.release.set()  # no thread left waiting


def test_lookup_caches_and_sanitises() -> None:
    calls: list[str] = []

    def lookup(address: str) -> str:
        calls.append(address)
        return "scanner.example." if address == "198.18.0.2" else "bad name\n"

    resolver = Resolver(lookup=lookup)
    assert resolver.cached("198.18.0.2") is None
    first = resolver.lookup("198.18.0.2")
    assert first is not None
    assert first.result(DEADLINE) == "scanner.example"
    again = resolver.lookup("198.18.0.2")
    assert again is not None
    assert again.done()  # from the cache, at once
    assert again.result() == "scanner.example"
    assert resolver.cached("198.18.0.2") == "scanner.example"
    bad = resolver.lookup("198.18.0.3")
    assert bad is not None
    assert bad.result(DEADLINE) is None
    assert calls == ["198.18.0.2", "198.18.0.3"]
    resolver.close()


def test_a_lookup_under_way_is_shared_and_the_caller_never_waits(held: Held) -> None:
    resolver = Resolver(lookup=held, workers=1)
    first = resolver.lookup("198.18.0.9")
    held.wait_started()
    second = resolver.lookup("198.18.0.9")
    assert first is not None
    assert second is first
    assert not first.done()  # returned at once, the lookup goes on
    held.release.set()
    assert first.result(DEADLINE) == "h9.example"
    assert held.calls == ["198.18.0.9"]
    resolver.close()


def test_failures_give_no_name_and_expire() -> None:
    now = [0.0]

    def failing(address: str) -> str:
        raise OSError("no PTR")

    resolver = Resolver(lookup=failing, ttl=10, clock=lambda: now[0])
    future = resolver.lookup("198.18.0.4")
    assert future is not None
    assert future.result(DEADLINE) is None
    now[0] = 11.0
    assert resolver.cached("198.18.0.4") is None
    resolver.close()


def test_an_unexpected_error_is_no_name_and_the_thread_goes_on() -> None:
    def broken(address: str) -> str:
        if address.endswith(".1"):
            raise RuntimeError("a resolver library bug")
        return "fine.example"

    resolver = Resolver(lookup=broken, workers=1)
    first, second = resolver.lookup("198.18.0.1"), resolver.lookup("198.18.0.2")
    assert first is not None
    assert second is not None
    assert first.result(DEADLINE) is None
    assert second.result(DEADLINE) == "fine.example"
    resolver.close()


def test_cache_is_bounded() -> None:
    resolver = Resolver(lookup=lambda a: f"h{a.split('.')[-1]}.example", max_entries=3)
    for i in range(10):
        future = resolver.lookup(f"198.18.0.{i}")
        assert future is not None
        future.result(DEADLINE)
    assert [resolver.cached(f"198.18.0.{i}") for i in range(10)].count(None) == 7
    resolver.close()


def test_the_queue_is_bounded_and_refusals_are_counted(held: Held) -> None:
    resolver = Resolver(lookup=held, workers=1, max_waiting=2)
    running = resolver.lookup("198.18.0.1")
    held.wait_started()
    waiting = [resolver.lookup("198.18.0.2"), resolver.lookup("198.18.0.3")]
    assert running is not None
    assert None not in waiting
    assert resolver.lookup("198.18.0.4") is None  # two wait already: not looked up
    assert resolver.lookup("198.18.0.2") is waiting[0]  # one that waits is still shared
    assert resolver.refused == 1
    held.release.set()
    assert [f.result(DEADLINE) for f in waiting if f is not None] == ["h2.example", "h3.example"]
    assert held.calls == ["198.18.0.1", "198.18.0.2", "198.18.0.3"]
    resolver.close()


def test_a_cancelled_lookup_leaves_the_queue_and_is_never_made(held: Held) -> None:
    resolver = Resolver(lookup=held, workers=1, max_waiting=1)
    running = resolver.lookup("198.18.0.1")
    held.wait_started()
    waiting = resolver.lookup("198.18.0.2")
    assert running is not None
    assert waiting is not None
    assert not running.cancel()  # under way: it ends on its own
    assert waiting.cancel()
    later = resolver.lookup("198.18.0.3")  # the place is free again
    assert later is not None
    held.release.set()
    assert later.result(DEADLINE) == "h3.example"
    assert held.calls == ["198.18.0.1", "198.18.0.3"]
    resolver.close()


def test_close_cancels_what_waits_and_refuses_more(held: Held) -> None:
    resolver = Resolver(lookup=held, workers=1)
    running = resolver.lookup("198.18.0.1")
    held.wait_started()
    waiting = resolver.lookup("198.18.0.2")
    assert waiting is not None
    resolver.close()  # returns at once, with a lookup still under way
    assert waiting.cancelled()
    assert resolver.lookup("198.18.0.5") is None
    assert all(t.daemon for t in resolver._threads)  # a stuck lookup holds up no exit
    held.release.set()
    assert running is not None
    assert running.result(DEADLINE) == "h1.example"
