"""route backend without root: commands and reading ``ip -j route``."""

from __future__ import annotations

import pytest

from portsentinel.block.base import BanSpec
from portsentinel.block.route import RouteBackend, parse_routes
from portsentinel.errors import BackendError
from unit.block.block_fakes import FakeRunner


def test_block_replaces_and_unblock_deletes() -> None:
    runner = FakeRunner()
    backend = RouteBackend(runner)
    detail = backend.block(BanSpec.create("198.18.0.3"))
    backend.block(BanSpec.create("fd00:5e::", prefix=64))
    backend.unblock(detail)
    assert runner.argvs() == [
        ("ip", "-4", "route", "replace", "blackhole", "198.18.0.3/32", "proto", "245"),
        ("ip", "-6", "route", "replace", "blackhole", "fd00:5e::/64", "proto", "245"),
        ("ip", "-4", "route", "del", "blackhole", "198.18.0.3/32", "proto", "245"),
    ]
    assert detail["route"] == "blackhole 198.18.0.3/32 proto 245"


def test_unblock_of_a_route_already_gone_succeeds() -> None:
    runner = FakeRunner()
    runner.on(("ip", "-4", "route", "del"), rc=2, stderr="RTNETLINK answers: No such process")
    runner.on(("ip", "-j", "-4", "route", "show", "exact"), stdout="[]")
    backend = RouteBackend(runner)
    backend.unblock(backend.block(BanSpec.create("198.18.0.3")))
    assert runner.argvs()[-1] == (
        "ip", "-j", "-4", "route", "show", "exact", "198.18.0.3/32",
        "type", "blackhole", "proto", "245",
    )  # fmt: skip


def test_unblock_failure_when_the_route_is_still_there() -> None:
    runner = FakeRunner()
    runner.on(
        ("ip", "-4", "route", "del"), rc=2, stderr="RTNETLINK answers: Operation not permitted"
    )
    runner.on(
        ("ip", "-j", "-4", "route", "show"), stdout='[{"type":"blackhole","dst":"198.18.0.3"}]'
    )
    backend = RouteBackend(runner)
    detail = backend.block(BanSpec.create("198.18.0.3"))
    with pytest.raises(BackendError, match="Operation not permitted"):
        backend.unblock(detail)


def test_block_failure_degrades() -> None:
    runner = FakeRunner()
    runner.on(
        ("ip", "-4", "route", "replace"), rc=2, stderr="RTNETLINK answers: Operation not permitted"
    )
    backend = RouteBackend(runner)
    with pytest.raises(BackendError):
        backend.block(BanSpec.create("198.18.0.3"))
    assert backend.degraded is not None
    backend.block(BanSpec.create("fd00:5e::3"))
    assert backend.degraded is None


def test_check_lists_our_blackholes() -> None:
    runner = FakeRunner()
    runner.on(
        ("ip", "-j", "-4", "route", "show"),
        stdout='[{"type":"blackhole","dst":"10.0.0.0/8","flags":[]},'
        '{"type":"blackhole","dst":"198.18.0.3","flags":[]}]',
    )
    runner.on(
        ("ip", "-j", "-6", "route", "show"),
        stdout='[{"type":"blackhole","dst":"fd00:5e::3","dev":"lo","protocol":"245"}]',
    )
    result = RouteBackend(runner).check()
    assert result.intact
    assert dict(result.present) == {"10.0.0.0/8": None, "198.18.0.3": None, "fd00:5e::3": None}


def test_parse_routes_skips_what_is_not_a_blackhole() -> None:
    text = (
        '[{"type":"unicast","dst":"198.18.0.0/24"},{"dst":"default"},'
        '{"type":"blackhole","dst":"198.18.0.9"}, 5]'
    )
    assert parse_routes(text) == ["198.18.0.9"]
    assert parse_routes("not json") == []
    assert parse_routes("") == []
