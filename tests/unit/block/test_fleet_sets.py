from __future__ import annotations

from portsentinel.block import fleet_sets


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
