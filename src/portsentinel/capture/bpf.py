"""The classic BPF prefilter of the live capture: only probe-shaped packets reach Python.

Why a kernel filter: on a 90%-ACK mix it cut the reader's CPU tenfold with no probe lost (see
``shared/reference/capture-perf.md``). Established traffic, the host's own replies (they carry
ACK or RST), ICMP, ARP and every non-unicast frame stay in the kernel.

What passes (offsets are relative to the network header: the capture socket is ``SOCK_DGRAM``,
so the same program serves Ethernet, VLAN, tun, WireGuard and ppp):

- nothing a quiet source sent (marked ``QUIET_MARK`` at ingress: ``block/quiet.py``);
- only ``PACKET_HOST`` frames (addressed to this host), read with the ancillary load
  ``SKF_AD_PKTTYPE``; frames that still carry a VLAN tag with a non-zero VLAN id are dropped,
  because the kernel hands them again to the VLAN device (or to nobody), so one packet is
  seen once;
- IPv4 (``SKF_AD_PROTOCOL``): TCP without ACK and RST; UDP to a watched port; any TCP or UDP
  fragment (the first fragment may be too short to hold the flags, which the decoder reports
  as ``Frag.TINY``; later ones as ``Frag.OVERLAP``). The header length is variable, hence
  ``ldxb 4*([0]&0xf)``;
- IPv6: TCP without ACK and RST and UDP to a watched port when the next header says so
  directly; any extension header that may hide TCP or UDP (the ones ``decode.py`` walks)
  passes to user space, which decodes it.

Ports: a ``PortFilter`` describes the watched destination ports. It compiles to a short chain
of range tests; past ``MAX_PORT_TESTS`` tests the chain is replaced by "every port", because
passing too much is only a cost while dropping too much loses probes.

``run_filter`` is a small interpreter of exactly the opcodes ``build_filter`` emits, so the
program can be tested on synthetic packets without root.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from portsentinel.model import QUIET_MARK

Instruction = tuple[int, int, int, int]
"""One ``struct sock_filter``: (code, jt, jf, k) with k as an unsigned 32-bit value."""

# --- Opcodes: class | size | mode, and only the combinations this module emits ---------------
LD_W_ABS: Final = 0x20  # BPF_LD | BPF_W | BPF_ABS (used for ancillary loads)
LD_H_ABS: Final = 0x28  # BPF_LD | BPF_H | BPF_ABS
LD_B_ABS: Final = 0x30  # BPF_LD | BPF_B | BPF_ABS
LD_H_IND: Final = 0x48  # BPF_LD | BPF_H | BPF_IND
LD_B_IND: Final = 0x50  # BPF_LD | BPF_B | BPF_IND
LDX_B_MSH: Final = 0xB1  # BPF_LDX | BPF_B | BPF_MSH: X = 4 * (pkt[k] & 0xf)
ALU_AND_K: Final = 0x54  # BPF_ALU | BPF_AND | BPF_K
JMP_JA: Final = 0x05  # BPF_JMP | BPF_JA
JMP_JEQ_K: Final = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
JMP_JGT_K: Final = 0x25  # BPF_JMP | BPF_JGT | BPF_K
JMP_JGE_K: Final = 0x35  # BPF_JMP | BPF_JGE | BPF_K
JMP_JSET_K: Final = 0x45  # BPF_JMP | BPF_JSET | BPF_K
RET_K: Final = 0x06  # BPF_RET | BPF_K

# Ancillary loads: k = SKF_AD_OFF + n, SKF_AD_OFF being -0x1000 (as u32: 0xfffff000).
SKF_AD_OFF: Final = 0xFFFFF000
AD_PROTOCOL: Final = SKF_AD_OFF + 0  # ntohs(skb->protocol): the ethertype
AD_PKTTYPE: Final = SKF_AD_OFF + 4  # skb->pkt_type: PACKET_HOST, _BROADCAST, ...
AD_MARK: Final = SKF_AD_OFF + 20  # skb->mark
AD_VLAN_TAG: Final = SKF_AD_OFF + 44  # the VLAN TCI held outside the frame
AD_VLAN_TAG_PRESENT: Final = SKF_AD_OFF + 48

PACKET_HOST: Final = 0
ETH_P_IP: Final = 0x0800
ETH_P_IPV6: Final = 0x86DD
IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17
TCP_ACK_OR_RST: Final = 0x14
IP4_FRAGMENT_BITS: Final = 0x3FFF  # MF flag and the 13-bit fragment offset
VLAN_ID_MASK: Final = 0x0FFF
# Extension headers that may sit between IPv6 and TCP/UDP: hop-by-hop, routing, fragment,
# AH, destination options, mobility, HIP, shim6, and the two experimental values.
IP6_EXTENSIONS: Final = (0, 43, 44, 51, 60, 135, 139, 140, 253, 254)

DEFAULT_SNAPLEN: Final = 256
"""Bytes kept per packet: room for a 60-byte IPv4 header or IPv6 extension headers, the
transport header, and the start of a UDP payload; what a ring slot costs stays small."""

MAX_PORT_TESTS: Final = 200
"""Most compare instructions a port chain may take (a jump reaches 255 instructions)."""

_MAX_JUMP: Final = 255
_MAX_PORT: Final = 65535
_BPF_MAXINSNS: Final = 4096

PortRange = tuple[int, int]


@dataclass(frozen=True, slots=True)
class PortFilter:
    """Watched destination ports: ``port < below`` or ``port in ports``, unless excluded.

    ``PortFilter.under(1024, exclude={137, 138})`` is PortSentry's advanced mode,
    ``PortFilter.of({31337, 54321})`` its classic port lists, ``PortFilter.every()`` no
    restriction and ``PortFilter()`` no port at all.
    """

    below: int = 0
    ports: frozenset[int] = field(default_factory=frozenset)
    exclude: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not 0 <= self.below <= _MAX_PORT + 1:
            raise ValueError(f"port bound {self.below} is outside 0..65536")
        for port in self.ports | self.exclude:
            if not 0 <= port <= _MAX_PORT:
                raise ValueError(f"port {port} is outside 0..65535")

    @classmethod
    def every(cls) -> PortFilter:
        """All ports pass."""
        return cls(below=_MAX_PORT + 1)

    @classmethod
    def under(cls, bound: int, exclude: Iterable[int] = ()) -> PortFilter:
        """Ports below ``bound``, minus ``exclude`` (advanced mode)."""
        return cls(below=bound, exclude=frozenset(exclude))

    @classmethod
    def of(cls, ports: Iterable[int]) -> PortFilter:
        """Exactly these ports."""
        return cls(ports=frozenset(ports))

    def ranges(self) -> list[PortRange]:
        """The watched ports as sorted, disjoint, inclusive ranges."""
        merged: list[PortRange] = []
        starts = ([(0, self.below - 1)] if self.below else []) + [(p, p) for p in self.ports]
        for lo, hi in sorted(starts):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
            else:
                merged.append((lo, hi))
        return _subtract(merged, sorted(self.exclude))


def _subtract(ranges: list[PortRange], excluded: list[int]) -> list[PortRange]:
    """``ranges`` without the sorted ``excluded`` ports, in one pass over both."""
    out: list[PortRange] = []
    i = 0
    for lo, hi in ranges:
        while i < len(excluded) and excluded[i] < lo:
            i += 1
        start = lo
        while i < len(excluded) and excluded[i] <= hi:
            if excluded[i] > start:
                out.append((start, excluded[i] - 1))
            start = excluded[i] + 1
            i += 1
        if start <= hi:
            out.append((start, hi))
    return out


# --- A tiny assembler: forward labels, checked jump reach -------------------------------------
Target = str | None  # a label, or None for "the next instruction"
_SKIP_ONE: Final = "+1"  # a pseudo-label: skip exactly one instruction


class _Asm:
    """Collects instructions with symbolic forward jumps and resolves them."""

    def __init__(self) -> None:
        self._items: list[str | tuple[int, Target, Target, int | str]] = []

    def label(self, name: str) -> None:
        self._items.append(name)

    def op(self, code: int, k: int = 0, jt: Target = None, jf: Target = None) -> None:
        self._items.append((code, jt, jf, k))

    def ja(self, target: str) -> None:
        """An unconditional jump: its 32-bit offset reaches anywhere forward."""
        self._items.append((JMP_JA, None, None, target))

    def jeq_far(self, value: int, target: str) -> None:
        """``if A == value: goto target`` for targets beyond a conditional jump's reach."""
        self.op(JMP_JEQ_K, value, None, _SKIP_ONE)
        self.ja(target)

    def assemble(self) -> list[Instruction]:
        where: dict[str, int] = {}
        pc = 0
        for item in self._items:
            if isinstance(item, str):
                if item in where:
                    raise ValueError(f"BPF label {item!r} defined twice")
                where[item] = pc
            else:
                pc += 1
        program: list[Instruction] = []
        for item in self._items:
            if isinstance(item, str):
                continue
            code, jt, jf, k = item
            pc = len(program)
            if isinstance(k, str):
                k = _offset(where, k, pc, limit=None)
            program.append((code, _offset(where, jt, pc), _offset(where, jf, pc), k))
        return program


