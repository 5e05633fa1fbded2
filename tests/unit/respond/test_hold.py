"""respond/hold.py: what KERNEL_HOLD holds for a configuration, which decisions release a
source, the loop's releases (a stand-in writer records them; the real netlink path and the
kernel's hold are tests/e2e/test_kernel_hold.py), and the worker's keeper of the chain."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence

import pytest

from portsentinel.block.hold import FREE4, FREE6, HoldPlan
from portsentinel.block.nfnetlink import Element
from portsentinel.config import load_config
from portsentinel.config.setup import Setup
from portsentinel.config.types import Backend, BlockLevel
from portsentinel.errors import BackendError
from portsentinel.host.neverblock import Entry, Source
from portsentinel.model import Action, Decision, Mode, Proto, Reason, ScanKind
from portsentinel.networks import AddressSet
from portsentinel.respond import hold as hold_module
from portsentinel.respond.hold import HoldKeeper, Releases, hold_plan, hold_refusal, releases


def setup(tcp: Mode | None = Mode.ATCP, udp: Mode | None = Mode.AUDP, **kw: object) -> Setup:
    """The embedded defaults with KERNEL_HOLD=1 and ``kw``, in these modes."""
    loaded = load_config(None)
    chosen = {"kernel_hold": True, **kw}
    settings = dataclasses.replace(loaded.settings, **chosen)  # type: ignore[arg-type]
    return Setup(dataclasses.replace(loaded, settings=settings), tcp, udp, "test", AddressSet(), ())


def test_the_plan_holds_what_each_stealth_mode_watches_where_it_blocks() -> None:
    plan = hold_plan(setup())
    assert plan is not None
    assert plan.tcp[0] == 0
    assert plan.tcp[-1] == 1023
    assert 113 not in plan.tcp  # ADVANCED_EXCLUDE_TCP
    assert 137 not in plan.udp
    assert plan.seconds == 10.0
    assert plan.ssh
    stealth = hold_plan(setup(Mode.STCP, Mode.UDP, tcp_ports=frozenset({1, 11, 79})))
    assert stealth == HoldPlan((1, 11, 79), (), 10.0, ssh=True)  # a bound mode holds nothing
    only_udp = hold_plan(setup(block_tcp=BlockLevel.LOG_ONLY))
    assert only_udp is not None
    assert only_udp.tcp == ()
    assert only_udp.udp


@pytest.mark.parametrize(("chosen", "why"), [
    ({"block_backend": Backend.IPTABLES}, "needs BLOCK_BACKEND=nftables (not iptables)"),
    ({"block_tcp": BlockLevel.RUN_CMD_ONLY, "block_udp": BlockLevel.LOG_ONLY},
     "no stealth or advanced mode blocks"),
])  # fmt: skip
def test_settings_it_cannot_act_with_are_said_and_hold_nothing(
    chosen: dict[str, object], why: str
) -> None:
    refused = setup(Mode.ATCP, Mode.AUDP, **chosen)
    assert why in (hold_refusal(refused) or "")
    assert hold_plan(refused) is None
    assert hold_refusal(setup()) is None


def test_off_holds_nothing() -> None:
    assert hold_plan(setup(kernel_hold=False)) is None


def decision(reason: Reason, action: Action = Action.IGNORED, first: bool = False) -> Decision:
    return Decision(1.0, "198.18.0.2", "198.18.0.1", Proto.TCP, 7, ScanKind.SYN, action,
                    reason, first=first)  # fmt: skip


def test_which_decisions_release() -> None:
    for reason in (Reason.BAN_BUDGET, Reason.WEAK_EVIDENCE, Reason.NEVER_BLOCK,
                   Reason.IGNORE_LIST, Reason.OWN_ADDRESS):  # fmt: skip
        assert releases(decision(reason))
    assert not releases(decision(Reason.BELOW_TRIGGER))  # still suspect: the hold ends itself
    assert not releases(decision(Reason.ALREADY_BLOCKED))
    assert not releases(decision(Reason.TRIGGERED, Action.BLOCK, first=True))
    assert releases(decision(Reason.TRIGGERED, Action.ALERT, first=True))
    assert releases(decision(Reason.TRIGGERED, Action.COMMAND, first=True))


class Writer:
    def __init__(self) -> None:
        self.adds: list[tuple[str, list[Element]]] = []
        self.refuse = False
        self.closed = False

    def add(self, set_name: str, elements: Sequence[Element]) -> None:
        if self.refuse:
            raise BackendError("nfnetlink: cannot add to portsentinel free4: No such file")
        self.adds.append((set_name, list(elements)))

    def close(self) -> None:
        self.closed = True


def test_releases_go_once_per_turn_and_once_per_hold_time() -> None:
    now = [100.0]
    writer, lines = Writer(), list[str]()
    rel = Releases(10.0, lines.append, writer, clock=lambda: now[0])  # type: ignore[arg-type]
    rel.add("198.18.0.2")
    rel.add("198.18.0.2")
    rel.add("fd00:5e::2")
    rel.add("not an address")
    assert writer.adds == []  # nothing before the turn ends
    rel.end_turn()
    v4, v6 = ipaddress.ip_address("198.18.0.2").packed, ipaddress.ip_address("fd00:5e::2").packed
    assert writer.adds == [(FREE4, [(v4, 10_000)]), (FREE6, [(v6, 10_000)])]
    rel.add("198.18.0.2")  # released a moment ago: its free element still stands
    rel.end_turn()
    assert len(writer.adds) == 2
    now[0] += 10.5
    rel.add("198.18.0.2")
    rel.end_turn()
    assert writer.adds[-1] == (FREE4, [(v4, 10_000)])
    assert rel.released == 3
    writer.refuse = True
    rel.add("198.18.0.9")
    rel.end_turn()
    rel.add("198.18.0.10")
    rel.end_turn()
    assert rel.failed == 2
    assert lines == ["adminalert: ERROR: cannot release held sources: nfnetlink: cannot add "
                     "to portsentinel free4: No such file"]  # fmt: skip
    rel.close()
    assert writer.closed


def test_what_is_remembered_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hold_module, "REMEMBERED", 4)
    writer = Writer()
    rel = Releases(10.0, lambda _line: None, writer, clock=lambda: 0.0)  # type: ignore[arg-type]
    for i in range(10):
        rel.add(f"198.18.1.{i}")
        rel.end_turn()
    assert len(rel._until) <= 4
    assert rel.released == 10


class Table:
    def __init__(self, plan: HoldPlan) -> None:
        self.plan = plan
        self.calls: list[str] = []
        self.fail: dict[str, str] = {}
        self.missing: str | None = None
        self.closed = False

    def install(self) -> str | None:
        self.calls.append("install")
        return self.fail.get("install")

    def keep(self, networks: object) -> str | None:
        self.calls.append(f"keep {sorted(str(n) for n in networks)}")  # type: ignore[attr-defined]
        return self.fail.get("keep")

    def remove(self) -> str | None:
        self.calls.append("remove")
        return self.fail.get("remove")

    def problem(self) -> str | None:
        return self.missing

    def close(self) -> None:
        self.closed = True


def entries(*nets: str) -> list[Entry]:
    return [(ipaddress.ip_network(n), "gateway", Source.GATEWAY) for n in nets]


def test_the_keeper_installs_keeps_repairs_and_removes() -> None:
    lines: list[str] = []
    table = Table(HoldPlan((1, 2), (3,), 10.0))
    keeper = HoldKeeper(table, lines.append)  # type: ignore[arg-type]
    keeper.start(entries("198.18.0.254/32"))
    assert table.calls == ["install", "keep ['198.18.0.254/32']"]
    assert "holds the source of a probe to 2 TCP and 1 UDP ports" in lines[-1]
    keeper.keep(entries("198.18.0.254/32"))  # unchanged: not written again
    keeper.keep(entries("198.18.0.254/32", "fd00::/8"))
    assert table.calls[-1] == "keep ['198.18.0.254/32', 'fd00::/8']"
    table.missing = "chain hold is missing"
    keeper.repair(entries("fd00::/8"))
    assert table.calls[-2:] == ["install", "keep ['fd00::/8']"]
    assert "chain hold is missing; installing it again" in lines[-2]
    keeper.stop()
    assert table.calls[-1] == "remove"
    assert table.closed
    assert not keeper.installed


def test_a_refused_install_holds_nothing_and_a_refused_keep_is_tried_again() -> None:
    lines: list[str] = []
    table = Table(HoldPlan((1,), (), 10.0))
    table.fail["install"] = "nft exited with 1: Error: Could not process rule: No such file"
    keeper = HoldKeeper(table, lines.append)  # type: ignore[arg-type]
    keeper.start(entries())
    assert "cannot install the hold chain" in lines[-1]
    assert "probes are not held, detection and bans go on" in lines[-1]
    keeper.keep(entries("10.0.0.0/8"))
    keeper.repair(entries())
    keeper.stop()
    assert table.calls == ["install"]  # nothing else while it is not installed
    table = Table(HoldPlan((1,), (), 10.0))
    table.fail["keep"] = "nft exited with 1"
    keeper = HoldKeeper(table, lines.append)  # type: ignore[arg-type]
    keeper.start(entries("10.0.0.0/8"))
    assert "cannot write the never-block set to the kernel" in lines[-2]
    del table.fail["keep"]
    keeper.repair(entries("10.0.0.0/8"))  # the chain is fine; the keep set is written now
    assert table.calls[-1] == "keep ['10.0.0.0/8']"
    table.fail["remove"] = "nft exited with 1"
    keeper.stop()
    assert "cannot remove the hold chain" in lines[-1]
