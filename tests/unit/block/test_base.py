"""BanSpec validation, detail round trips, kernel timeouts, and the shared failure bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from portsentinel.block import plan
from portsentinel.block.base import (
    Backend,
    BackendBase,
    BanSpec,
    CheckResult,
    ban_fields,
    detail_ban,
    kernel_timeout,
    key_of,
)
from portsentinel.block.command import CommandBackend
from portsentinel.block.hostsdeny import HostsDenyBackend
from portsentinel.block.iptables import IptablesBackend
from portsentinel.block.nftables import NftablesBackend
from portsentinel.block.route import RouteBackend
from portsentinel.errors import BackendError
from portsentinel.model import Mode, Proto
from unit.block.block_fakes import FakeRunner


def test_create_normalises_addresses() -> None:
    assert BanSpec.create(" 198.18.0.2 ").address == "198.18.0.2"
    assert BanSpec.create("FD00:5E:0::2").address == "fd00:5e::2"
    assert BanSpec.create("::ffff:198.18.0.2").address == "198.18.0.2"
    v6 = BanSpec.create("fd00:5e::2")
    assert (v6.prefix, v6.version, v6.is_host, v6.key) == (128, 6, True, "fd00:5e::2")


def test_create_prefix_takes_the_network_address() -> None:
    ban = BanSpec.create("fd00:5e::77", prefix=64)
    assert ban.address == "fd00:5e::"
    assert ban.key == "fd00:5e::/64"
    assert not ban.is_host
    assert str(ban.network) == "fd00:5e::/64"


@pytest.mark.parametrize(
    ("address", "prefix"),
    [
        ("1.2.3.4; touch /tmp/pwned", 32),
        ("$(touch x)", 32),
        ("198.18.0.2 ", 32),
        ("FD00::1", 128),
        ("::ffff:198.18.0.2", 128),
        ("198.18.0.2", 24),  # host bits set
        ("198.18.0.2", 33),
        ("", 32),
    ],
)
def test_direct_construction_refuses_anything_not_normalised(address: str, prefix: int) -> None:
    with pytest.raises(ValueError, match=r"bad ban|normalised"):
        BanSpec(address, prefix, 0, Proto.TCP)


def test_create_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="does not appear to be"):
        BanSpec.create("1.2.3.4; touch /tmp/pwned")


@pytest.mark.parametrize("port", [-1, 65536])
def test_port_range(port: int) -> None:
    with pytest.raises(ValueError, match="port"):
        BanSpec("198.18.0.2", 32, port, Proto.TCP)


@pytest.mark.parametrize("timeout", [0.0, -5.0])
def test_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        BanSpec("198.18.0.2", 32, 1, Proto.TCP, timeout=timeout)


@pytest.mark.parametrize("address", ["198.18.0.2", "fd00:5e::2"])
def test_create_of_a_normalised_host_checks_port_and_timeout_still(address: str) -> None:
    # The address is told normalised once; what else the class refuses, it still refuses.
    made = BanSpec.create(address, port=79, proto=Proto.UDP, mode=Mode.AUDP, timeout=60.0)
    width = 128 if ":" in address else 32
    assert made == BanSpec(address, width, 79, Proto.UDP, Mode.AUDP, 60.0)
    with pytest.raises(ValueError, match="port"):
        BanSpec.create(address, port=65536)
    with pytest.raises(ValueError, match="timeout"):
        BanSpec.create(address, timeout=0.0)
    with pytest.raises(AttributeError):  # still frozen
        made.port = 80  # type: ignore[misc]


def test_detail_round_trip_through_json() -> None:
    ban = BanSpec.create("fd00:5e::", prefix=64, port=143, proto=Proto.UDP, mode=Mode.AUDP)
    detail = json.loads(json.dumps(ban_fields(ban, "x")))
    back = detail_ban(detail, "x")
    assert (back.address, back.prefix, back.port, back.proto, back.mode) == (
        "fd00:5e::",
        64,
        143,
        Proto.UDP,
        Mode.AUDP,
    )
    assert detail["key"] == "fd00:5e::/64"


def test_detail_of_another_backend_is_refused() -> None:
    detail = ban_fields(BanSpec.create("198.18.0.2"), "route")
    with pytest.raises(BackendError, match="belongs to 'route'"):
        detail_ban(detail, "nftables")


@pytest.mark.parametrize(
    "change",
    [
        {"address": "1.2.3.4; reboot"},
        {"prefix": "32 -j ACCEPT"},
        {"prefix": True},
        {"port": 1.5},
        {"mode": "evil"},
        {"proto": "icmp"},
    ],
)
def test_tampered_details_are_refused(change: dict[str, object]) -> None:
    detail = ban_fields(BanSpec.create("198.18.0.2", mode=Mode.STCP), "x")
    detail.update(change)
    with pytest.raises(BackendError, match="unusable detail"):
        detail_ban(detail, "x")


def test_detail_missing_fields_is_refused() -> None:
    with pytest.raises(BackendError, match="unusable detail"):
        detail_ban({"backend": "x"}, "x")


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [(None, None), (0.2, 1), (1.0, 1), (3599.1, 3600), (10**9, 5000)],
)
def test_kernel_timeout_rounds_up_and_caps(timeout: float | None, expected: int | None) -> None:
    ban = BanSpec.create("198.18.0.2", timeout=timeout)
    assert kernel_timeout(ban, cap=5000) == expected


def test_key_of_normalises_kernel_text() -> None:
    assert key_of("198.18.0.3/32") == "198.18.0.3"
    assert key_of("fd00:5e:0::3") == "fd00:5e::3"
    assert key_of("10.0.0.0/8") == "10.0.0.0/8"
    with pytest.raises(ValueError, match="host bits set"):
        key_of("10.0.0.1/8")


def test_degraded_is_set_by_a_failure_and_cleared_by_a_success() -> None:
    backend = BackendBase()
    error = backend._fail("broken")
    assert isinstance(error, BackendError)
    assert str(error) == "backend: broken"
    assert backend.degraded == "broken"
    backend._ok()
    assert backend.degraded is None
    backend._fail("not structural", degrade=False)
    assert backend.degraded is None


# --- the contract every backend keeps -------------------------------------------------------
def all_backends(tmp_path: Path) -> list[Backend]:
    runner = FakeRunner()
    runner.on(("nft", "-j", "list"), stdout='{"nftables": []}')  # an empty ruleset
    return [
        NftablesBackend(runner),
        IptablesBackend(runner, use_ipset=True),
        IptablesBackend(runner, use_ipset=False),
        RouteBackend(runner),
        HostsDenyBackend(str(tmp_path / "hosts.deny")),
        CommandBackend(runner, "blocker $TARGET$", "unblocker $TARGET$"),
        CommandBackend(runner, "/sbin/route add -host $TARGET$ reject", name=plan.LEGACY),
    ]


def test_backend_names_are_the_plans_names(tmp_path: Path) -> None:
    names = {backend.name for backend in all_backends(tmp_path)}
    assert names == {*plan.NATIVE, plan.HOSTS_DENY, plan.RUN_CMD, plan.LEGACY}


def test_every_backend_keeps_the_contract(tmp_path: Path) -> None:
    bans = [BanSpec.create("198.18.0.2", port=1, mode=Mode.ATCP), BanSpec.create("fd00:5e::2")]
    for backend in all_backends(tmp_path):
        assert isinstance(backend, Backend)
        backend.start()
        assert backend.degraded is None
        details = backend.block_many(bans)
        assert len(details) == len(bans)
        for detail in details:
            assert isinstance(detail, dict), detail
            assert detail["backend"] == backend.name
            assert json.loads(json.dumps(detail)) == detail
            backend.unblock(detail)
            backend.unblock(detail)
        assert isinstance(backend.check(), CheckResult)
        assert all(isinstance(r, dict) for r in backend.repair(bans))
        backend.stop()