def _offset(where: dict[str, int], target: Target, pc: int, limit: int | None = _MAX_JUMP) -> int:
    if target is None:
        return 0
    if target == _SKIP_ONE:
        return 1
    distance = where[target] - pc - 1
    if distance < 0 or (limit is not None and distance > limit):
        raise ValueError(f"BPF jump to {target!r} out of reach ({distance})")
    return distance


# --- The program -------------------------------------------------------------------------------
def build_filter(
    udp: PortFilter, tcp: PortFilter | None = None, *, snaplen: int = DEFAULT_SNAPLEN
) -> list[Instruction]:
    """The prefilter: probe-shaped TCP (no ACK, no RST), UDP to ``udp`` ports, fragments.

    ``tcp=None`` checks TCP flags only (the detector checks ports); a ``PortFilter`` restricts
    TCP destination ports as well. Passing packets are cut to ``snaplen`` bytes.
    """
    if not 1 <= snaplen <= 0xFFFF:
        raise ValueError(f"snaplen {snaplen} is outside 1..65535")
    asm = _Asm()
    _host_frames(asm)
    _ipv4(asm, udp, tcp, snaplen)
    _ipv6(asm, udp, tcp, snaplen)
    return asm.assemble()


def _host_frames(asm: _Asm) -> None:
    """Not a quiet source's (``QUIET_MARK``), unicast to us, VLAN tag consumed (or
    priority-only), then dispatch on the ethertype."""
    asm.op(LD_W_ABS, AD_MARK)
    asm.op(JMP_JEQ_K, QUIET_MARK, "drop", None)
    asm.op(LD_W_ABS, AD_PKTTYPE)
    asm.op(JMP_JEQ_K, PACKET_HOST, None, "drop")
    asm.op(LD_W_ABS, AD_VLAN_TAG_PRESENT)
    asm.op(JMP_JEQ_K, 0, "protocol", None)
    asm.op(LD_W_ABS, AD_VLAN_TAG)
    asm.op(ALU_AND_K, VLAN_ID_MASK)
    asm.op(JMP_JEQ_K, 0, None, "drop")
    asm.label("protocol")
    asm.op(LD_W_ABS, AD_PROTOCOL)
    asm.op(JMP_JEQ_K, ETH_P_IP, "ip4", None)
    asm.op(JMP_JEQ_K, ETH_P_IPV6, None, "drop")
    asm.ja("ip6")
    asm.label("drop")
    asm.op(RET_K, 0)


