"""Ignore files: v4 and v6, masked CIDR, dotted masks, /0, IPv4-mapped; bad entries refuse."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portsentinel.config import ignore
from portsentinel.config.ignore import load_ignore_file, parse_entry, parse_ignore
from portsentinel.errors import ConfigErrors
from portsentinel.networks import AddressSet

STATIC = Path(__file__).parents[2] / "fixtures" / "config" / "debian" / "portsentry.ignore.static"


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def ignored(text: str) -> AddressSet:
    addresses, warnings = parse_ignore(text, "ig")
    assert warnings == ()
    return addresses


def test_debian_static_file() -> None:
    addresses, warnings = load_ignore_file(str(STATIC))
    assert warnings == ()
    assert [str(n) for n in addresses.networks] == ["127.0.0.1/32", "0.0.0.0/32"]
    assert packed("127.0.0.1") in addresses
    assert packed("127.0.0.2") not in addresses


def test_bare_addresses_are_hosts_and_the_rest_of_the_line_is_ignored() -> None:
    addresses = ignored("# admins\n\n  192.0.2.7   office gateway\n2001:db8::1#laptop\n")
    assert packed("192.0.2.7") in addresses
    assert packed("192.0.2.8") not in addresses
    assert packed("2001:db8::1") in addresses
    assert packed("2001:db8::2") not in addresses


def test_cidr_with_host_bits_matches_the_whole_network() -> None:
    addresses = ignored("192.168.1.5/24\n2001:db8:1::5/48\n")
    assert packed("192.168.1.200") in addresses
    assert packed("192.168.2.1") not in addresses
    assert packed("2001:db8:1:ffff::9") in addresses
    assert packed("2001:db8:2::1") not in addresses


def test_dotted_netmask() -> None:
    addresses = ignored("10.0.0.0/255.0.0.0\n172.16.5.9/255.255.240.0\n")
    assert packed("10.200.1.1") in addresses
    assert packed("11.0.0.1") not in addresses
    assert ipaddress.ip_network("172.16.0.0/20") in addresses.networks


def test_ipv4_mapped_entry_matches_plain_and_mapped_addresses() -> None:
    addresses = ignored("::ffff:198.51.100.0/120\n")
    assert addresses.networks == (ipaddress.ip_network("198.51.100.0/24"),)
    assert packed("198.51.100.77") in addresses
    assert packed("::ffff:198.51.100.77") in addresses
    # And a plain IPv4 entry also covers the mapped form of its addresses.
    assert packed("::ffff:127.0.0.1") in ignored("127.0.0.1\n")


@pytest.mark.parametrize(("entry", "family"), [("0.0.0.0/0", 4), ("::/0", 6), ("10.1.1.1/0", 4)])
def test_slash_zero_means_everything_and_warns(entry: str, family: int) -> None:
    addresses, warnings = parse_ignore(f"# all\n{entry}\n", "ig")
    probe = "203.0.113.9" if family == 4 else "2001:db8::9"
    assert packed(probe) in addresses
    assert warnings == (
        f"ig:2: IGNORE_FILE: {entry} matches every IPv{family} address: all responses off",
    )


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("gateway.example.com", "'gateway.example.com' is not an address"),
        ("192.168.1.0/33", "'192.168.1.0/33' has a bad prefix length"),
        ("2001:db8::/129", "'2001:db8::/129' has a bad prefix length"),
        ("10.0.0.0/255.0.255.0", "'10.0.0.0/255.0.255.0' has a netmask that is not contiguous"),
        ("10.0.0.0/0.0.0.255", "'10.0.0.0/0.0.0.255' has a netmask that is not contiguous"),
        ("10.0.0.0/255.0.0", "'10.0.0.0/255.0.0' has a bad netmask"),
        ("2001:db8::/ffff::", "'2001:db8::/ffff::' has a bad prefix length"),
        ("10.0.0.0/+8", "'10.0.0.0/+8' has a bad prefix length"),
        ("010.0.0.1", "'010.0.0.1' is not an address"),
    ],
)
def test_bad_entries_are_located_errors(entry: str, reason: str) -> None:
    with pytest.raises(ConfigErrors) as caught:
        parse_ignore(f"127.0.0.1\n{entry} # note\n", "ig")
    assert [e.render() for e in caught.value.errors] == [
        f"ig:2: IGNORE_FILE: {reason} (expected an IPv4/IPv6 address or CIDR range)"
    ]


def test_every_bad_entry_is_reported() -> None:
    with pytest.raises(ConfigErrors) as caught:
        parse_ignore("host-a\n10.0.0.1\nhost-b\n", "ig")
    assert [e.line for e in caught.value.errors] == [1, 3]


def test_parse_entry_masks_host_bits() -> None:
    assert parse_entry("192.168.1.5/24") == ipaddress.ip_network("192.168.1.0/24")
    assert parse_entry("10.9.8.7/255.255.0.0") == ipaddress.ip_network("10.9.0.0/16")


@given(st.lists(st.text(alphabet="0123456789abcdef.:/ #x\t", max_size=24), max_size=6))
def test_random_lines_raise_only_config_errors(lines: list[str]) -> None:
    try:
        addresses, _warnings = parse_ignore("\n".join(lines), "ig")
    except ConfigErrors as exc:
        rendered = [e.render() for e in exc.errors]
        assert rendered
    else:
        rendered = []
        assert len(addresses) <= len(lines)
    assert all(r.startswith("ig:") for r in rendered)


def test_missing_file_is_a_warning_and_an_unreadable_one_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "none.ignore"
    addresses, warnings = load_ignore_file(str(missing))
    assert not addresses
    assert warnings == (f"{missing}: IGNORE_FILE: file does not exist; nothing is ignored",)
    with pytest.raises(ConfigErrors, match="cannot read the file"):
        load_ignore_file(str(tmp_path))


def test_a_symlink_loop_is_an_error_not_a_missing_file(tmp_path: Path) -> None:
    """It was "file does not exist; nothing is ignored": the daemon ran with nothing ignored."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop.name)
    with pytest.raises(ConfigErrors) as caught:
        load_ignore_file(str(loop))
    assert str(caught.value) == (
        f"{loop}: IGNORE_FILE: cannot read the file: a symlink loop (too many levels of "
        "symbolic links) (expected a readable file)"
    )


