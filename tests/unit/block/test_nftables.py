"""nftables backend without root: the scripts it writes, the JSON it reads (captured from nft
1.0.6 on Linux 6.18, next to the daemon's own conntrack chain), and its lifecycle against a
scripted runner."""

from __future__ import annotations

import json

import pytest

from portsentinel.block.base import BanSpec
from portsentinel.block.nft_state import (
    MAX_TIMEOUT,
    TableState,
    parse_table,
    set_elements,
    structure_problems,
)
from portsentinel.block.nftables import (
    NftablesBackend,
    add_script,
    delete_script,
    element,
    structure_script,
)
from portsentinel.errors import BackendError
from portsentinel.model import Mode, Proto
from unit.block.block_fakes import FakeRunner

# ``nft -j list table inet portsentinel`` after start() with prefix bans on and three bans.
LISTED = """{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "portsentinel", "handle": 1}}, {"set": {"family": "inet", "name": "ban4", "table": "portsentinel", "type": "ipv4_addr", "handle": 3, "flags": ["interval", "timeout"], "elem": [{"elem": {"val": "198.18.0.3", "timeout": 3600, "expires": 3599}}, "198.18.0.9"]}}, {"set": {"family": "inet", "name": "ban6", "table": "portsentinel", "type": "ipv6_addr", "handle": 4, "flags": ["interval", "timeout"], "elem": [{"elem": {"val": {"prefix": {"addr": "fd00:5e::", "len": 64}}, "timeout": 60, "expires": 59}}]}}, {"chain": {"family": "inet", "table": "portsentinel", "name": "conntrack", "handle": 1, "type": "filter", "hook": "prerouting", "prio": -150, "policy": "accept"}}, {"chain": {"family": "inet", "table": "portsentinel", "name": "input", "handle": 5, "type": "filter", "hook": "input", "prio": -10, "policy": "accept"}}, {"chain": {"family": "inet", "table": "portsentinel", "name": "forward", "handle": 8, "type": "filter", "hook": "forward", "prio": -10, "policy": "accept"}}, {"chain": {"family": "inet", "table": "portsentinel", "name": "output", "handle": 11, "type": "filter", "hook": "output", "prio": -10, "policy": "accept"}}, {"rule": {"family": "inet", "table": "portsentinel", "chain": "conntrack", "handle": 2, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"counter": {"packets": 0, "bytes": 0}}]}}, {"rule": {"family": "inet", "table": "portsentinel", "chain": "input", "handle": 6, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@ban4"}}, {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "portsentinel", "chain": "input", "handle": 7, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "@ban6"}}, {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "portsentinel", "chain": "forward", "handle": 9, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@ban4"}}, {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "portsentinel", "chain": "forward", "handle": 10, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "@ban6"}}, {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "portsentinel", "chain": "output", "handle": 12, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@ban4"}}, {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "portsentinel", "chain": "output", "handle": 13, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": "@ban6"}}, {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}]}"""  # noqa: E501 - verbatim
# The same table as an earlier version made it: no output chain.
LISTED_NO_OUTPUT = """{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "portsentinel", "handle": 1}}, {"set": {"family": "inet", "name": "ban4", "table": "portsentinel", "type": "ipv4_addr", "handle": 3, "flags": ["interval", "timeout"], "elem": [{"elem": {"val": "198.18.0.3", "timeout": 3600, "expires": 3600}}, "198.18.0.9"]}}, {"set": {"family": "inet", "name": "ban6", "table": "portsentinel", "type": "ipv6_addr", "handle": 4, "flags": ["interval", "timeout"], "elem": [{"elem": {"val": {"prefix": {"addr": "fd00:5e::", "len": 64}}, "timeout": 60, "expires": 59}}]}}, {"chain": {"family": "inet", "table": "portsentinel", "name": "conntrack", "handle": 1, "type": "filter", "hook": "prerouting", "prio": -150, "policy": "accept"}}, {"chain": {"family": "inet", "table": "portsentinel", "name": "input", "handle": 5, "type": "filter", "hook": "input", "prio": -10, "policy": "accept"}}, {"chain": {"family": "inet", "table": "portsentinel", "name": "forward", "handle": 8, "type": "filter", "hook": "forward", "prio": -10, "policy": "accept"}}, {"rule": {"family": "inet", "table": "portsentinel", "chain": "conntrack", "handle": 2, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"counter": {"packets": 0, "bytes": 0}}]}}, {"rule": {"family": "inet", "table": "portsentinel", "chain": "input", "handle": 6, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@ban4"}}, {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "portsentinel", "chain": "input", "handle": 7, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "@ban6"}}, {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "portsentinel", "chain": "forward", "handle": 9, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@ban4"}}, {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "portsentinel", "chain": "forward", "handle": 10, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "@ban6"}}, {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}]}"""  # noqa: E501 - verbatim
NO_TABLES = '{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]}'
LIST_TABLE = ("nft", "-j", "list", "table", "inet", "portsentinel")
LIST_TABLES = ("nft", "-j", "list", "tables", "inet")
APPLY = ("nft", "-f", "-")


