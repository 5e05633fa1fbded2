"""AddressSet: membership of packed addresses in IPv4/IPv6 networks."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from portsentinel.networks import AddressSet, canonical_ipv4, canonical_ipv6


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text, strict=False)


@pytest.mark.parametrize(
    ("networks", "address", "inside"),
    [
        (["192.168.1.5/24"], "192.168.1.200", True),
        (["192.168.1.5/24"], "192.168.2.1", False),
        (["10.0.0.1"], "10.0.0.1", True),
        (["10.0.0.1"], "10.0.0.2", False),
        (["0.0.0.0/0"], "203.0.113.9", True),
        (["0.0.0.0/0"], "fd00::1", False),
        (["fd00::/8"], "fd00:5e::1", True),
        (["fd00::/8"], "fe80::1", False),
        (["2001:db8::/32", "10.0.0.0/8"], "2001:db8:ffff::1", True),
        (["10.0.0.0/8"], "::ffff:10.1.2.3", True),  # IPv4-mapped IPv6 matches IPv4 ranges
        ([], "10.0.0.1", False),
    ],
)
def test_membership(networks: list[str], address: str, inside: bool) -> None:
    addresses = AddressSet(net(n) for n in networks)
    assert (packed(address) in addresses) is inside
    assert addresses.contains_text(address) is inside


def test_longest_and_shortest_prefixes_both_match() -> None:
    addresses = AddressSet([net("10.0.0.0/8"), net("10.1.2.3/32")])
    assert packed("10.1.2.3") in addresses
    assert packed("10.200.0.1") in addresses
    assert packed("11.0.0.1") not in addresses


def test_rejects_what_is_not_a_packed_address() -> None:
    addresses = AddressSet([net("0.0.0.0/0"), net("::/0")])
    assert b"\x01\x02\x03" not in addresses
    assert "10.0.0.1" not in addresses
    assert not addresses.contains_text("not-an-address")


def test_duplicates_collapse_and_union_keeps_both() -> None:
    first = AddressSet([net("10.0.0.0/8"), net("10.0.0.0/8")])
    assert len(first) == 1
    both = first.union(AddressSet([net("fd00::/8")]))
    assert len(both) == 2
    assert packed("fd00::1") in both
    assert packed("10.9.9.9") in both
    assert not AddressSet()


def _ipaddress_writes_it(text: str) -> bool:
    try:
        return str(ipaddress.IPv4Address(text)) == text
    except ValueError:
        return False


@given(st.one_of(
    st.ip_addresses(v=4).map(str),
    st.lists(st.text("0123456789\u0661", max_size=4), min_size=1, max_size=5).map(".".join),
    st.text(max_size=20),
))  # fmt: skip
def test_canonical_ipv4_says_exactly_what_ipaddress_would_write(text: str) -> None:
    assert canonical_ipv4(text) == _ipaddress_writes_it(text)


def _ipaddress_writes_it_v6(text: str) -> bool:
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return str(address) == text and address.ipv4_mapped is None


def _respelt(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[str]:
    """Other spellings of one address: upper case, every group written out, a dotted tail."""
    assert isinstance(address, ipaddress.IPv6Address)
    return [str(address).upper(), address.exploded, f"::ffff:{address.packed[-4:].hex()}"]


_GROUPS = st.sampled_from([0, 0, 0, 1, 0xFFFF, 0x5E, 0xFD00])  # runs of zeros, ties included


@given(st.one_of(
    st.ip_addresses(v=6).map(str),
    st.lists(_GROUPS, min_size=8, max_size=8).map(
        lambda groups: str(ipaddress.IPv6Address(int("".join(f"{g:04x}" for g in groups), 16)))
    ),
    st.ip_addresses(v=6).flatmap(lambda a: st.sampled_from(_respelt(a))),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.ip_addresses(network="::/80").map(str),
    st.text("0123456789abcdefABCDEF:.%", max_size=24),
))  # fmt: skip
@example("::1:1")  # the C library writes ::0.1.0.1
@example("::102:304")
@example("::ffff:0:0")
@example("::5e:0:0")
@example("::1")
@example("::")
def test_canonical_ipv6_never_says_what_ipaddress_would_not_write(text: str) -> None:
    """The C library's writing stands in for ``ipaddress``'s: never a text ``ipaddress`` would
    write otherwise, and every one it writes outside ::/80, where the C library may write an
    IPv4 tail (mapped and compatible addresses: those go the general way)."""
    writes_it = _ipaddress_writes_it_v6(text)
    assert not canonical_ipv6(text) or writes_it
    if writes_it and ipaddress.IPv6Address(text) not in ipaddress.ip_network("::/80"):
        assert canonical_ipv6(text)