def _ipv4(asm: _Asm, udp: PortFilter, tcp: PortFilter | None, snaplen: int) -> None:
    asm.label("ip4")
    asm.op(LD_B_ABS, 9)  # protocol
    asm.jeq_far(IPPROTO_TCP, "tcp4")
    asm.op(JMP_JEQ_K, IPPROTO_UDP, "udp4", None)
    asm.op(RET_K, 0)
    asm.label("udp4")
    asm.op(LD_H_ABS, 6)  # flags and fragment offset
    asm.op(JMP_JSET_K, IP4_FRAGMENT_BITS, "udp4_pass", None)
    asm.op(LDX_B_MSH, 0)
    asm.op(LD_H_IND, 2)  # UDP destination port
    _port_test(asm, "udp4", udp, snaplen)
    asm.label("tcp4")
    asm.op(LD_H_ABS, 6)
    asm.op(JMP_JSET_K, IP4_FRAGMENT_BITS, "tcp4_pass", None)
    asm.op(LDX_B_MSH, 0)
    asm.op(LD_B_IND, 13)  # TCP flags
    asm.op(JMP_JSET_K, TCP_ACK_OR_RST, "tcp4_drop", None)
    if tcp is not None:
        asm.op(LD_H_IND, 2)  # TCP destination port
    _port_test(asm, "tcp4", tcp or PortFilter.every(), snaplen)