def ban(address: str, **kw: object) -> BanSpec:
    return BanSpec.create(address, **kw)  # type: ignore[arg-type]


def missing_table(runner: FakeRunner) -> None:
    runner.on(LIST_TABLE, rc=1, stderr="Error: No such file or directory")
    runner.on(LIST_TABLES, stdout=NO_TABLES)


# --- scripts --------------------------------------------------------------------------------
def test_element_text() -> None:
    assert element(ban("198.18.0.2", timeout=3600)) == "198.18.0.2 timeout 3600s"
    assert element(ban("198.18.0.2", timeout=0.4)) == "198.18.0.2 timeout 1s"
    assert element(ban("198.18.0.2")) == "198.18.0.2"
    assert element(ban("fd00:5e::9", prefix=64, timeout=60)) == "fd00:5e::/64 timeout 60s"
    assert element(ban("198.18.0.2", timeout=1e12)) == f"198.18.0.2 timeout {MAX_TIMEOUT}s"


def test_add_script_groups_by_family_in_one_transaction() -> None:
    script = add_script([ban("198.18.0.2", timeout=10), ban("fd00:5e::2"), ban("198.18.0.3")])
    assert script == (
        "add element inet portsentinel ban4 { 198.18.0.2 timeout 10s, 198.18.0.3 }\n"
        "add element inet portsentinel ban6 { fd00:5e::2 }\n"
    )


def test_add_script_chunks_long_batches() -> None:
    bans = [ban(f"10.0.{i // 256}.{i % 256}") for i in range(1200)]
    lines = add_script(bans).splitlines()
    assert len(lines) == 3
    assert all(line.startswith("add element inet portsentinel ban4 { ") for line in lines)
    assert sum(line.count(",") + 1 for line in lines) == 1200


def test_delete_script_adds_first_so_a_missing_element_is_no_error() -> None:
    assert delete_script(ban("fd00:5e::", prefix=64)) == (
        "add element inet portsentinel ban6 { fd00:5e::/64 }\n"
        "delete element inet portsentinel ban6 { fd00:5e::/64 }\n"
    )


def test_structure_script_on_an_empty_ruleset() -> None:
    assert structure_script(TableState(), prefix_bans=False) == (
        "add table inet portsentinel\n"
        "add set inet portsentinel ban4 { type ipv4_addr; flags timeout; }\n"
        "add set inet portsentinel ban6 { type ipv6_addr; flags timeout; }\n"
        "add chain inet portsentinel input { type filter hook input priority filter - 10; "
        "policy accept; }\n"
        "add rule inet portsentinel input ip saddr @ban4 counter drop\n"
        "add rule inet portsentinel input ip6 saddr @ban6 counter drop\n"
        "add chain inet portsentinel forward { type filter hook forward priority filter - 10; "
        "policy accept; }\n"
        "add rule inet portsentinel forward ip saddr @ban4 counter drop\n"
        "add rule inet portsentinel forward ip6 saddr @ban6 counter drop\n"
        "add chain inet portsentinel output { type filter hook output priority filter - 10; "
        "policy accept; }\n"
        "add rule inet portsentinel output ip daddr @ban4 counter drop\n"
        "add rule inet portsentinel output ip6 daddr @ban6 counter drop\n"
    )


