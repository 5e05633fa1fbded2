"""A set of IPv4/IPv6 networks that answers "is this packed address inside?" quickly.

Pure and immutable. Used for the ignore list and the never-block set. Matching costs
one dictionary probe per distinct prefix length present, not one per network.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from socket import AF_INET6, inet_ntop, inet_pton  # noqa: TID251 - text<->bytes only, no socket

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AddressSet:
    """Networks of both families; ``packed in s`` for 4- or 16-byte packed addresses."""

    __slots__ = ("_by_len", "_networks", "_v4")

    def __init__(self, networks: Iterable[Network] = ()) -> None:
        nets = tuple(dict.fromkeys(networks))
        self._networks: tuple[Network, ...] = nets
        # family width (32/128) -> list of (prefixlen, frozenset of network ints)
        by_len: dict[int, dict[int, set[int]]] = {32: {}, 128: {}}
        for net in nets:
            width = net.max_prefixlen
            by_len[width].setdefault(net.prefixlen, set()).add(int(net.network_address))
        self._by_len: dict[int, tuple[tuple[int, int, frozenset[int]], ...]] = {
            width: tuple(
                (plen, _mask(width, plen), frozenset(values))
                for plen, values in sorted(table.items(), reverse=True)
            )
            for width, table in by_len.items()
        }
        # IPv4's (mask, network ints) pairs, for the common case read without a lookup.
        self._v4 = tuple((mask, values) for _plen, mask, values in self._by_len[32])

    @property
    def networks(self) -> tuple[Network, ...]:
        return self._networks

    def __len__(self) -> int:
        return len(self._networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, packed: object) -> bool:
        if packed.__class__ is bytes and len(packed) == 4:
            # An IPv4 address (a probe's source, each one of a forged flood's): no lookup.
            value = int.from_bytes(packed, "big")
            for mask, values in self._v4:  # noqa: SIM110 - a loop is faster than any() here
                if value & mask in values:
                    return True
            return False
        if not isinstance(packed, _PACKED):
            return False
        width = len(packed) * 8
        if width == 128 and packed[:12] == _V4_MAPPED_PREFIX and packed[12:] in self:
            return True
        table = self._by_len.get(width)
        if not table:
            return False
        value = int.from_bytes(packed, "big")
        for _plen, mask, values in table:  # noqa: SIM110 - a loop is faster than any() here
            if value & mask in values:
                return True
        return False

    def contains_text(self, address: str) -> bool:
        """Membership for an address in text form; False for text that is not an address."""
        try:
            return ipaddress.ip_address(address).packed in self
        except ValueError:
            return False

    def union(self, other: AddressSet) -> AddressSet:
        return AddressSet((*self._networks, *other._networks))

    def __repr__(self) -> str:
        return f"AddressSet({[str(n) for n in self._networks]!r})"


_V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
_PACKED = (bytes, bytearray)  # a tuple: ``bytes | bytearray`` would build a union per call


def _mask(width: int, plen: int) -> int:
    return ((1 << plen) - 1) << (width - plen) if plen else 0


def canonical_ipv4(text: str) -> bool:
    """Is ``text`` an IPv4 address exactly as ``ipaddress`` writes it (``198.18.0.2``: four
    decimal octets, no leading zeros)? A check many times cheaper than parsing, for the paths
    that handle thousands of addresses at once; anything else goes the slow, general way."""
    return _CANONICAL_IPV4.fullmatch(text) is not None


def canonical_ipv6(text: str) -> bool:
    """Is ``text`` an IPv6 address exactly as ``ipaddress`` writes it (``fd00:b::2``)? Only
    True when it is; False for every other text and for some addresses in ::/80. The C
    library's writing agrees with ``ipaddress``'s (RFC 5952: lower case, no leading zeros, the
    leftmost longest run of two or more zero groups as ``::``) except where it writes an IPv4
    tail (mapped and compatible addresses), which this refuses. A fraction of a parse's cost,
    for the paths that handle thousands of addresses; anything refused goes the general way."""
    if "." in text:
        return False
    try:
        return inet_ntop(AF_INET6, inet_pton(AF_INET6, text)) == text
    except (OSError, ValueError):
        return False


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_IPV4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}", re.ASCII)