def _ipv6(asm: _Asm, udp: PortFilter, tcp: PortFilter | None, snaplen: int) -> None:
    asm.label("ip6")
    asm.op(LD_B_ABS, 6)  # next header
    asm.jeq_far(IPPROTO_TCP, "tcp6")
    asm.jeq_far(IPPROTO_UDP, "udp6")
    for next_header in IP6_EXTENSIONS:
        asm.op(JMP_JEQ_K, next_header, "pass6", None)
    asm.op(RET_K, 0)
    asm.label("pass6")
    asm.op(RET_K, snaplen)
    asm.label("tcp6")
    asm.op(LD_B_ABS, 40 + 13)  # TCP flags
    asm.op(JMP_JSET_K, TCP_ACK_OR_RST, "tcp6_drop", None)
    if tcp is not None:
        asm.op(LD_H_ABS, 40 + 2)  # TCP destination port
    _port_test(asm, "tcp6", tcp or PortFilter.every(), snaplen)
    asm.label("udp6")
    asm.op(LD_H_ABS, 40 + 2)  # UDP destination port
    _port_test(asm, "udp6", udp, snaplen)


def _port_test(asm: _Asm, name: str, ports: PortFilter, snaplen: int) -> None:
    """Return ``snaplen`` if A (a port) is watched, else 0; ranges are tested in order.

    Ranges are sorted, so ``A < lo`` means A is in no later range either: drop at once.
    Ends with the labels ``NAME_drop`` and ``NAME_pass``, which the section's earlier
    tests jump to as well.
    """
    ranges = ports.ranges()
    if _test_count(ranges) > MAX_PORT_TESTS:
        ranges = [(0, _MAX_PORT)]
    ok, no = f"{name}_pass", f"{name}_drop"
    for lo, hi in ranges:
        if lo == 0 and hi == _MAX_PORT:
            asm.op(RET_K, snaplen)
        elif lo == hi:
            asm.op(JMP_JEQ_K, lo, ok, None)
        elif lo == 0:
            asm.op(JMP_JGT_K, hi, None, ok)
        elif hi == _MAX_PORT:
            asm.op(JMP_JGE_K, lo, ok, no)
        else:
            asm.op(JMP_JGE_K, lo, None, no)
            asm.op(JMP_JGT_K, hi, None, ok)
    asm.label(no)
    asm.op(RET_K, 0)
    asm.label(ok)
    asm.op(RET_K, snaplen)


def _test_count(ranges: Sequence[PortRange]) -> int:
    return sum(1 if lo in (hi, 0) or hi == _MAX_PORT else 2 for lo, hi in ranges)


# --- The interpreter ---------------------------------------------------------------------------
_ANCILLARY: Final = frozenset({AD_PROTOCOL, AD_PKTTYPE, AD_MARK, AD_VLAN_TAG, AD_VLAN_TAG_PRESENT})
_JUMPS: Final = frozenset({JMP_JEQ_K, JMP_JGT_K, JMP_JGE_K, JMP_JSET_K})
_KNOWN: Final = frozenset(
    {LD_W_ABS, LD_H_ABS, LD_B_ABS, LD_H_IND, LD_B_IND, LDX_B_MSH, ALU_AND_K, JMP_JA, RET_K} | _JUMPS
)
_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")


class _OutOfBoundsError(Exception):
    """A load past the packet: the kernel then returns 0 (drop)."""


def run_filter(
    program: Sequence[Instruction],
    packet: bytes,
    pkttype: int,
    *,
    protocol: int | None = None,
    vlan_tci: int | None = None,
    mark: int = 0,
) -> bool:
    """Whether the kernel would pass ``packet`` (starting at the network header).

    ``protocol`` is the ethertype (default: from the IP version nibble); ``vlan_tci`` is a
    VLAN tag held outside the frame (``None``: no tag); ``mark`` the packet's mark.
    """
    return execute(program, packet, pkttype, protocol=protocol, vlan_tci=vlan_tci, mark=mark) != 0


def execute(
    program: Sequence[Instruction],
    packet: bytes,
    pkttype: int,
    *,
    protocol: int | None = None,
    vlan_tci: int | None = None,
    mark: int = 0,
) -> int:
    """The program's return value (the snap length, 0 to drop); rejects unknown opcodes."""
    validate(program)
    if protocol is None:
        version = packet[0] >> 4 if packet else 0
        protocol = {4: ETH_P_IP, 6: ETH_P_IPV6}.get(version, 0)
    ancillary = {
        AD_PROTOCOL: protocol,
        AD_PKTTYPE: pkttype,
        AD_MARK: mark,
        AD_VLAN_TAG_PRESENT: int(vlan_tci is not None),
        AD_VLAN_TAG: vlan_tci or 0,
    }
    try:
        return _run(program, packet, ancillary)
    except _OutOfBoundsError:
        return 0


