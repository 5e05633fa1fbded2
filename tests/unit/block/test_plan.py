"""plan_actions: every combination of PortSentry's response rules (reference section f)."""

from __future__ import annotations

import itertools

import pytest

from portsentinel.block.plan import kill_route_replaced, plan_actions
from portsentinel.config.types import Backend, BlockLevel

ROUTE = "/sbin/route add -host $TARGET$ reject"
DENY = "ALL: $TARGET$ : DENY"
CMD = "/usr/local/bin/notify $TARGET$ $PORT$"


# (BLOCK_BACKEND, KILL_ROUTE, KILL_HOSTS_DENY, KILL_RUN_CMD, KILL_RUN_CMD_FIRST, plan)
Case = tuple[str, str, str, str, bool, list[str]]


@pytest.mark.parametrize(
    "case",
    [
        # BLOCK 1, KILL_RUN_CMD after (the default)
        ("legacy", ROUTE, DENY, CMD, False, ["hosts_deny", "legacy", "run_cmd"]),
        # BLOCK 1 with KILL_RUN_CMD_FIRST
        ("legacy", ROUTE, DENY, CMD, True, ["run_cmd", "hosts_deny", "legacy"]),
        # a native backend takes KILL_ROUTE's place, with or without KILL_ROUTE set
        ("nftables", ROUTE, DENY, CMD, False, ["hosts_deny", "nftables", "run_cmd"]),
        ("nftables", "", DENY, CMD, True, ["run_cmd", "hosts_deny", "nftables"]),
        ("iptables", "", "", "", False, ["iptables"]),
        ("route", ROUTE, "", "", False, ["route"]),
        # empty steps are left out
        ("legacy", ROUTE, "", "", False, ["legacy"]),
        ("legacy", "", DENY, "", False, ["hosts_deny"]),
        ("legacy", "", "", CMD, True, ["run_cmd"]),
        ("legacy", "", "", "", False, []),
        ("legacy", "   ", "", "  ", False, []),
        # KILL_ROUTE / KILL_HOSTS_DENY without $TARGET$ are skipped, as 1.2 does
        ("legacy", "/sbin/route add -host x reject", DENY, CMD, False, ["hosts_deny", "run_cmd"]),
        ("nftables", "", "ALL: ALL : DENY", CMD, False, ["nftables", "run_cmd"]),
        # KILL_RUN_CMD needs no macro
        ("nftables", "", "", "/usr/bin/logger scan", False, ["nftables", "run_cmd"]),
    ],
)
def test_block_1(case: Case) -> None:
    backend, route, deny, cmd, first, expected = case
    assert (
        plan_actions(
            1,
            backend=backend,
            kill_route=route,
            kill_hosts_deny=deny,
            kill_run_cmd=cmd,
            kill_run_cmd_first=first,
        )
        == expected
    )


@pytest.mark.parametrize(
    ("backend", "route", "deny", "first"),
    list(itertools.product(["nftables", "legacy"], ["", ROUTE], ["", DENY], [False, True])),
)
def test_block_2_runs_the_command_only(backend: str, route: str, deny: str, first: bool) -> None:
    for cmd, expected in ((CMD, ["run_cmd"]), ("", [])):
        plan = plan_actions(
            2,
            backend=backend,
            kill_route=route,
            kill_hosts_deny=deny,
            kill_run_cmd=cmd,
            kill_run_cmd_first=first,
        )
        assert plan == expected


@pytest.mark.parametrize("backend", ["nftables", "iptables", "route", "legacy"])
def test_block_0_runs_nothing(backend: str) -> None:
    assert (
        plan_actions(0, backend=backend, kill_route=ROUTE, kill_hosts_deny=DENY, kill_run_cmd=CMD)
        == []
    )


def test_invalid_values() -> None:
    with pytest.raises(ValueError, match="not 0, 1 or 2"):
        plan_actions(3, backend="nftables")
    with pytest.raises(ValueError, match="unknown block backend"):
        plan_actions(1, backend="pf")


def test_kill_route_replaced() -> None:
    assert kill_route_replaced("nftables", ROUTE)
    assert not kill_route_replaced("legacy", ROUTE)
    assert not kill_route_replaced("iptables", "")


def test_accepts_the_config_enum() -> None:
    assert plan_actions(BlockLevel.BLOCK, backend=Backend.NFTABLES) == ["nftables"]
    assert plan_actions(BlockLevel.LOG_ONLY, backend=Backend.LEGACY, kill_route=ROUTE) == []