def test_a_table_made_before_the_output_chain_gets_it() -> None:
    """After a ban nothing leaves the host for the banned address: an older table lacks the
    output chain, which check names and start adds, its bans kept."""
    state = parse_table(LISTED_NO_OUTPUT)
    assert structure_problems(state, prefix_bans=True) == ["chain output is missing"]
    lines = structure_script(state, prefix_bans=True).splitlines()
    assert "add rule inet portsentinel output ip daddr @ban4 counter drop" in lines
    assert not any(line.startswith(("delete", "flush set")) for line in lines)


def test_structure_script_keeps_sets_and_refills_own_chains_only() -> None:
    script = structure_script(parse_table(LISTED), prefix_bans=True)
    lines = script.splitlines()
    assert "flush chain inet portsentinel input" in lines
    assert "flush chain inet portsentinel forward" in lines
    assert not any("delete" in line for line in lines)
    assert not any("conntrack" in line for line in lines)
    assert not any(line.startswith(("flush table", "delete table", "flush set")) for line in lines)
    assert "add set inet portsentinel ban4 { type ipv4_addr; flags interval, timeout; }" in lines
    # The flush comes before the rules are added again, so each rule exists once.
    assert lines.index("flush chain inet portsentinel input") < lines.index(
        "add rule inet portsentinel input ip saddr @ban4 counter drop"
    )


def test_structure_script_recreates_a_set_without_the_interval_flag() -> None:
    state = parse_table(LISTED.replace('"flags": ["interval", "timeout"]', '"flags": ["timeout"]'))
    lines = structure_script(state, prefix_bans=True).splitlines()
    flush = lines.index("flush chain inet portsentinel input")
    delete4 = lines.index("delete set inet portsentinel ban4")
    add4 = lines.index(
        "add set inet portsentinel ban4 { type ipv4_addr; flags interval, timeout; }"
    )
    assert flush < delete4 < add4
    # A set with more flags than needed is kept: interval sets hold single addresses too.
    kept = structure_script(parse_table(LISTED), prefix_bans=False)
    assert "delete set" not in kept


def test_structure_script_recreates_a_chain_with_the_wrong_hook_priority() -> None:
    state = parse_table(
        LISTED.replace('"hook": "input", "prio": -10', '"hook": "input", "prio": 0')
    )
    lines = structure_script(state, prefix_bans=True).splitlines()
    assert lines.index("flush chain inet portsentinel input") < lines.index(
        "delete chain inet portsentinel input"
    )
    assert "delete chain inet portsentinel forward" not in lines


# --- reading --------------------------------------------------------------------------------
def test_parse_real_listing() -> None:
    state = parse_table(LISTED)
    assert state.exists
    assert set(state.sets) == {"ban4", "ban6"}
    assert set(state.chains) == {"input", "forward", "output"}  # conntrack: not this backend's
    assert structure_problems(state, prefix_bans=True) == []
    assert set_elements(state.sets["ban4"]) == {"198.18.0.3": 3599.0, "198.18.0.9": None}
    assert set_elements(state.sets["ban6"]) == {"fd00:5e::/64": 59.0}


def test_problems_are_named() -> None:
    assert structure_problems(TableState(), prefix_bans=False) == [
        "table inet portsentinel is missing"
    ]
    data = json.loads(LISTED)
    data["nftables"] = [
        item
        for item in data["nftables"]
        if item.get("set", {}).get("name") != "ban6"
        and item.get("rule", {}).get("chain") != "forward"
    ]
    problems = structure_problems(parse_table(json.dumps(data)), prefix_bans=True)
    assert problems == [
        "set ban6 is missing",
        "chain forward has no 'ip saddr @ban4 drop' rule",
        "chain forward has no 'ip6 saddr @ban6 drop' rule",
    ]


def test_a_rule_that_accepts_does_not_count() -> None:
    text = LISTED.replace('{"drop": null}', '{"accept": null}')
    problems = structure_problems(parse_table(text), prefix_bans=True)
    assert len(problems) == 6  # two rules in each of the three chains


