from __future__ import annotations

from portsentinel.block import fleet_sets
from unit.block.block_fakes import FakeRunner


def test_structure_is_idempotent_and_drops_both_ways() -> None:
    lines = fleet_sets.structure_lines()
    assert "add set inet portsentinel fleet4 { type ipv4_addr; flags timeout; }" in lines
    assert "flush chain inet portsentinel fleet_in" in lines
    assert "add rule inet portsentinel fleet_out ip daddr @fleet4 counter drop" in lines
    assert "add rule inet portsentinel fleet_in ip6 saddr @fleet6 counter drop" in lines


def test_changes_refresh_and_remove_whether_or_not_present() -> None:
    script = fleet_sets.change_script({"198.18.0.2": 59.6, "fd00::2": 10}, ["198.18.0.3"])
    ref = "inet portsentinel"
    assert (f"add element {ref} fleet4 {{ 198.18.0.2 timeout 60s }}\n"
            f"delete element {ref} fleet4 {{ 198.18.0.2 }}\n"
            f"add element {ref} fleet4 {{ 198.18.0.2 timeout 60s }}") in script  # fmt: skip
    assert f"add element {ref} fleet6 {{ fd00::2 timeout 10s }}" in script
    assert (f"add element {ref} fleet4 {{ 198.18.0.3 timeout 1s }}\n"
            f"delete element {ref} fleet4 {{ 198.18.0.3 }}") in script  # fmt: skip
    full = fleet_sets.change_script({"198.18.0.2": 5}, [], full=True)
    assert f"flush set {ref} fleet4" in full
    assert full.count("198.18.0.2") == 1


def test_the_ingress_copies_get_every_element_in_the_same_transaction() -> None:
    script = fleet_sets.change_script({"198.18.0.2": 60}, ["fd00::3"], full=True, copies=True)
    for table in ("inet portsentinel", "netdev portsentinel"):
        assert f"flush set {table} fleet6" in script
        assert f"add element {table} fleet4 {{ 198.18.0.2 timeout 60s }}" in script
    assert "netdev" not in fleet_sets.change_script({"198.18.0.2": 60}, [])
    gone = fleet_sets.remove_script(copies=True)
    assert "flush set netdev portsentinel fleet4" in gone
    assert "delete set netdev" not in gone  # the backend's table keeps its sets


def test_the_copies_are_used_once_seen_and_their_arrival_asks_for_a_rewrite() -> None:
    runner = FakeRunner()
    runner.on(("nft", "list", "set", "netdev"), rc=1)  # no ingress table yet
    runner.on(("nft", "list", "chain"), stdout="ip saddr @fleet4 counter drop")
    sets = fleet_sets.FleetSets(runner, nft="nft")
    sets.apply({"198.18.0.2": 60}, [])
    assert "netdev" not in (runner.calls[-1].input or "")
    assert sets.present()
    runner.on(("nft", "list", "set", "netdev"), rc=0)  # the backend made its table
    assert not sets.present()  # so the link rewrites everything, copies included
    sets.apply({"198.18.0.2": 60}, [], full=True)
    assert "add element netdev portsentinel fleet4" in (runner.calls[-1].input or "")
    assert sets.present()
