"""Tests for ``portsentinel.decode``: link layers, IPv4/IPv6, fragments, junk and truncation."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portsentinel.decode import (
    _ip4,
    decode_ethernet,
    decode_ip,
    decode_null,
    decode_sll,
    decode_sll2,
    decoder_for_linktype,
)
from portsentinel.errors import CaptureError, DecodeError
from portsentinel.model import ACK, FIN, PSH, SYN, Frag, Packet
from unit.decode_frames import (
    AH,
    DEST_OPTS,
    DST4,
    DST6,
    ESP,
    ETH_ARP,
    ETH_IPV4,
    ETH_IPV6,
    FRAGMENT,
    HOP_BY_HOP,
    ICMP,
    ICMP6,
    NO_NEXT,
    ROUTING,
    SRC4,
    SRC6,
    TCP,
    UDP,
    ah6,
    ethernet,
    ext6,
    frag6,
    ipv4,
    ipv6,
    null,
    sll,
    sll2,
    tcp,
    udp,
)

Decoder = Callable[[bytes | memoryview], Packet | None]
DECODERS: tuple[Decoder, ...] = (decode_ip, decode_ethernet, decode_sll, decode_sll2, decode_null)
MSS = bytes.fromhex("020405b4")


def v4(sport: int = 40000, dport: int = 22, flags: int = SYN, **kw: object) -> Packet:
    """The expected decode of a TCP segment from SRC4 to DST4."""
    return _packet(TCP, SRC4, DST4, (sport, dport), flags, **kw)


def v6(sport: int = 40000, dport: int = 22, flags: int = SYN, **kw: object) -> Packet:
    """The expected decode of a TCP segment from SRC6 to DST6."""
    return _packet(TCP, SRC6, DST6, (sport, dport), flags, **kw)


def _packet(
    proto: int,
    src: bytes,
    dst: bytes,
    ports: tuple[int, int],
    flags: int,
    *,
    ttl: object = 64,
    options: object = False,
    frag: object = Frag.NONE,
) -> Packet:
    assert isinstance(ttl, int)
    assert isinstance(options, bool)
    assert isinstance(frag, int)
    return (proto, src, dst, ports[0], ports[1], flags, ttl, options, frag)


SYN4 = ipv4(TCP, tcp(payload=b"hello"))
SYN6 = ipv6(TCP, tcp(payload=b"hello"))
UDP4 = ipv4(UDP, udp(5353, 53, b"query"))
UDP6 = ipv6(UDP, udp(5353, 53, b"query"))


# --- link layers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decoder", "frame", "expected"),
    [
        (decode_ethernet, ethernet(ETH_IPV4, SYN4), v4()),
        (decode_ethernet, ethernet(ETH_IPV6, SYN6), v6()),
        (decode_ethernet, ethernet(ETH_IPV4, SYN4, tags=(0x8100,)), v4()),
        (decode_ethernet, ethernet(ETH_IPV6, SYN6, tags=(0x88A8, 0x8100)), v6()),
        (decode_ethernet, ethernet(ETH_IPV4, SYN4, tags=(0x9100, 0x8100)), v4()),
        (decode_ethernet, ethernet(ETH_IPV4, SYN4, tags=(0x88A8, 0x88A8, 0x8100)), v4()),
        (decode_sll, sll(ETH_IPV4, SYN4), v4()),
        (decode_sll, sll(ETH_IPV6, SYN6), v6()),
        (decode_sll, sll(0x8100, b"\x00\x64\x08\x00" + SYN4), v4()),
        (decode_sll2, sll2(ETH_IPV4, SYN4), v4()),
        (decode_sll2, sll2(ETH_IPV6, SYN6), v6()),
        (decode_null, null(2, SYN4), v4()),
        (decode_null, null(2, SYN4, order=">"), v4()),
        (decode_null, null(24, SYN6), v6()),
        (decode_null, null(28, SYN6, order=">"), v6()),
        (decode_null, null(30, SYN6), v6()),
        (decode_ip, SYN4, v4()),
        (decode_ip, SYN6, v6()),
    ],
)
def test_link_layers_decode_tcp(decoder: Decoder, frame: bytes, expected: Packet) -> None:
    assert decoder(frame) == expected
    assert decoder(memoryview(frame)) == expected


def test_decode_ip_at_an_offset() -> None:
    assert decode_ip(b"junk" + SYN6, 4) == v6()
    with pytest.raises(DecodeError):
        decode_ip(SYN4, len(SYN4))


def test_addresses_are_bytes_from_a_memoryview() -> None:
    packet = decode_ethernet(memoryview(ethernet(ETH_IPV6, SYN6)))
    assert packet is not None
    assert type(packet[1]) is bytes
    assert type(packet[2]) is bytes


@pytest.mark.parametrize(
    ("linktype", "frame"),
    [
        (0, null(2, SYN4)),
        (108, null(2, SYN4, order=">")),
        (108, null(24, SYN6, order=">")),
        (1, ethernet(ETH_IPV4, SYN4)),
        (101, SYN4),
        (101, SYN6),
        (12, SYN4),
        (14, SYN6),
        (228, SYN4),
        (229, SYN6),
        (113, sll(ETH_IPV4, SYN4)),
        (276, sll2(ETH_IPV6, SYN6)),
    ],
)
def test_decoder_for_linktype(linktype: int, frame: bytes) -> None:
    packet = decoder_for_linktype(linktype)(frame)
    assert packet is not None
    assert packet[3:6] == (40000, 22, SYN)


def test_linktype_ipv4_and_ipv6_insist_on_their_version() -> None:
    with pytest.raises(DecodeError):
        decoder_for_linktype(228)(SYN6)
    with pytest.raises(DecodeError):
        decoder_for_linktype(229)(SYN4)


@pytest.mark.parametrize("linktype", [2, 9, 105, 127, 147])
def test_unsupported_linktype(linktype: int) -> None:
    with pytest.raises(CaptureError, match=str(linktype)):
        decoder_for_linktype(linktype)


def test_too_many_vlan_tags() -> None:
    with pytest.raises(DecodeError):
        decode_ethernet(ethernet(ETH_IPV4, SYN4, tags=(0x8100,) * 9))


# --- not for us ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decoder", "frame"),
    [
        (decode_ethernet, ethernet(ETH_ARP, bytes(28))),
        (decode_ethernet, ethernet(0x88CC, bytes(40))),  # LLDP
        (decode_ethernet, ethernet(0x0026, bytes(46))),  # 802.3 length field
        (decode_sll, sll(ETH_ARP, bytes(28))),
        (decode_null, null(7, SYN4)),
        (decode_ip, ipv4(ICMP, bytes(8))),
        (decode_ip, ipv4(47, bytes(8))),  # GRE: tunnels are not followed
        (decode_ip, ipv6(ICMP6, bytes(8))),
        (decode_ip, ipv6(ESP, bytes(16))),
        (decode_ip, ipv6(NO_NEXT, b"")),
        (decode_ip, ipv6(HOP_BY_HOP, ext6(ICMP6) + bytes(8))),
        (decode_ip, ipv6(DEST_OPTS, ext6(ESP) + bytes(16))),
        (decode_ip, ipv6(ROUTING, ext6(NO_NEXT))),
    ],
)
def test_not_tcp_or_udp_is_none(decoder: Decoder, frame: bytes) -> None:
    assert decoder(frame) is None


# --- IPv4 / IPv6 details ---------------------------------------------------------------------


def test_udp() -> None:
    assert decode_ip(UDP4) == _packet(UDP, SRC4, DST4, (5353, 53), 0)
    assert decode_ip(UDP6) == _packet(UDP, SRC6, DST6, (5353, 53), 0)


@pytest.mark.parametrize("flags", range(256))
def test_all_tcp_flag_bits_carried(flags: int) -> None:
    assert decode_ethernet(ethernet(ETH_IPV4, ipv4(TCP, tcp(flags=flags)))) == v4(flags=flags)
    assert decode_ip(ipv6(TCP, tcp(flags=flags))) == v6(flags=flags)


def test_ipv4_options_and_ttl() -> None:
    frame = ipv4(TCP, tcp(1, 2, FIN), options=bytes.fromhex("01010100") * 2, ttl=3)
    assert decode_ip(frame) == v4(1, 2, FIN, ttl=3, options=True)


def test_tcp_options_and_payload_are_skipped() -> None:
    frame = ipv4(TCP, tcp(options=MSS + bytes.fromhex("01010402"), payload=b"x" * 100))
    assert decode_ip(frame) == v4()


@pytest.mark.parametrize(
    ("first", "chain", "options"),
    [
        (HOP_BY_HOP, ext6(ROUTING) + ext6(DEST_OPTS, 1) + ext6(FRAGMENT) + frag6(TCP), True),
        (HOP_BY_HOP, ext6(TCP, 2), True),
        (DEST_OPTS, ext6(TCP), True),
        (ROUTING, ext6(TCP, 3), False),
        (AH, ah6(TCP), False),
        (ROUTING, ext6(AH) + ah6(DEST_OPTS, 1) + ext6(TCP), True),
        (135, ext6(TCP), False),  # mobility
        (139, ext6(TCP), False),  # HIP
        (140, ext6(TCP), False),  # shim6
        (253, ext6(254) + ext6(TCP), False),  # experimental
        (FRAGMENT, frag6(TCP), False),  # atomic fragment: a whole packet
    ],
)
def test_ipv6_extension_chains(first: int, chain: bytes, options: bool) -> None:
    frame = ipv6(first, chain + tcp(1234, 80, SYN | ACK), hop_limit=7)
    assert decode_ip(frame) == v6(1234, 80, SYN | ACK, ttl=7, options=options)


def test_ipv6_extension_walk_is_bounded() -> None:
    sixteen = ext6(DEST_OPTS) * 15 + ext6(TCP)
    assert decode_ip(ipv6(DEST_OPTS, sixteen + tcp())) == v6(options=True)
    seventeen = ext6(DEST_OPTS) * 16 + ext6(TCP)
    with pytest.raises(DecodeError, match="too many"):
        decode_ip(ipv6(DEST_OPTS, seventeen + tcp()))


def test_ipv6_jumbo_payload_length_zero_trusts_the_capture() -> None:
    frame = ipv6(HOP_BY_HOP, ext6(TCP) + tcp(), payload_length=0)
    assert decode_ip(frame) == v6(options=True)


def test_ethernet_padding_is_ignored() -> None:
    frame = ethernet(ETH_IPV4, ipv4(UDP, udp(1, 2))) + bytes(18)
    assert decode_ethernet(frame) == _packet(UDP, SRC4, DST4, (1, 2), 0)


# --- fragments -------------------------------------------------------------------------------


def test_nmap_f_ipv4_fragment_train() -> None:
    """``nmap -f``: a 20-byte TCP header spread over fragments of 8, 8 and 4 bytes."""
    header = tcp(40000, 22, SYN)
    first = ipv4(TCP, header[:8], more_fragments=True)
    second = ipv4(TCP, header[8:16], frag_offset=1, more_fragments=True)
    third = ipv4(TCP, header[16:], frag_offset=2)
    assert decode_ip(first) == v4(40000, 22, 0, frag=Frag.TINY)
    assert decode_ip(second) == v4(0, 0, 0, frag=Frag.OVERLAP)
    assert decode_ip(third) == v4(0, 0, 0, frag=Frag.OVERLAP)


def test_nmap_f_ipv6_fragment_train() -> None:
    header = tcp(40000, 22, SYN, options=MSS)
    first = ipv6(FRAGMENT, frag6(TCP, 0, more=True) + header[:8])
    second = ipv6(FRAGMENT, frag6(TCP, 1, more=True) + header[8:16])
    third = ipv6(FRAGMENT, frag6(TCP, 2, more=True) + header[16:24])
    assert decode_ip(first) == v6(40000, 22, 0, frag=Frag.TINY)
    assert decode_ip(second) == v6(0, 0, 0, frag=Frag.OVERLAP)
    assert decode_ip(third) == v6(0, 0, 0, frag=Frag.OVERLAP)


@pytest.mark.parametrize(
    ("tcp_bytes", "expected"),
    [
        (0, v4(0, 0, 0, frag=Frag.TINY)),
        (3, v4(0, 0, 0, frag=Frag.TINY)),
        (4, v4(40000, 22, 0, frag=Frag.TINY)),
        (13, v4(40000, 22, 0, frag=Frag.TINY)),
        (14, v4(40000, 22, SYN | PSH)),
        (20, v4(40000, 22, SYN | PSH)),
        (24, v4(40000, 22, SYN | PSH)),
    ],
)
def test_ipv4_first_fragment(tcp_bytes: int, expected: Packet) -> None:
    segment = tcp(40000, 22, SYN | PSH, options=MSS, payload=b"data")
    frame = ipv4(TCP, segment[:tcp_bytes], more_fragments=True)
    assert decode_ip(frame) == expected
    # Tiny is judged by the IP length, not by what the capture holds (Ethernet padding).
    assert decode_ethernet(ethernet(ETH_IPV4, frame) + bytes(40)) == expected


@pytest.mark.parametrize(
    ("udp_bytes", "expected"),
    [
        (2, _packet(UDP, SRC4, DST4, (0, 0), 0, frag=Frag.TINY)),
        (4, _packet(UDP, SRC4, DST4, (7, 9), 0, frag=Frag.TINY)),
        (7, _packet(UDP, SRC4, DST4, (7, 9), 0, frag=Frag.TINY)),
        (8, _packet(UDP, SRC4, DST4, (7, 9), 0)),
    ],
)
def test_ipv4_first_fragment_udp(udp_bytes: int, expected: Packet) -> None:
    frame = ipv4(UDP, udp(7, 9, b"payload")[:udp_bytes], more_fragments=True)
    assert decode_ip(frame) == expected


@pytest.mark.parametrize(
    ("proto", "offset", "expected"),
    [
        (TCP, 1, v4(0, 0, 0, frag=Frag.OVERLAP)),
        (TCP, 2, v4(0, 0, 0, frag=Frag.OVERLAP)),
        (TCP, 3, None),
        (TCP, 185, None),
        (UDP, 1, None),
        (ICMP, 1, None),
    ],
)
def test_ipv4_later_fragment(proto: int, offset: int, expected: Packet | None) -> None:
    frame = ipv4(proto, bytes(8), frag_offset=offset, more_fragments=True)
    assert decode_ip(frame) == expected


@pytest.mark.parametrize(
    ("next_header", "offset", "expected"),
    [
        (TCP, 1, v6(0, 0, 0, options=True, frag=Frag.OVERLAP)),
        (TCP, 3, None),
        (UDP, 1, None),
        (ICMP6, 1, None),
    ],
)
def test_ipv6_later_fragment_uses_the_fragment_next_header(
    next_header: int, offset: int, expected: Packet | None
) -> None:
    frame = ipv6(HOP_BY_HOP, ext6(FRAGMENT) + frag6(next_header, offset) + bytes(8))
    assert decode_ip(frame) == expected


def test_ipv6_first_fragment_with_the_whole_header() -> None:
    frame = ipv6(FRAGMENT, frag6(DEST_OPTS, 0, more=True) + ext6(UDP) + udp(1, 2))
    assert decode_ip(frame) == _packet(UDP, SRC6, DST6, (1, 2), 0, options=True)


def test_ipv6_tiny_udp_fragment_after_options() -> None:
    frame = ipv6(FRAGMENT, frag6(DEST_OPTS, 0, more=True) + ext6(UDP) + udp(1, 2)[:6])
    assert decode_ip(frame) == _packet(UDP, SRC6, DST6, (1, 2), 0, options=True, frag=Frag.TINY)


# --- malformed -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decoder", "frame", "reason"),
    [
        (decode_ip, ipv4(TCP, tcp(), ihl=4), "header length below 5"),
        (decode_ip, ipv4(TCP, b"", ihl=7, total_length=60), "options truncated"),
        (decode_ip, ipv4(TCP, tcp(), total_length=19), "total length below"),
        (decode_ip, ipv4(TCP, tcp(), total_length=39), "TCP header cut short by the IP"),
        (decode_ip, ipv4(UDP, udp(), total_length=27), "UDP header cut short by the IP"),
        (decode_ip, ipv4(TCP, tcp(data_offset=4)), "data offset below 5"),
        (decode_ip, ipv4(TCP, tcp(data_offset=6)), "data offset past the IP length"),
        (decode_ip, ipv4(TCP, tcp(data_offset=3)[:16], more_fragments=True), "below 5"),
        (decode_ip, ipv4(TCP, tcp(), version=5), "neither 4 nor 6"),
        (decode_ip, b"", "no IP header"),
        (decode_ethernet, ethernet(ETH_IPV4, SYN6), "version nibble"),
        (decode_ethernet, ethernet(ETH_IPV6, SYN4), "version nibble"),
        (decode_sll, sll(ETH_IPV6, SYN4), "version nibble"),
        (decode_null, null(2, SYN6), "version nibble"),
        (decode_null, null(30, SYN4), "version nibble"),
        (decode_ip, ipv6(ROUTING, ext6(TCP, 3) + tcp(), payload_length=24), "past the payload"),
        (decode_ip, ipv6(TCP, tcp(), payload_length=12), "TCP header cut short by the IP"),
    ],
)
def test_malformed_raises(decoder: Decoder, frame: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decoder(frame)


# --- truncation ------------------------------------------------------------------------------

LONG4 = ipv4(TCP, tcp(flags=SYN, options=MSS, payload=b"p" * 12), options=bytes(4))
# hop-by-hop -> routing -> destination options -> atomic fragment -> AH -> TCP (64 bytes)
CHAIN6 = ext6(ROUTING) + ext6(DEST_OPTS, 1) + ext6(FRAGMENT) + frag6(AH) + ah6(TCP)

# (decoder, frame, bytes of headers that must be captured, decode of the whole frame)
TRUNCATION_CASES: list[tuple[Decoder, bytes, int, Packet | None]] = [
    (decode_ethernet, ethernet(ETH_IPV4, LONG4), 14 + 24 + 20, v4(options=True)),
    (decode_ethernet, ethernet(ETH_IPV6, SYN6, tags=(0x88A8, 0x8100)), 22 + 40 + 20, v6()),
    (decode_ethernet, ethernet(ETH_ARP, bytes(28)), 14, None),
    (decode_sll, sll(ETH_IPV4, UDP4), 16 + 20 + 8, _packet(UDP, SRC4, DST4, (5353, 53), 0)),
    (decode_sll2, sll2(ETH_IPV6, UDP6), 20 + 40 + 8, _packet(UDP, SRC6, DST6, (5353, 53), 0)),
    (decode_null, null(24, ipv6(HOP_BY_HOP, CHAIN6 + tcp())), 4 + 40 + 64 + 20, v6(options=True)),
    (decode_null, null(2, SYN4, order=">"), 4 + 20 + 20, v4()),
    (decode_ip, ipv4(TCP, tcp()[:8], more_fragments=True), 20 + 4, v4(40000, 22, 0, frag=1)),
    (decode_ip, ipv4(TCP, tcp()[:16], more_fragments=True), 20 + 16, v4(40000, 22, SYN)),
    (decode_ip, ipv4(TCP, bytes(8), frag_offset=1), 20, v4(0, 0, 0, frag=Frag.OVERLAP)),
    (decode_ip, ipv6(FRAGMENT, frag6(TCP, 2) + bytes(8)), 48, v6(0, 0, 0, frag=Frag.OVERLAP)),
    (decode_ip, ipv6(ESP, bytes(16)), 40, None),
]


@pytest.mark.parametrize(("decoder", "frame", "headers", "expected"), TRUNCATION_CASES)
def test_every_prefix(
    decoder: Decoder, frame: bytes, headers: int, expected: Packet | None
) -> None:
    """Cut inside the headers: DecodeError. Cut in the payload (a snap length): same result."""
    assert decoder(frame) == expected
    for length in range(len(frame)):
        prefix = memoryview(frame)[:length]
        if length < headers:
            with pytest.raises(DecodeError):
                decoder(prefix)
        else:
            assert decoder(prefix) == expected, length


# --- properties ------------------------------------------------------------------------------


def _check_outcome(decoder: Decoder, data: bytes) -> None:
    """Whatever the bytes: a well-formed Packet, None, or DecodeError; nothing else."""
    try:
        packet = decoder(data)
    except DecodeError:
        return
    if packet is None:
        return
    proto, src, dst, sport, dport, flags, ttl, options, frag = packet
    assert proto in (TCP, UDP)
    assert type(src) is bytes
    assert len(src) == len(dst)
    assert len(src) in (4, 16)
    assert 0 <= sport <= 0xFFFF
    assert 0 <= dport <= 0xFFFF
    assert 0 <= flags <= 0xFF
    assert flags == 0 or proto == TCP
    assert 0 <= ttl <= 0xFF
    assert isinstance(options, bool)
    assert frag in tuple(Frag)


FAST = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=120))
def test_random_bytes(data: bytes) -> None:
    for decoder in DECODERS:
        _check_outcome(decoder, data)


VALID_FRAMES = [frame for _, frame, _, _ in TRUNCATION_CASES]


@FAST
@given(
    st.sampled_from(VALID_FRAMES),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(0, 200),
)
def test_mutated_valid_frames(frame: bytes, edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(frame)
    for position, value in edits:
        data[position % len(data)] = value
    mutated = bytes(data[: len(data) - cut % 8])
    for decoder in DECODERS:
        _check_outcome(decoder, mutated)


@FAST
@given(
    six=st.booleans(),
    proto=st.sampled_from([TCP, UDP]),
    sport=st.integers(0, 0xFFFF),
    dport=st.integers(0, 0xFFFF),
    flags=st.integers(0, 0xFF),
    ttl=st.integers(0, 0xFF),
    n_tags=st.integers(0, 2),
)
def test_round_trip(
    *, six: bool, proto: int, sport: int, dport: int, flags: int, ttl: int, n_tags: int
) -> None:
    """Fields written by the builders come back unchanged, over raw IP and tagged Ethernet."""
    body = tcp(sport, dport, flags) if proto == TCP else udp(sport, dport)
    if six:
        packet, ethertype, src, dst = ipv6(proto, body, hop_limit=ttl), ETH_IPV6, SRC6, DST6
    else:
        packet, ethertype, src, dst = ipv4(proto, body, ttl=ttl), ETH_IPV4, SRC4, DST4
    expected = _packet(proto, src, dst, (sport, dport), flags if proto == TCP else 0, ttl=ttl)
    assert decode_ip(packet) == expected
    assert decode_ethernet(ethernet(ethertype, packet, tags=(0x8100,) * n_tags)) == expected


def _outcome(decoder: Decoder, buf: bytes) -> Packet | str | None:
    try:
        return decoder(buf)
    except DecodeError as exc:
        return f"error: {exc}"


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.binary(min_size=34, max_size=34),
    tail=st.binary(min_size=0, max_size=30),
    vhl=st.sampled_from([0x45, 0x46, 0x44]),
    proto=st.sampled_from([6, 17, 1]),
    frag=st.sampled_from([0, 0x2000, 0x4000, 0x0001, 0x4001]),
    doff=st.integers(0, 255),
)
def test_ipv4_tcp_fast_path_agrees_with_the_general_decoder(  # noqa: PLR0917
    header: bytes, tail: bytes, vhl: int, proto: int, frag: int, doff: int
) -> None:
    buf = bytearray(header + tail)
    buf[0], buf[9], buf[32] = vhl, proto, doff
    buf[6:8] = frag.to_bytes(2, "big")
    total = int.from_bytes(buf[2:4], "big") % (len(buf) + 40)
    buf[2:4] = total.to_bytes(2, "big")
    assert _outcome(decode_ip, bytes(buf)) == _outcome(lambda b: _ip4(b, 0), bytes(buf))


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.binary(min_size=34, max_size=34),
    tail=st.binary(min_size=0, max_size=30),
    ethertype=st.sampled_from([ETH_IPV4, ETH_IPV6, 0x8100, 0x0806]),
    vhl=st.sampled_from([0x45, 0x46, 0x44, 0x65]),
    proto=st.sampled_from([6, 17, 1]),
    frag=st.sampled_from([0, 0x2000, 0x4000, 0x0001, 0x4001]),
    doff=st.integers(0, 255),
)
def test_ethernet_ipv4_tcp_fast_path_agrees_with_the_general_decoder(  # noqa: PLR0917
    header: bytes, tail: bytes, ethertype: int, vhl: int, proto: int, frag: int, doff: int
) -> None:
    buf = bytearray(header + tail)
    buf[0], buf[9], buf[32] = vhl, proto, doff
    buf[6:8] = frag.to_bytes(2, "big")
    total = int.from_bytes(buf[2:4], "big") % (len(buf) + 40)
    buf[2:4] = total.to_bytes(2, "big")
    frame = bytes(12) + ethertype.to_bytes(2, "big") + bytes(buf)
    # The general way to the same bytes: the ethertype, then the IPv4 decoder at offset 14.
    general = _outcome(decode_sll2, ethertype.to_bytes(2, "big") + bytes(18) + bytes(buf))
    assert _outcome(decode_ethernet, frame) == general


def _at(buf: bytes | memoryview, offset: int, length: int) -> Packet | str | None:
    try:
        return decode_ip(buf, offset, length)
    except DecodeError as exc:
        return f"error: {exc}"


@FAST
@given(
    packet=st.one_of(st.sampled_from(VALID_FRAMES), st.binary(max_size=80)),
    before=st.binary(max_size=40),
    after=st.binary(max_size=40),
    cut=st.integers(0, 60),
)
def test_decoding_in_place_equals_decoding_a_copy(
    packet: bytes, before: bytes, after: bytes, cut: int
) -> None:
    # The live capture decodes inside its ring: the bytes around a packet must not matter.
    packet = packet[: max(0, len(packet) - cut)]
    ring = memoryview(before + packet + after)
    assert _at(ring, len(before), len(packet)) == _outcome(decode_ip, packet)