def validate(program: Sequence[Instruction]) -> None:
    """Reject what the kernel would reject, and any opcode the interpreter does not know."""
    if not 0 < len(program) <= _BPF_MAXINSNS:
        raise ValueError(f"a BPF program has 1..{_BPF_MAXINSNS} instructions, not {len(program)}")
    for pc, (code, jt, jf, k) in enumerate(program):
        if code not in _KNOWN:
            raise ValueError(f"instruction {pc}: unsupported opcode {code:#04x}")
        if code == LD_W_ABS and k >= SKF_AD_OFF and k not in _ANCILLARY:
            raise ValueError(f"instruction {pc}: unsupported ancillary load {k:#x}")
        reach = k if code == JMP_JA else max(jt, jf) if code in _JUMPS else 0
        if pc + 1 + reach >= len(program) and code != RET_K:
            raise ValueError(f"instruction {pc}: jumps or falls past the end")


def _run(program: Sequence[Instruction], pkt: bytes, ancillary: dict[int, int]) -> int:
    a = x = pc = 0
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        if code == RET_K:
            return k
        if code == LD_W_ABS:
            a = ancillary[k] if k >= SKF_AD_OFF else _load(_U32, pkt, k)
        elif code == LD_H_ABS:
            a = _load(_U16, pkt, k)
        elif code == LD_B_ABS:
            a = _byte(pkt, k)
        elif code == LD_H_IND:
            a = _load(_U16, pkt, x + k)
        elif code == LD_B_IND:
            a = _byte(pkt, x + k)
        elif code == LDX_B_MSH:
            x = 4 * (_byte(pkt, k) & 0xF)
        elif code == ALU_AND_K:
            a &= k
        elif code == JMP_JA:
            pc += k
        else:
            pc += jt if _holds(code, a, k) else jf


def _holds(code: int, a: int, k: int) -> bool:
    if code == JMP_JEQ_K:
        return a == k
    if code == JMP_JGT_K:
        return a > k
    if code == JMP_JGE_K:
        return a >= k
    return a & k != 0  # JMP_JSET_K


def _load(fmt: struct.Struct, pkt: bytes, offset: int) -> int:
    if offset + fmt.size > len(pkt):
        raise _OutOfBoundsError
    value: int = fmt.unpack_from(pkt, offset)[0]
    return value


def _byte(pkt: bytes, offset: int) -> int:
    if offset >= len(pkt):
        raise _OutOfBoundsError
    return pkt[offset]


# --- A listing for logs, tests and reports -----------------------------------------------------
_MNEMONICS: Final = {
    LD_W_ABS: "ld",
    LD_H_ABS: "ldh",
    LD_B_ABS: "ldb",
    LD_H_IND: "ldh",
    LD_B_IND: "ldb",
    LDX_B_MSH: "ldxb",
    ALU_AND_K: "and",
    JMP_JA: "ja",
    JMP_JEQ_K: "jeq",
    JMP_JGT_K: "jgt",
    JMP_JGE_K: "jge",
    JMP_JSET_K: "jset",
    RET_K: "ret",
}
_ANCILLARY_NAMES: Final = {
    AD_PROTOCOL: "#proto",
    AD_PKTTYPE: "#type",
    AD_MARK: "#mark",
    AD_VLAN_TAG: "#vlan_tci",
    AD_VLAN_TAG_PRESENT: "#vlan_avail",
}


def disassemble(program: Sequence[Instruction]) -> str:
    """The program in ``bpf_asm`` style, one numbered line per instruction."""
    lines = []
    for pc, (code, jt, jf, k) in enumerate(program):
        name = _MNEMONICS.get(code, f"op{code:#04x}")
        if code == LD_W_ABS:
            arg = _ANCILLARY_NAMES.get(k, f"[{k}]")
        elif code in (LD_H_ABS, LD_B_ABS):
            arg = f"[{k}]"
        elif code in (LD_H_IND, LD_B_IND):
            arg = f"[x + {k}]"
        elif code == LDX_B_MSH:
            arg = f"4*([{k}]&0xf)"
        elif code == JMP_JA:
            arg = f"{pc + 1 + k}"
        elif code in _JUMPS:
            value = f"{k:#x}" if code == JMP_JSET_K or k in (ETH_P_IP, ETH_P_IPV6) else k
            arg = f"#{value}, {pc + 1 + jt}, {pc + 1 + jf}"
        else:
            arg = f"#{k:#x}" if code == ALU_AND_K else f"#{k}"
        lines.append(f"({pc:03d}) {name:<5} {arg}")
    return "\n".join(lines)
