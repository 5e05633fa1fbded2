"""block/hold.py: KERNEL_HOLD's chain and sets as scripts (pure), and the table kept by a
runner (a scripted one here; the real nft in ``tests/e2e/test_kernel_hold.py``)."""

from __future__ import annotations

import ipaddress
import itertools
import json

from hypothesis import given
from hypothesis import strategies as st

from portsentinel.block.hold import (
    CHAIN,
    HOLD4,
    SIZE,
    HoldPlan,
    HoldTable,
    install_script,
    keep_script,
    present_in,
    ranges,
    remove_script,
)
from unit.block.block_fakes import FakeRunner

PLAN = HoldPlan(tcp=(1, 2, 3, 5, 80), udp=(), seconds=9.5, ssh=True)


@given(st.sets(st.integers(0, 65535), max_size=300))
def test_ranges_cover_exactly_the_ports(ports: set[int]) -> None:
    runs = ranges(ports)
    covered = {p for first, last in runs for p in range(first, last + 1)}
    assert covered == ports
    assert all(b[0] > a[1] + 1 for a, b in itertools.pairwise(runs))  # maximal runs


def test_the_install_script_holds_only_new_probes_to_unused_watched_ports() -> None:
    script = install_script(PLAN, present=())
    rules = [
        line
        for line in script.splitlines()
        if line.startswith(f"add rule inet portsentinel {CHAIN} ")
    ]
    body = [rule.split(f" {CHAIN} ", 1)[1] for rule in rules]
    # Established flows and loopback first, then never-block and released sources.
    assert body[:2] == ["ct state established,related return", "iif lo return"]
    assert body.index("ip saddr @keep4 return") < body.index("ip saddr @free4 return")
    assert "ip saddr @hold4 ct state { new, invalid } counter drop" in body
    # A socket on the port makes it no probe; only a probe's flags hold.
    flags = body.index(
        "tcp flags & (syn | ack | rst) != syn tcp flags & (syn | ack | rst) != 0 return"
    )
    sockets = body.index("tcp dport @hold_tcp socket transparent 0 return")
    held = body.index("meta nfproto ipv4 tcp dport @hold_tcp add @hold4 { ip saddr } counter drop")
    assert flags < sockets < held
    assert "add element inet portsentinel hold_tcp { 1-3, 5, 80 }" in script
    assert "hold_udp {" not in script.split("add set inet portsentinel hold_udp")[1].split("\n")[1]
    assert f"timeout 10s; size {SIZE};" in script  # rounded up to whole seconds
    assert "priority filter - 5" in script  # after the ban chains (filter - 10)
    assert "@ssh4" not in script  # the conntrack chain's sets are not there


def test_ssh_peers_are_spared_when_their_sets_exist_and_old_objects_are_replaced() -> None:
    script = install_script(PLAN, present={"ssh4", "ssh6", CHAIN, HOLD4, "keep4"})
    assert "ip saddr @ssh4 return" in script
    assert "ip6 saddr @ssh6 return" in script
    lines = script.splitlines()
    assert lines.index(f"delete chain inet portsentinel {CHAIN}") < lines.index(
        f"delete set inet portsentinel {HOLD4}"
    )
    assert "delete set inet portsentinel ssh4" not in script
    assert not install_script(HoldPlan((1,), (), 10.0, ssh=False), {"ssh4", "ssh6"}).count("@ssh")


def test_remove_and_present() -> None:
    listing = json.dumps({"nftables": [
        {"metainfo": {}}, {"table": {"name": "portsentinel"}},
        {"set": {"name": "ban4"}}, {"set": {"name": HOLD4}}, {"set": {"name": "ssh4"}},
        {"chain": {"name": CHAIN}}, {"chain": {"name": "input"}},
    ]})  # fmt: skip
    present = present_in(listing)
    assert present == {HOLD4, "ssh4", CHAIN}
    assert remove_script(present) == (
        f"delete chain inet portsentinel {CHAIN}\ndelete set inet portsentinel {HOLD4}\n"
    )
    assert remove_script(set()) == ""
    assert present_in("not json") == set()


def test_the_keep_sets_are_the_never_block_networks_merged() -> None:
    nets = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "10.1.0.0/16", "198.18.0.254/32",
                                               "fd00::/8")]  # fmt: skip
    assert keep_script(nets) == (
        "flush set inet portsentinel keep4\n"
        "add element inet portsentinel keep4 { 10.0.0.0/8, 198.18.0.254/32 }\n"
        "flush set inet portsentinel keep6\n"
        "add element inet portsentinel keep6 { fd00::/8 }\n"
    )
    assert "add element" not in keep_script([])


def test_the_table_through_a_runner() -> None:
    runner = FakeRunner()
    listing = json.dumps({"nftables": [{"chain": {"name": CHAIN}}, {"set": {"name": HOLD4}}]})
    runner.on(["nft", "-j", "list", "table"], stdout=listing)
    table = HoldTable(runner, PLAN)
    assert table.install() is None
    assert f"delete chain inet portsentinel {CHAIN}" in (runner.calls[-1].input or "")
    assert table.remove() is None
    assert runner.calls[-1].input == remove_script({CHAIN, HOLD4})
    runner.on(["nft", "-f", "-"], rc=1, stderr="Error: Could not process rule: No such file")
    assert table.keep([]) == "nft exited with 1: Error: Could not process rule: No such file"
    runner.on(["nft", "list", "chain"], rc=1)
    assert table.problem() == f"chain {CHAIN} is missing"
    runner.on(["nft", "list", "chain"], stdout=f"chain {CHAIN} {{ ip saddr @{HOLD4} drop }}")
    assert table.problem() == f"chain {CHAIN} lacks its rules"
    runner.on(["nft", "list", "chain"], stdout=f"@{HOLD4} socket transparent 0")
    assert table.problem() is None