def test_a_fifo_or_a_device_is_refused_without_reading(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigErrors, match="IGNORE_FILE: cannot read the file: a FIFO"):
        load_ignore_file(str(fifo))
    with pytest.raises(ConfigErrors, match="a character device, not a regular file"):
        load_ignore_file("/dev/zero")


def test_an_ignore_file_larger_than_its_cap_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ignore, "MAX_IGNORE_BYTES", 64)
    path = tmp_path / "ignore"
    path.write_text("198.18.0.1\n" * 10)
    with pytest.raises(ConfigErrors, match="larger than 64 bytes, the limit for an ignore file"):
        load_ignore_file(str(path))


def test_2_0s_strict_characters_are_a_warning_and_the_line_is_read() -> None:
    text = (
        "# PortSentry 2.0's example\n"
        "127.0.0.1/32\n"
        "192.0.2.7 # the admin\n"
        "2001:DB8::/32\n"
        "198.51.100.0/24\t\n"
        "fd00:5e::/64\r\n"
    )
    networks, warnings = parse_ignore(text, "portsentry.ignore", portsentry2=True)
    for address in ("127.0.0.1", "192.0.2.7", "2001:db8::1", "198.51.100.9", "fd00:5e::2"):
        assert ipaddress.ip_address(address).packed in networks
    assert [w.split(": ", 2)[0] for w in warnings] == [
        "portsentry.ignore:3", "portsentry.ignore:4", "portsentry.ignore:5", "portsentry.ignore:6"
    ]  # fmt: skip
    assert all("PortSentry 2.0 refuses this line" in w for w in warnings)
    assert warnings[1].endswith("read as 2001:db8::/32")
    # the same file for 1.2's words (or PortSentinel's own): no warning about 2.0
    assert parse_ignore(text, "portsentry.ignore")[1] == ()


def test_2_0s_unmasked_entries_match_their_network_with_a_warning() -> None:
    networks, warnings = parse_ignore(
        "192.168.1.5/24\nfd00:5e::2/64\n10.0.0.0/8\n192.0.2.9\n", "i", portsentry2=True
    )
    assert ipaddress.ip_address("192.168.1.77").packed in networks
    assert ipaddress.ip_address("fd00:5e::99").packed in networks
    assert warnings == (
        "i:1: IGNORE_FILE: 192.168.1.5/24 has host bits set: it matches 192.168.1.0/24 here, "
        "and never matched in PortSentry 2.0 (write the network address)",
        "i:2: IGNORE_FILE: fd00:5e::2/64 has host bits set: it matches fd00:5e::/64 here, "
        "and never matched in PortSentry 2.0 (write the network address)",
    )
