"""PortSentry's leftovers without a kernel: the addresses it recorded, the shape of its
KILL_ROUTE, and the commands that find and remove what it made, run by a scripted runner (the
real route and iptables in a namespace: tests/e2e/test_migrate_legacy.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from portsentinel.block.runner import RunResult
from portsentinel.system.leftovers import Finder, Leftover, kind_of, recorded_addresses


class Scripted:
    """Answers each argv from a table (exit status, stdout); records what ran."""

    def __init__(self, answers: dict[tuple[str, ...], list[tuple[int, str]]]) -> None:
        self.answers = answers
        self.ran: list[tuple[str, ...]] = []

    def run(
        self, argv: Sequence[str], *, input: str | None = None, timeout: float | None = None
    ) -> RunResult:
        key = tuple(argv)
        self.ran.append(key)
        queue = self.answers.get(key, [(1, "")])
        code, out = queue.pop(0) if len(queue) > 1 else queue[0]
        return RunResult(key, code, out, "" if code == 0 else "no such thing", 0.0)


def test_recorded_addresses_come_from_history_and_blocked_lines() -> None:
    history = (
        "1403884279 - 06/27/2014 17:51:19 Host: 198.18.0.5/198.18.0.5 Port: 1 TCP Blocked\n"
        "1403884280 - 06/27/2014 17:51:20 Host: 198.18.0.5/198.18.0.5 Port: 2 TCP Blocked\n"
        "garbage Host: 999.1.1.1/x\n"
    )
    blocked = "1403884281 - 06/27/2014 17:51:21 Host: name.example/198.18.0.6 Port: 3 TCP Blocked\n"
    assert recorded_addresses([history, "Host: 198.18.0.7/198.18.0.7 Port: 1", blocked]) == [
        "198.18.0.5",
        "198.18.0.7",
        "198.18.0.6",  # after the name RESOLVE_HOST put in front of it
    ]


@pytest.mark.parametrize(
    ("command", "kind"),
    [
        ("/sbin/route add -host $TARGET$ reject", "route"),
        ("/sbin/route add -host $TARGET$ gw 333.444.555.666", "route"),
        ("/sbin/iptables -I INPUT -s $TARGET$ -j DROP", "iptables"),
        ("ip6tables -A INPUT -s $TARGET$ -j DROP", "iptables"),
        ("/sbin/ipchains -I input -s $TARGET$ -j DENY -l", ""),
        ("/sbin/route add -host 1.2.3.4 reject", ""),  # no $TARGET$: PortSentry skipped it
        ('/bin/sh -c "unbalanced', ""),
        ("", ""),
    ],
)
def test_kind_of(command: str, kind: str) -> None:
    assert kind_of(command) == kind


def test_a_route_is_found_and_removed_as_the_kernel_shows_it() -> None:
    shown = json.dumps([{"type": "unreachable", "dst": "198.18.0.5", "flags": []}])
    via = json.dumps([{"dst": "198.18.0.6", "gateway": "198.18.0.1", "dev": "veth0"}])
    runner = Scripted(
        {
            ("ip", "-4", "-j", "route", "show", "exact", "198.18.0.5/32"): [(0, shown)],
            ("ip", "-4", "-j", "route", "show", "exact", "198.18.0.6/32"): [(0, via)],
            ("ip", "-4", "route", "del", "unreachable", "198.18.0.5"): [(0, "")],
        }
    )
    finder = Finder("/sbin/route add -host $TARGET$ reject", runner)
    found = finder.find(["198.18.0.5", "198.18.0.6", "198.18.0.7"])
    assert [f.what for f in found] == [
        "route unreachable 198.18.0.5",
        "route unicast 198.18.0.6 via 198.18.0.1 dev veth0",
    ]
    assert finder.clean(found) == [
        "removed route unreachable 198.18.0.5",
        "could not remove route unicast 198.18.0.6 via 198.18.0.1 dev veth0: exit 1; "
        "stderr: no such thing",
    ]


def test_a_rule_is_checked_and_removed_with_its_copies() -> None:
    delete = ("iptables", "-D", "INPUT", "-s", "198.18.0.5", "-j", "DROP")
    check = ("iptables", "-C", "INPUT", "-s", "198.18.0.5", "-j", "DROP")
    runner = Scripted({check: [(0, ""), (0, ""), (1, "")], delete: [(0, "")]})
    finder = Finder("/sbin/iptables -I INPUT 1 -s $TARGET$ -j DROP", runner)
    found = finder.find(["198.18.0.5"])
    assert found == [Leftover("198.18.0.5", "rule -I INPUT 1 -s 198.18.0.5 -j DROP", delete)]
    assert finder.clean(found) == ["removed rule -I INPUT 1 -s 198.18.0.5 -j DROP (2 copies)"]
    assert runner.ran.count(delete) == 2


def test_an_unknown_command_finds_nothing_and_runs_nothing() -> None:
    runner = Scripted({})
    assert Finder("/sbin/ipfwadm -I -i deny -S $TARGET$ -o", runner).find(["198.18.0.5"]) == []
    assert runner.ran == []
