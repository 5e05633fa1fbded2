"""``block.nft_state``: reading the inet table's listing (more in ``test_nftables.py``)."""

from __future__ import annotations

from portsentinel.block import nft_state


def test_element_keys_from_each_shape() -> None:
    assert nft_state.element_key("198.18.0.2") == "198.18.0.2"
    assert nft_state.element_key({"prefix": {"addr": "fd00:5e::", "len": 64}}) == "fd00:5e::/64"
    assert nft_state.element_key({"range": ["198.18.0.1", "198.18.0.9"]}) == (
        "198.18.0.1-198.18.0.9"
    )
    assert nft_state.element_key({"concat": []}) is None
    assert nft_state.element_key("not an address") is None


def test_table_listed() -> None:
    listed = '{"nftables": [{"table": {"family": "inet", "name": "portsentinel"}}]}'
    assert nft_state.table_listed(listed)
    assert not nft_state.table_listed('{"nftables": [{"table": {"family": "inet", "name": "x"}}]}')
    assert nft_state.table_listed("garbage")  # unreadable: never claimed missing


def test_set_and_chain_checks() -> None:
    state = nft_state.TableState(
        exists=True,
        sets={"ban4": {"type": "ipv4_addr", "flags": "timeout"},
              "ban6": {"type": "ipv4_addr", "flags": ["timeout"]}},
    )  # fmt: skip
    found = dict(nft_state.incompatible_sets(state, prefix_bans=True))
    assert found == {
        "ban4": "set ban4 lacks the flags interval",
        "ban6": "set ban6 has type 'ipv4_addr', not ipv6_addr",
    }
    good = {"type": "filter", "hook": "input", "prio": -10, "policy": "accept"}
    assert nft_state.chain_problem("input", good) is None
    assert "not" in (nft_state.chain_problem("input", {**good, "prio": 0}) or "")
