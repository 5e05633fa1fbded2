"""Tests for ``portsentinel.capture.bpf``: the prefilter run on synthetic packets.

Packets are built here field by field and start at the network header, as the cooked
AF_PACKET socket hands them to the kernel filter.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portsentinel.capture import bpf
from portsentinel.capture.bpf import PortFilter, build_filter, execute, run_filter
from portsentinel.model import QUIET_MARK

SYN, FIN, RST, PSH, ACK, URG = 0x02, 0x01, 0x04, 0x08, 0x10, 0x20
HOST, BROADCAST, MULTICAST, OTHERHOST, OUTGOING = 0, 1, 2, 3, 4
ADVANCED_UDP = PortFilter.under(1024, exclude={67, 137, 138, 520})
DEFAULT = build_filter(ADVANCED_UDP)


def tcp(dport: int = 22, flags: int = SYN) -> bytes:
    return struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 5 << 4, flags, 1024, 0, 0)


def udp(dport: int = 53) -> bytes:
    return struct.pack("!HHHH", 40000, dport, 12, 0) + b"abcd"


def ip4(proto: int, body: bytes, *, options: bytes = b"", frag: int = 0) -> bytes:
    ihl = 5 + len(options) // 4
    head = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + len(body), 1, frag, 64, proto, 0,
        bytes([198, 18, 0, 2]), bytes([198, 18, 0, 1]),
    )  # fmt: skip
    return head + options + body


def ip6(next_header: int, body: bytes) -> bytes:
    addresses = bytes.fromhex("fd005e00000000000000000000000002fd005e00000000000000000000000001")
    return struct.pack("!IHBB", 6 << 28, len(body), next_header, 64) + addresses + body


def ext6(next_header: int) -> bytes:
    return struct.pack("!BB", next_header, 0) + b"\x01\x04\0\0\0\0"


def passes(
    packet: bytes,
    program: list[bpf.Instruction] = DEFAULT,
    *,
    pkttype: int = HOST,
    protocol: int | None = None,
    vlan_tci: int | None = None,
) -> bool:
    return run_filter(program, packet, pkttype, protocol=protocol, vlan_tci=vlan_tci)


# --- TCP: no ACK, no RST -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (SYN, True),
        (FIN, True),
        (0, True),  # NULL scan
        (FIN | PSH | URG, True),  # Xmas scan
        (SYN | FIN, True),
        (SYN | ACK, False),
        (ACK, False),
        (RST, False),
        (RST | ACK, False),
        (FIN | ACK, False),
        (PSH | ACK, False),
    ],
)
def test_tcp_passes_without_ack_or_rst(flags: int, expected: bool) -> None:
    assert passes(ip4(6, tcp(flags=flags))) is expected
    assert passes(ip6(6, tcp(flags=flags))) is expected


def test_ipv4_header_length_is_read_from_the_packet() -> None:
    # With 8 bytes of options, a fixed 20-byte offset would read a zero sequence byte as flags.
    assert not passes(ip4(6, tcp(flags=ACK), options=bytes(8)))
    assert passes(ip4(6, tcp(flags=SYN), options=bytes(40)))
    # An options word that looks like a watched UDP port where a fixed offset would look.
    decoy = struct.pack("!HH", 0, 53) + bytes(4)
    assert not passes(ip4(17, udp(40000), options=decoy))
    assert passes(ip4(17, udp(53), options=bytes(8)))


def test_tcp_ports_are_not_checked_by_default() -> None:
    assert passes(ip4(6, tcp(dport=65535)))
    assert passes(ip6(6, tcp(dport=1)))


def test_tcp_ports_can_be_restricted() -> None:
    program = build_filter(ADVANCED_UDP, PortFilter.of({22, 8080}))
    assert passes(ip4(6, tcp(22)), program)
    assert passes(ip6(6, tcp(8080)), program)
    assert not passes(ip4(6, tcp(23)), program)
    assert not passes(ip6(6, tcp(23)), program)
    assert not passes(ip4(6, tcp(22, flags=ACK)), program)


# --- UDP: watched ports only ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("port", "expected"),
    [(0, True), (1, True), (53, True), (67, False), (68, True), (137, False), (138, False),
     (139, True), (520, False), (1023, True), (1024, False), (40000, False), (65535, False)],
)  # fmt: skip
def test_udp_passes_to_watched_ports(port: int, expected: bool) -> None:
    assert passes(ip4(17, udp(port))) is expected
    assert passes(ip6(17, udp(port))) is expected


def test_no_watched_udp_port_drops_all_udp() -> None:
    program = build_filter(PortFilter())
    assert not passes(ip4(17, udp(53)), program)
    assert not passes(ip6(17, udp(53)), program)
    assert passes(ip4(6, tcp()), program)


def test_every_port_passes_all_udp() -> None:
    program = build_filter(PortFilter.every())
    assert all(passes(ip4(17, udp(port)), program) for port in (0, 53, 40000, 65535))


@given(
    below=st.integers(0, 65536),
    ports=st.frozensets(st.integers(0, 65535), max_size=40),
    exclude=st.frozensets(st.integers(0, 65535), max_size=40),
    probes=st.lists(st.integers(0, 65535), min_size=1, max_size=10),
)
def test_compiled_ports_match_the_description(
    below: int, ports: frozenset[int], exclude: frozenset[int], probes: list[int]
) -> None:
    watched = PortFilter(below, ports, exclude)
    program = build_filter(watched)
    edges = [below - 1, below, *ports, *(p + d for p in exclude for d in (-1, 0, 1))]
    for port in [*probes, *(p for p in edges if 0 <= p <= 65535)]:
        expected = (port < below or port in ports) and port not in exclude
        assert passes(ip4(17, udp(port)), program) is expected, port
        assert passes(ip6(17, udp(port)), program) is expected, port


def test_ranges_merge_and_subtract() -> None:
    watched = PortFilter(below=10, ports=frozenset({10, 12, 13, 20}), exclude=frozenset({0, 5, 13}))
    assert watched.ranges() == [(1, 4), (6, 10), (12, 12), (20, 20)]


def test_too_many_ports_fall_back_to_every_port() -> None:
    scattered = PortFilter.of(range(1000, 1000 + 2 * (bpf.MAX_PORT_TESTS + 1), 2))
    program = build_filter(scattered)
    assert passes(ip4(17, udp(1001)), program)  # not watched, passes anyway
    assert passes(ip6(17, udp(40000)), program)
    assert len(program) < len(DEFAULT)


def test_the_longest_chains_stay_within_jump_reach() -> None:
    most = PortFilter.of(range(1000, 1000 + 2 * bpf.MAX_PORT_TESTS, 2))
    program = build_filter(most, most)
    last = 1000 + 2 * (bpf.MAX_PORT_TESTS - 1)
    for build in (ip4, ip6):
        assert passes(build(17, udp(last)), program)
        assert not passes(build(17, udp(last + 1)), program)
        assert passes(build(6, tcp(1000)), program)
        assert not passes(build(6, tcp(999)), program)
        assert not passes(build(6, tcp(1000, flags=ACK)), program)


# --- fragments, IPv6 extension headers, other protocols -----------------------------------------
def test_ipv4_fragments_pass() -> None:
    later = ip4(6, b"\0" * 12, frag=1)  # offset 8 bytes: no transport header at all
    tiny_first = ip4(6, tcp(flags=ACK)[:8], frag=0x2000)  # MF, flags not even present
    unwatched_udp = ip4(17, b"\0" * 8, frag=0x2000 | 3)
    assert passes(later)
    assert passes(tiny_first)
    assert passes(unwatched_udp)
    assert not passes(ip4(1, b"\0" * 8, frag=1))  # ICMP fragment


@pytest.mark.parametrize("next_header", bpf.IP6_EXTENSIONS)
def test_ipv6_extension_headers_pass_to_user_space(next_header: int) -> None:
    assert passes(ip6(next_header, ext6(6) + tcp(flags=ACK)))


def test_ipv6_with_hop_by_hop_passes() -> None:
    assert passes(ip6(0, ext6(6) + tcp()))
    assert passes(ip6(0, ext6(17) + udp(40000)))


@pytest.mark.parametrize("next_header", [1, 58, 59, 50, 47, 132])
def test_other_ipv6_next_headers_are_dropped(next_header: int) -> None:
    assert not passes(ip6(next_header, bytes(40)))


def test_icmp_and_other_ethertypes_are_dropped() -> None:
    assert not passes(ip4(1, b"\x08\0\0\0\0\0\0\0"))
    assert not passes(ip4(47, bytes(40)))  # GRE
    arp = bytes.fromhex("0001080006040001") + bytes(20)
    assert not passes(arp, protocol=0x0806)
    # IPv4-looking bytes under another ethertype (MPLS, say) are not IPv4.
    assert not passes(ip4(6, tcp()), protocol=0x8847)


# --- who the frame is for ----------------------------------------------------------------------
@pytest.mark.parametrize("pkttype", [BROADCAST, MULTICAST, OTHERHOST, OUTGOING, 5, 6, 7])
def test_only_frames_to_this_host_pass(pkttype: int) -> None:
    assert passes(ip4(6, tcp()), pkttype=HOST)
    assert not passes(ip4(6, tcp()), pkttype=pkttype)
    assert not passes(ip4(17, udp(53)), pkttype=pkttype)
    assert not passes(ip6(0, ext6(6) + tcp()), pkttype=pkttype)


def test_a_frame_still_tagged_for_a_vlan_is_left_for_the_vlan_device() -> None:
    assert not passes(ip4(6, tcp()), vlan_tci=100)
    assert not passes(ip4(6, tcp()), vlan_tci=0xE000 | 100)  # priority bits set too
    assert passes(ip4(6, tcp()), vlan_tci=0xE000)  # priority tag only: VLAN 0
    assert passes(ip4(6, tcp()), vlan_tci=None)


def test_truncated_headers_are_dropped_as_the_kernel_does() -> None:
    assert not passes(ip4(6, tcp()[:13]))  # flags byte missing
    assert not passes(ip6(17, udp()[:3]))
    assert not passes(b"")


def test_passing_packets_are_cut_to_the_snap_length() -> None:
    assert execute(DEFAULT, ip4(6, tcp()), HOST) == bpf.DEFAULT_SNAPLEN
    assert execute(build_filter(ADVANCED_UDP, snaplen=96), ip6(6, tcp()), HOST) == 96
    assert execute(DEFAULT, ip4(6, tcp(flags=ACK)), HOST) == 0
    with pytest.raises(ValueError, match="snaplen"):
        build_filter(ADVANCED_UDP, snaplen=0)


# --- the program and the interpreter -----------------------------------------------------------
def test_opcodes_have_their_kernel_values() -> None:
    # From linux/filter.h (and ``tcpdump -dd``): class | size | mode.
    assert (bpf.LD_W_ABS, bpf.LD_H_ABS, bpf.LD_B_ABS) == (0x20, 0x28, 0x30)
    assert (bpf.LD_H_IND, bpf.LD_B_IND, bpf.LDX_B_MSH) == (0x48, 0x50, 0xB1)
    assert (bpf.JMP_JA, bpf.JMP_JEQ_K, bpf.JMP_JGT_K, bpf.JMP_JGE_K) == (0x05, 0x15, 0x25, 0x35)
    assert (bpf.JMP_JSET_K, bpf.RET_K, bpf.ALU_AND_K) == (0x45, 0x06, 0x54)
    assert bpf.AD_PKTTYPE == (-0x1000 + 4) & 0xFFFFFFFF
    assert bpf.AD_MARK == (-0x1000 + 20) & 0xFFFFFFFF  # SKF_AD_MARK


def test_the_default_program_is_short_and_well_formed() -> None:
    bpf.validate(DEFAULT)
    assert len(DEFAULT) <= 80
    assert DEFAULT[0] == (bpf.LD_W_ABS, 0, 0, bpf.AD_MARK)  # a quiet source's mark first
    assert DEFAULT[2] == (bpf.LD_W_ABS, 0, 0, bpf.AD_PKTTYPE)
    assert all(
        0 <= jt <= 255 and 0 <= jf <= 255 and 0 <= k <= 0xFFFFFFFF for _, jt, jf, k in DEFAULT
    )
    listing = bpf.disassemble(DEFAULT).splitlines()
    assert len(listing) == len(DEFAULT)
    assert sum("ldxb  4*([0]&0xf)" in line for line in listing) == 2  # UDP and TCP over IPv4


@pytest.mark.parametrize(
    ("program", "message"),
    [
        ([], "1..4096"),
        ([(0x04, 0, 0, 1), (bpf.RET_K, 0, 0, 0)], "unsupported opcode 0x04"),  # add
        ([(0x61, 0, 0, 1), (bpf.RET_K, 0, 0, 0)], "unsupported opcode 0x61"),  # ldx M[1]
        ([(bpf.LD_W_ABS, 0, 0, bpf.SKF_AD_OFF + 8), (bpf.RET_K, 0, 0, 0)], "ancillary"),
        ([(bpf.JMP_JEQ_K, 0, 1, 0), (bpf.RET_K, 0, 0, 0)], "past the end"),
        ([(bpf.JMP_JA, 0, 0, 1), (bpf.RET_K, 0, 0, 0)], "past the end"),
        ([(bpf.LD_B_ABS, 0, 0, 0)], "past the end"),  # no final return
    ],
)
def test_the_interpreter_rejects_what_it_does_not_know(
    program: list[bpf.Instruction], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        run_filter(program, ip4(6, tcp()), HOST)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"below": 65537}, "0..65536"), ({"ports": frozenset({70000})}, "0..65535")],
)
def test_port_filters_reject_impossible_ports(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PortFilter(**kwargs)  # type: ignore[arg-type]


def test_a_quiet_sources_marked_probe_stays_in_the_kernel() -> None:
    probe = ip4(6, tcp(22))
    assert run_filter(DEFAULT, probe, HOST, mark=0)
    assert not run_filter(DEFAULT, probe, HOST, mark=QUIET_MARK)
    assert run_filter(DEFAULT, probe, HOST, mark=QUIET_MARK + 1)  # another's mark: passes
    assert not run_filter(DEFAULT, ip6(17, udp(53)), HOST, mark=QUIET_MARK)
    assert "#mark" in bpf.disassemble(DEFAULT).splitlines()[0]
