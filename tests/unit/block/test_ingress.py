"""``block.ingress`` (the netdev copies of the ban sets) and the nftables backend keeping them,
against a scripted runner; the live kernel is in ``tests/e2e/test_ingress.py``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from portsentinel.block import ingress
from portsentinel.block.base import BanSpec
from portsentinel.block.nft_state import element_key
from portsentinel.block.nftables import NftablesBackend
from unit.block.block_fakes import FakeRunner

# ``nft -j list table netdev portsentinel`` (nft 1.0.6) with a chain on eth0 and two bans.
LISTED = json.dumps({"nftables": [
    {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
    {"table": {"family": "netdev", "name": "portsentinel", "handle": 1}},
    {"set": {"family": "netdev", "name": "ban4", "table": "portsentinel", "type": "ipv4_addr",
             "handle": 2, "flags": ["timeout"], "stmt": [{"counter": None}],
             "elem": [{"elem": {"val": "198.18.0.2", "timeout": 100, "expires": 99,
                                "counter": {"packets": 7, "bytes": 420}}}]}},
    {"set": {"family": "netdev", "name": "ban6", "table": "portsentinel", "type": "ipv6_addr",
             "handle": 3, "flags": ["timeout"], "stmt": [{"counter": None}],
             "elem": [{"elem": {"val": "fd00::1", "counter": {"packets": 1, "bytes": 80}}}]}},
    {"chain": {"family": "netdev", "table": "portsentinel", "name": "dev_eth0", "handle": 4,
               "type": "filter", "hook": "ingress", "prio": -500, "policy": "accept"}},
    {"rule": {"family": "netdev", "table": "portsentinel", "chain": "dev_eth0", "handle": 5,
              "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip",
                        "field": "saddr"}}, "right": "@ban4"}}, {"drop": None}]}},
    {"rule": {"family": "netdev", "table": "portsentinel", "chain": "dev_eth0", "handle": 6,
              "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6",
                        "field": "saddr"}}, "right": "@ban6"}}, {"drop": None}]}},
]})  # fmt: skip
# The fleet's copies (issue 12): two sets and their drops in dev_eth0.
FLEET_ITEMS = [
    {"set": {"family": "netdev", "name": "fleet4", "table": "portsentinel", "type": "ipv4_addr",
             "handle": 13, "flags": ["timeout"]}},
    {"set": {"family": "netdev", "name": "fleet6", "table": "portsentinel", "type": "ipv6_addr",
             "handle": 14, "flags": ["timeout"]}},
    {"rule": {"family": "netdev", "table": "portsentinel", "chain": "dev_eth0", "handle": 15,
              "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip",
                        "field": "saddr"}}, "right": "@fleet4"}}, {"drop": None}]}},
    {"rule": {"family": "netdev", "table": "portsentinel", "chain": "dev_eth0", "handle": 16,
              "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6",
                        "field": "saddr"}}, "right": "@fleet6"}}, {"drop": None}]}},
]  # fmt: skip
LISTED = json.dumps({"nftables": json.loads(LISTED)["nftables"] + FLEET_ITEMS})
# What the quiet sources add to that listing (nft 1.0.6, ``block/quiet.py``): two sets, one
# of them with an element, and four marking rules in dev_eth0.
_MARK = {"mangle": {"key": {"meta": {"key": "mark"}}, "value": 1347636817}}
_UNMARKED = {"match": {"op": "==", "left": {"meta": {"key": "mark"}}, "right": 0}}
_PROBE = {"match": {"op": "!", "left": {"payload": {"protocol": "tcp", "field": "flags"}},
                    "right": ["rst", "ack"]}}  # fmt: skip
_UDP = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}}


def _quiet_rule(handle: int, shape: Mapping[str, object], proto: str, name: str) -> dict[str, Any]:
    source = {"match": {"op": "==", "left": {"concat": [
        {"payload": {"protocol": proto, "field": "saddr"}}, {"meta": {"key": "l4proto"}}]},
        "right": f"@{name}"}}  # fmt: skip
    return {"rule": {"family": "netdev", "table": "portsentinel", "chain": "dev_eth0",
                     "handle": handle, "expr": [_UNMARKED, shape, source, _MARK]}}  # fmt: skip


QUIET_ITEMS = [
    {"set": {"family": "netdev", "name": "quiet4", "table": "portsentinel",
             "type": ["ipv4_addr", "inet_proto"], "handle": 7, "size": 16384,
             "flags": ["timeout"], "stmt": [{"counter": None}],
             "elem": [{"elem": {"val": {"concat": ["198.18.0.3", "tcp"]}, "timeout": 10,
                                "expires": 9, "counter": {"packets": 41, "bytes": 2460}}}]}},
    {"set": {"family": "netdev", "name": "quiet6", "table": "portsentinel",
             "type": ["ipv6_addr", "inet_proto"], "handle": 8, "size": 16384,
             "flags": ["timeout"], "stmt": [{"counter": None}]}},
    _quiet_rule(9, _PROBE, "ip", "quiet4"),
    _quiet_rule(10, _UDP, "ip", "quiet4"),
    _quiet_rule(11, _PROBE, "ip6", "quiet6"),
    _quiet_rule(12, _UDP, "ip6", "quiet6"),
]  # fmt: skip
LISTED_NOW = json.dumps({"nftables": json.loads(LISTED)["nftables"] + QUIET_ITEMS})
INET_EMPTY = json.dumps({"nftables": [{"table": {"family": "inet", "name": "portsentinel"}}]})
APPLY = ("nft", "-f", "-")
LIST_INET = ("nft", "-j", "list", "table", "inet", "portsentinel")
LIST_NETDEV = ("nft", "-j", "list", "table", "netdev", "portsentinel")
NO_TABLES = '{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]}'


@pytest.mark.parametrize(
    ("device", "chain"),
    [("eth0", "dev_eth0"), ("br-lan.10", "dev_br-lan.10"), ("wg@x", "devx_77674078")],
)
def test_chain_names_round_trip(device: str, chain: str) -> None:
    assert ingress.chain_name(device) == chain
    assert ingress.device_of(chain) == device


def test_other_chains_are_not_ours() -> None:
    assert ingress.device_of("input") is None
    assert ingress.device_of("devx_zz") is None
    assert ingress.device_of("dev_") is None


def test_structure_on_nothing_makes_counted_sets_and_a_chain_per_interface_but_lo() -> None:
    script = ingress.structure_script(ingress.IngressState(), False, ["lo", "eth0", "eth1"])
    lines = script.splitlines()
    assert lines[0] == "add table netdev portsentinel"
    assert "add set netdev portsentinel ban4 { type ipv4_addr; flags timeout; counter; }" in lines
    assert "add set netdev portsentinel ban6 { type ipv6_addr; flags timeout; counter; }" in lines
    assert (
        'add chain netdev portsentinel dev_eth1 { type filter hook ingress device "eth1" '
        "priority -500; policy accept; }" in lines
    )
    assert "add rule netdev portsentinel dev_eth0 ip saddr @ban4 drop" in lines
    assert "add rule netdev portsentinel dev_eth0 ip6 saddr @ban6 drop" in lines
    assert "flush chain netdev portsentinel dev_eth0" in lines  # running it twice: one rule
    assert not any("dev_lo" in line for line in lines)
    assert not any(line.startswith("delete") for line in lines)


def test_structure_drops_stale_chains_and_recreates_sets_that_do_not_fit() -> None:
    state = ingress.parse(LISTED)
    script = ingress.structure_script(state, True, ["eth1"])  # prefix bans: interval needed
    lines = script.splitlines()
    assert "delete chain netdev portsentinel dev_eth0" in lines
    assert lines.index("flush chain netdev portsentinel dev_eth0") < lines.index(
        "delete set netdev portsentinel ban4"
    )
    assert (
        "add set netdev portsentinel ban4 { type ipv4_addr; flags interval, timeout; counter; }"
        in lines
    )


def test_follow_adds_and_removes_only_the_difference() -> None:
    have = {"dev_eth0": "eth0", "dev_old": "old"}
    script = ingress.follow_script(have, ["lo", "eth0", "veth9"])
    lines = script.splitlines()
    assert lines[0] == "delete chain netdev portsentinel dev_old"
    assert any('device "veth9"' in line for line in lines)
    assert not any("dev_eth0" in line for line in lines)
    assert ingress.follow_script({"dev_eth0": "eth0"}, ["lo", "eth0"]) == ""


def test_parse_and_problems_of_a_real_listing() -> None:
    state = ingress.parse(LISTED_NOW)
    assert state.exists
    assert set(state.sets) == {"ban4", "ban6", "fleet4", "fleet6", "quiet4", "quiet6"}
    assert state.devices() == {"dev_eth0": "eth0"}
    assert ingress.problems(state, False, ["lo", "eth0"]) == []
    assert ingress.problems(state, False, ["eth0", "eth2"]) == [
        "ingress chain dev_eth2 for eth2 is missing"
    ]
    assert ingress.problems(state, True, ["eth0"]) == [
        "ingress set ban4 lacks the flags interval",
        "ingress set ban6 lacks the flags interval",
    ]
    assert ingress.problems(ingress.IngressState(), False, []) == [
        "table netdev portsentinel is missing"
    ]
    with pytest.raises(ValueError, match="not nft JSON"):
        ingress.parse("Error: nope")


def test_a_table_from_before_quiet_sources_lacks_their_sets_and_rules() -> None:
    state = ingress.parse(LISTED)
    assert ingress.problems(state, False, ["eth0"]) == [
        "ingress set quiet4 is missing",
        "ingress set quiet6 is missing",
        "ingress chain dev_eth0 lacks the rules that mark quiet sources",
    ]
    lines = ingress.structure_script(state, False, ["eth0"]).splitlines()
    assert not any(line.startswith("delete") for line in lines)  # the bans' sets are kept
    assert (
        "add set netdev portsentinel quiet4 { type ipv4_addr . inet_proto; flags timeout; "
        "counter; size 16384; }" in lines
    )
    assert sum("meta mark set 0x50534e51" in line for line in lines) == 4


def test_a_table_from_before_the_fleet_copies_gets_them() -> None:
    raw = [
        item for item in json.loads(LISTED_NOW)["nftables"]
        if "fleet" not in json.dumps(item)
    ]  # fmt: skip
    state = ingress.parse(json.dumps({"nftables": raw}))
    assert ingress.problems(state, False, ["eth0"]) == [
        "ingress set fleet4 is missing",
        "ingress set fleet6 is missing",
        "ingress chain dev_eth0 has no 'ip saddr @fleet4 drop' rule",
        "ingress chain dev_eth0 has no 'ip6 saddr @fleet6 drop' rule",
    ]
    lines = ingress.structure_script(state, False, ["eth0"]).splitlines()
    assert not any(line.startswith("delete") for line in lines)
    assert "add set netdev portsentinel fleet6 { type ipv6_addr; flags timeout; }" in lines
    assert "add rule netdev portsentinel dev_eth0 ip saddr @fleet4 drop" in lines
    bad = [dict(i) for i in json.loads(LISTED_NOW)["nftables"]]
    for item in bad:
        if item.get("set", {}).get("name") == "fleet4":
            item["set"] = {**item["set"], "flags": []}
    problems = ingress.problems(ingress.parse(json.dumps({"nftables": bad})), False, ["eth0"])
    assert problems == ["ingress set fleet4 is not a ipv4_addr set with timeouts"]


def test_a_quiet_set_of_another_type_is_recreated() -> None:
    raw = json.loads(LISTED_NOW)
    raw["nftables"][-6]["set"]["type"] = "ipv4_addr"
    state = ingress.parse(json.dumps(raw))
    assert ingress.problems(state, False, ["eth0"]) == ["quiet set quiet4 has type 'ipv4_addr'"]
    lines = ingress.structure_script(state, False, ["eth0"]).splitlines()
    assert "delete set netdev portsentinel quiet4" in lines
    assert "delete set netdev portsentinel ban4" not in lines


def test_a_set_without_counters_or_a_rule_that_accepts_is_a_problem() -> None:
    raw = json.loads(LISTED_NOW)
    raw["nftables"][2]["set"]["stmt"] = []
    raw["nftables"][5]["rule"]["expr"][1] = {"accept": None}
    found = ingress.problems(ingress.parse(json.dumps(raw)), False, ["eth0"])
    assert found == [
        "ingress set ban4 does not count its elements",
        "ingress chain dev_eth0 has no 'ip saddr @ban4 drop' rule",
    ]


def test_element_counts_and_keys() -> None:
    state = ingress.parse(LISTED)
    assert ingress.element_counts(state, element_key) == {
        "198.18.0.2": (7, 420),
        "fd00::1": (1, 80),
    }
    assert ingress.element_keys(state) == {"198.18.0.2", "fd00::1"}


def test_drop_totals_only_grow() -> None:
    totals = ingress.DropTotals()
    totals.update({"a": (5, 500), "b": (1, 60)})
    totals.update({"a": (8, 800)})  # b's ban ended: its count stays in the total
    assert (totals.packets, totals.bytes) == (9, 860)
    totals.update({"a": (2, 120)})  # a was renewed: its element counts from zero again
    assert (totals.packets, totals.bytes) == (11, 980)


# --- the backend keeping the copies ------------------------------------------------------------
def backend_on(runner: FakeRunner, devices: list[str]) -> NftablesBackend:
    runner.on(LIST_INET, stdout=INET_EMPTY)
    runner.on(LIST_NETDEV, rc=1, stderr="Error: No such file or directory")
    runner.on(("nft", "-j", "list", "tables", "netdev"), stdout=NO_TABLES)
    return NftablesBackend(runner, ingress=True, devices=lambda: devices, in_process=False)


def test_start_makes_the_copies_and_every_ban_writes_both_tables() -> None:
    runner, devices = FakeRunner(), ["lo", "eth0"]
    backend = backend_on(runner, devices)
    backend.start()
    scripts = [c.input or "" for c in runner.calls if c.argv == APPLY]
    assert 'hook ingress device "eth0"' in scripts[-1]
    assert backend.ingress_problem is None
    backend.block(BanSpec.create("198.18.0.7", timeout=60))
    last = [c.input or "" for c in runner.calls if c.argv == APPLY][-1]
    assert last.splitlines() == [
        "add element inet portsentinel ban4 { 198.18.0.7 timeout 60s }",
        "add element netdev portsentinel ban4 { 198.18.0.7 timeout 60s }",
    ]
    detail = backend.block(BanSpec.create("fd00::7"))
    backend.unblock(detail)
    last = [c.input or "" for c in runner.calls if c.argv == APPLY][-1]
    assert "delete element netdev portsentinel ban6 { fd00::7 }" in last
    assert "delete element inet portsentinel ban6 { fd00::7 }" in last


def test_follow_hooks_a_new_interface_once() -> None:
    runner, devices = FakeRunner(), ["lo", "eth0"]
    backend = backend_on(runner, devices)
    backend.start()
    count = len(runner.calls)
    backend.follow()
    assert len(runner.calls) == count  # nothing changed: no command
    devices.append("veth7")
    backend.follow()
    script = runner.calls[-1].input or ""
    assert 'device "veth7"' in script
    assert "eth0" not in script
    devices.remove("eth0")
    backend.follow()
    assert runner.calls[-1].input == "delete chain netdev portsentinel dev_eth0\n"


def test_a_kernel_without_netdev_keeps_the_input_hook_bans() -> None:
    runner = FakeRunner()
    backend = backend_on(runner, ["eth0"])
    runner.on(lambda argv, text: argv == APPLY and "netdev" in (text or ""), rc=1,
              stderr="Error: Could not process rule: Operation not supported")  # fmt: skip
    backend.start()
    assert backend.ingress_problem is not None
    assert "not supported" in backend.ingress_problem
    assert backend.degraded is None
    backend.block(BanSpec.create("198.18.0.7"))
    assert "netdev" not in (runner.calls[-1].input or "")


def test_check_finds_bans_missing_from_the_copies_and_reads_the_counters() -> None:
    runner = FakeRunner()
    backend = backend_on(runner, ["eth0"])
    backend.start()
    inet = json.loads(LISTED.replace('"netdev"', '"inet"'))
    runner.on(LIST_INET, stdout=json.dumps(inet))  # not a valid inet table: problems anyway
    runner.on(LIST_NETDEV, stdout=LISTED)
    result = backend.check()
    assert "198.18.0.2" in result.present
    assert backend.ingress_counts() == {"198.18.0.2": (7, 420), "fd00::1": (1, 80)}
    assert (backend.drops.packets, backend.drops.bytes) == (8, 500)
    copies = json.loads(LISTED)
    copies["nftables"][2]["set"]["elem"] = []
    runner.on(LIST_NETDEV, stdout=json.dumps(copies))
    assert "1 bans are missing from the ingress sets" in backend.check().problems