def test_set_type_and_flag_problems() -> None:
    text = LISTED.replace('"type": "ipv6_addr"', '"type": "ipv4_addr"')
    problems = structure_problems(parse_table(text), prefix_bans=True)
    assert problems == ["set ban6 has type 'ipv4_addr', not ipv6_addr"]
    text = LISTED.replace('"flags": ["interval", "timeout"]', '"flags": "interval"')
    problems = structure_problems(parse_table(text), prefix_bans=False)
    assert problems == ["set ban4 lacks the flags timeout", "set ban6 lacks the flags timeout"]


def test_foreign_elements_are_reported_as_they_are() -> None:
    spec = {"elem": [{"range": ["fd00:88::1", "fd00:88::5"]}, "not-an-address", 17]}
    assert set_elements(spec) == {"fd00:88::1-fd00:88::5": None}


def test_parse_rejects_non_json() -> None:
    with pytest.raises(ValueError, match="not nft JSON"):
        parse_table("Error: something")


# --- lifecycle against a scripted runner ------------------------------------------------------
def test_start_on_empty_ruleset_creates_everything() -> None:
    runner = FakeRunner()
    missing_table(runner)
    backend = NftablesBackend(runner)
    backend.start()
    applied = [c for c in runner.calls if c.argv == APPLY]
    assert len(applied) == 1
    assert applied[0].input == structure_script(TableState(), prefix_bans=False)
    assert backend.degraded is None


def test_start_failure_degrades_and_raises() -> None:
    runner = FakeRunner()
    missing_table(runner)
    runner.on(APPLY, rc=1, stderr="Error: Could not process rule: Operation not permitted")
    backend = NftablesBackend(runner)
    with pytest.raises(BackendError, match="Operation not permitted"):
        backend.start()
    assert backend.degraded is not None
    assert "cannot create" in backend.degraded


def test_unreadable_table_is_a_failure_not_an_empty_state() -> None:
    runner = FakeRunner()
    runner.on(LIST_TABLE, rc=1, stderr="Error: Operation not permitted")
    runner.on(LIST_TABLES, rc=1, stderr="Error: Operation not permitted")
    backend = NftablesBackend(runner)
    with pytest.raises(BackendError, match="cannot read table"):
        backend.check()
    assert backend.degraded is not None


def test_block_detail_and_command() -> None:
    runner = FakeRunner()
    backend = NftablesBackend(runner)
    detail = backend.block(ban("198.18.0.2", port=143, mode=Mode.STCP, timeout=3600))
    assert runner.calls[-1].argv == APPLY
    assert runner.calls[-1].input == (
        "add element inet portsentinel ban4 { 198.18.0.2 timeout 3600s }\n"
    )
    assert detail == {
        "backend": "nftables",
        "address": "198.18.0.2",
        "prefix": 32,
        "port": 143,
        "proto": "tcp",
        "mode": "stcp",
        "key": "198.18.0.2",
        "table": "inet portsentinel",
        "set": "ban4",
        "timeout": 3600,
    }
    json.dumps(detail)


def test_block_many_is_one_process() -> None:
    runner = FakeRunner()
    bans = [ban(f"198.18.{i // 256}.{i % 256}", timeout=60) for i in range(1000)]
    details = NftablesBackend(runner).block_many(bans)
    assert len(runner.calls) == 1
    assert [d["key"] for d in details if isinstance(d, dict)] == [b.key for b in bans]


def test_prefix_bans_need_the_setting() -> None:
    runner = FakeRunner()
    results = NftablesBackend(runner).block_many([ban("fd00:5e::", prefix=64), ban("198.18.0.2")])
    assert isinstance(results[0], BackendError)
    assert "interval" in str(results[0])
    assert isinstance(results[1], dict)
    assert "fd00:5e::/64" not in (runner.calls[0].input or "")


def test_a_refused_batch_is_halved_until_the_culprit_is_found() -> None:
    runner = FakeRunner()
    runner.on(LIST_TABLE, stdout=LISTED)
    runner.on(
        lambda argv, text: argv == APPLY and "198.18.0.66" in (text or ""),
        rc=1,
        stderr="Error: interval overlaps with an existing one",
    )
    backend = NftablesBackend(runner, prefix_bans=True)
    bans = [ban(f"198.18.0.{i}") for i in range(60, 70)]
    results = backend.block_many(bans)
    failed = [b.key for b, r in zip(bans, results, strict=True) if isinstance(r, BackendError)]
    assert failed == ["198.18.0.66"]
    assert backend.degraded is None  # the structure is fine: not the backend's fault
    applies = [c for c in runner.calls if c.argv == APPLY]
    assert len(applies) < len(bans)  # halving, not one process per ban
    assert sum(1 for c in runner.calls if c.argv == LIST_TABLE) == 1


