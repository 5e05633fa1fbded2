"""RESOLVE_HOST lookups: sanitised, cached, bounded in time."""

from __future__ import annotations

import threading

import pytest

from portsentinel.host.resolver import Resolver, sanitise


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


def test_resolve_caches_and_sanitises() -> None:
    calls: list[str] = []

    def lookup(address: str) -> str:
        calls.append(address)
        return "scanner.example." if address == "198.18.0.2" else "bad name\n"

    resolver = Resolver(lookup=lookup)
    assert resolver.cached("198.18.0.2") is None
    assert resolver.resolve("198.18.0.2") == "scanner.example"
    assert resolver.resolve("198.18.0.2") == "scanner.example"
    assert resolver.cached("198.18.0.2") == "scanner.example"
    assert resolver.resolve("198.18.0.3") is None
    assert calls == ["198.18.0.2", "198.18.0.3"]
    resolver.close()


def test_a_slow_lookup_times_out_and_fills_the_cache_later() -> None:
    release = threading.Event()

    def slow(address: str) -> str:
        release.wait(10)
        return "late.example"

    resolver = Resolver(lookup=slow, timeout=0.05)
    assert resolver.resolve("198.18.0.9") is None  # did not wait for the answer
    release.set()
    assert resolver.resolve("198.18.0.9") == "late.example"  # the same lookup, now done
    resolver.close()


def test_failures_and_expiry() -> None:
    now = [0.0]

    def failing(address: str) -> str:
        raise OSError("no PTR")

    resolver = Resolver(lookup=failing, ttl=10, clock=lambda: now[0])
    assert resolver.resolve("198.18.0.4") is None
    now[0] = 11.0
    assert resolver.cached("198.18.0.4") is None
    resolver.close()


def test_cache_is_bounded() -> None:
    resolver = Resolver(lookup=lambda a: f"h{a.split('.')[-1]}.example", max_entries=3)
    for i in range(10):
        resolver.resolve(f"198.18.0.{i}")
    assert [resolver.cached(f"198.18.0.{i}") for i in range(10)].count(None) == 7
    resolver.close()
