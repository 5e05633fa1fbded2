"""``block.quiet``: the quiet sets, their marking rules and the mark's reset (pure), checked
against nft 1.0.6's own listing of them; the live kernel is in ``tests/e2e/test_quiet.py``."""

from __future__ import annotations

import json

from portsentinel.block import quiet
from portsentinel.block.nft_state import parse_table
from portsentinel.model import QUIET_MARK
from unit.block.test_ingress import QUIET_ITEMS

# ``nft -j list chain inet portsentinel quiet`` after ``reset_lines`` (nft 1.0.6).
RESET_LISTED = json.dumps({"nftables": [
    {"table": {"family": "inet", "name": "portsentinel", "handle": 1}},
    {"chain": {"family": "inet", "table": "portsentinel", "name": "quiet", "handle": 1,
               "type": "filter", "hook": "prerouting", "prio": -1000, "policy": "accept"}},
    {"rule": {"family": "inet", "table": "portsentinel", "chain": "quiet", "handle": 2,
              "expr": [{"match": {"op": "==", "left": {"meta": {"key": "mark"}},
                                  "right": 1347636817}},
                       {"mangle": {"key": {"meta": {"key": "mark"}}, "value": 0}}]}},
]})  # fmt: skip


def test_the_mark_is_one_value_the_capture_filter_knows() -> None:
    assert quiet.MARK == QUIET_MARK == 0x50534E51


def test_sets_are_counted_bounded_and_keyed_by_source_and_protocol() -> None:
    assert quiet.set_lines("netdev portsentinel") == [
        "add set netdev portsentinel quiet4 { type ipv4_addr . inet_proto; flags timeout; "
        "counter; size 16384; }",
        "add set netdev portsentinel quiet6 { type ipv6_addr . inet_proto; flags timeout; "
        "counter; size 16384; }",
    ]


def test_only_unmarked_probe_shaped_packets_are_marked() -> None:
    lines = quiet.rule_lines("netdev portsentinel", "dev_eth0")
    assert lines == [
        "add rule netdev portsentinel dev_eth0 meta mark 0 tcp flags & (ack | rst) == 0 "
        "ip saddr . meta l4proto @quiet4 meta mark set 0x50534e51",
        "add rule netdev portsentinel dev_eth0 meta mark 0 meta l4proto udp "
        "ip saddr . meta l4proto @quiet4 meta mark set 0x50534e51",
        "add rule netdev portsentinel dev_eth0 meta mark 0 tcp flags & (ack | rst) == 0 "
        "ip6 saddr . meta l4proto @quiet6 meta mark set 0x50534e51",
        "add rule netdev portsentinel dev_eth0 meta mark 0 meta l4proto udp "
        "ip6 saddr . meta l4proto @quiet6 meta mark set 0x50534e51",
    ]


def test_the_reset_runs_first_in_prerouting_and_clears_only_our_value() -> None:
    lines = quiet.reset_lines("inet portsentinel")
    assert lines[0].endswith("{ type filter hook prerouting priority -1000; policy accept; }")
    assert lines[-1] == "add rule inet portsentinel quiet meta mark 0x50534e51 meta mark set 0"


def test_problems_of_the_listed_sets_rules_and_reset() -> None:
    sets = {item["set"]["name"]: item["set"] for item in QUIET_ITEMS if "set" in item}
    rules = [item["rule"]["expr"] for item in QUIET_ITEMS if "rule" in item]
    assert [quiet.set_problem(name, spec) for name, spec in sets.items()] == [None, None]
    assert quiet.chain_problem("dev_eth0", rules) is None
    assert quiet.chain_problem("dev_eth0", rules[:3]) == (
        "ingress chain dev_eth0 lacks the rules that mark quiet sources"
    )
    no_counter = {**sets["quiet6"], "stmt": []}
    assert quiet.set_problem("quiet6", no_counter) == "quiet set quiet6 does not count its elements"
    no_timeout = {**sets["quiet6"], "flags": []}
    assert quiet.set_problem("quiet6", no_timeout) == "quiet set quiet6 lacks the timeout flag"
    state = parse_table(RESET_LISTED)
    assert quiet.reset_problem(state.chains, state.rules["quiet"]) is None
    assert quiet.reset_problem({}, []) == "chain quiet is missing"
    moved = {"quiet": {**state.chains["quiet"], "prio": 0}}
    assert quiet.reset_problem(moved, state.rules["quiet"]) == (
        "chain quiet is not on the prerouting hook at -1000"
    )
    assert quiet.reset_problem(state.chains, []) == "chain quiet does not clear the quiet mark"


def test_element_counts_and_keys() -> None:
    sets = {item["set"]["name"]: item["set"] for item in QUIET_ITEMS if "set" in item}
    sets["quiet6"] = {**sets["quiet6"], "elem": [
        {"elem": {"val": {"concat": ["fd00::5", "udp"]}, "counter": {"packets": 3, "bytes": 9}}},
        {"elem": {"val": "not a pair"}},
    ]}  # fmt: skip
    assert quiet.element_counts(sets) == {
        (bytes([198, 18, 0, 3]), 6): 41,
        (bytes.fromhex("fd00" + "00" * 12 + "0005"), 17): 3,
    }
    assert quiet.element_key(bytes([198, 18, 0, 3]), 17) == bytes([198, 18, 0, 3, 17, 0, 0, 0])
    assert quiet.set_of(bytes(4)) == "quiet4"
    assert quiet.set_of(bytes(16)) == "quiet6"
    assert quiet.keys_of([b"a"]) == [(b"a", 6), (b"a", 17)]


def test_totals_give_each_elements_growth_once() -> None:
    totals = quiet.QuietTotals()
    a, b = (b"a", 6), (b"b", 17)
    totals.update({a: 5, b: 1})
    assert totals.take() == {a: 5, b: 1}
    assert totals.take() == {}
    totals.update({a: 8})  # b's element ended
    totals.update({a: 2, b: 4})  # a's came back (counted from zero), b's too
    assert totals.take() == {a: 5, b: 4}
    assert totals.packets == 15