def test_a_refused_batch_with_broken_structure_degrades_without_halving() -> None:
    runner = FakeRunner()
    missing_table(runner)
    runner.on(APPLY, rc=1, stderr="Error: No such file or directory")
    backend = NftablesBackend(runner)
    results = backend.block_many([ban("198.18.0.2"), ban("198.18.0.3")])
    assert all(isinstance(r, BackendError) for r in results)
    assert backend.degraded is not None
    assert "table inet portsentinel is missing" in backend.degraded
    assert sum(1 for c in runner.calls if c.argv == APPLY) == 1
    with pytest.raises(BackendError):
        backend.block(ban("198.18.0.4"))


def test_success_clears_degraded() -> None:
    runner = FakeRunner()
    backend = NftablesBackend(runner)
    backend.degraded = "table inet portsentinel is missing"
    backend.block(ban("198.18.0.2"))
    assert backend.degraded is None


def test_unblock_uses_the_validated_ban_not_the_recorded_text() -> None:
    runner = FakeRunner()
    backend = NftablesBackend(runner)
    detail = backend.block(ban("fd00:5e::2", proto=Proto.UDP))
    detail["element"] = "fd00:5e::2 }; flush ruleset; add element inet x y { 1"
    detail["set"] = "ban4"
    backend.unblock(detail)
    assert runner.calls[-1].input == (
        "add element inet portsentinel ban6 { fd00:5e::2 }\n"
        "delete element inet portsentinel ban6 { fd00:5e::2 }\n"
    )


def test_unblock_failure_raises_without_degrading() -> None:
    runner = FakeRunner()
    backend = NftablesBackend(runner)
    detail = backend.block(ban("198.18.0.2"))
    runner.on(APPLY, rc=1, stderr="Error: No such file or directory")
    with pytest.raises(BackendError, match=r"cannot remove 198\.18\.0\.2"):
        backend.unblock(detail)
    assert backend.degraded is None


def test_check_reports_structure_and_elements() -> None:
    runner = FakeRunner()
    runner.on(LIST_TABLE, stdout=LISTED)
    result = NftablesBackend(runner, prefix_bans=True).check()
    assert result.intact
    assert result.problems == ()
    assert dict(result.present) == {
        "198.18.0.3": 3599.0,
        "198.18.0.9": None,
        "fd00:5e::/64": 59.0,
    }
    # The same table lacks nothing for a backend without prefix bans either.
    assert NftablesBackend(runner).check().intact


def test_check_of_a_flushed_ruleset() -> None:
    runner = FakeRunner()
    missing_table(runner)
    result = NftablesBackend(runner).check()
    assert not result.intact
    assert result.problems == ("table inet portsentinel is missing",)
    assert dict(result.present) == {}


def test_repair_recreates_then_adds() -> None:
    runner = FakeRunner()
    missing_table(runner)
    results = NftablesBackend(runner).repair([ban("198.18.0.2", timeout=30)])
    applies = [c.input for c in runner.calls if c.argv == APPLY]
    assert applies[0] == structure_script(TableState(), prefix_bans=False)
    assert applies[1] == "add element inet portsentinel ban4 { 198.18.0.2 timeout 30s }\n"
    assert isinstance(results[0], dict)


def test_never_touches_the_whole_table() -> None:
    runner = FakeRunner()
    runner.on(LIST_TABLE, stdout=LISTED)
    backend = NftablesBackend(runner, prefix_bans=True)
    backend.start()
    detail = backend.block(ban("198.18.0.2"))
    backend.unblock(detail)
    backend.check()
    backend.repair([ban("198.18.0.5")])
    backend.stop()
    text = "\n".join((c.input or "") + " ".join(c.argv) for c in runner.calls)
    for forbidden in ("flush table", "delete table", "flush ruleset", "conntrack", "flush set"):
        assert forbidden not in text
