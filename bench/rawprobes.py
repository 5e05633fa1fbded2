"""masscan-like and zmap-like TCP SYN probes, built by hand and sent from a raw socket.

Neither tool is installed in the lab, so ``bench/detection_matrix.py`` sends probes that carry
the marks ``detect/fingerprint.py`` looks for, as docs/detection.md lists them:

- masscan-like: a SYN with window 1024 and no options, TTL 255, one source port for the run,
  and the IPv4 identification set to masscan's stateless cookie, (target address ^ target
  port ^ sequence number) & 0xFFFF;
- zmap-like: a SYN with IPv4 identification 54321, window 65535 and MSS 1460, TTL 255.

Over IPv6 the same TCP headers go out (no identification field: the kernel writes the IPv6
header and the checksum). The builders are pure; ``main`` sends one probe per port, 5 ms
apart, at most ``MAX_PORTS`` of them, to the one target named, and is meant to run inside the
lab's scanner namespace only (root: raw sockets).

Usage: python bench/rawprobes.py masscan|zmap SOURCE TARGET PORT[,PORT...]
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
import sys
import time

STYLES = ("masscan", "zmap")
MAX_PORTS = 256
GAP = 0.005  # seconds between two probes
SYN = 0x02
ZMAP_ID = 54321
MSS_1460 = b"\x02\x04\x05\xb4"


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_syn(
    src: str, dst: str, *, sport: int, dport: int, seq: int, window: int, options: bytes = b""
) -> bytes:
    """A TCP SYN header (with its checksum over the pseudo-header of ``src``/``dst``)."""
    words = len(options) // 4
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, (5 + words) << 4, SYN, window, 0, 0)
    segment = header + options
    source, target = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    if len(source) == 4:
        pseudo = source + target + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(segment))
    else:
        pseudo = source + target + struct.pack("!IxxxB", len(segment), socket.IPPROTO_TCP)
    return segment[:16] + struct.pack("!H", checksum(pseudo + segment)) + segment[18:]


def ipv4(src: str, dst: str, ident: int, ttl: int, payload: bytes) -> bytes:
    """An IPv4 header (no options, no DF) in front of a TCP ``payload``."""
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0, ttl, socket.IPPROTO_TCP, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )  # fmt: skip
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def masscan_cookie(dst: str, dport: int, seq: int) -> int:
    """masscan's IPv4 identification: (target address ^ target port ^ sequence) & 0xFFFF."""
    return (int(ipaddress.IPv4Address(dst)) ^ dport ^ seq) & 0xFFFF


def probe(style: str, src: str, dst: str, *, sport: int, dport: int, seq: int) -> bytes:
    """One probe of ``style``: a whole IPv4 packet, or a bare TCP header for IPv6."""
    if style == "masscan":
        segment = tcp_syn(src, dst, sport=sport, dport=dport, seq=seq, window=1024)
        ident = masscan_cookie(dst, dport, seq) if ":" not in dst else 0
    elif style == "zmap":
        segment = tcp_syn(
            src, dst, sport=sport, dport=dport, seq=seq, window=65535, options=MSS_1460
        )
        ident = ZMAP_ID
    else:
        raise ValueError(f"unknown style {style!r} (known: {', '.join(STYLES)})")
    return segment if ":" in dst else ipv4(src, dst, ident, 255, segment)


def source_port(style: str, rng: random.Random) -> int:
    """masscan keeps one source port for a run; zmap picks one per probe in 32768-61000."""
    return rng.randrange(40000, 60000) if style == "masscan" else rng.randrange(32768, 61000)


def send(style: str, src: str, dst: str, ports: list[int]) -> int:
    """Send one probe per port from ``src`` to ``dst``; the number sent."""
    if len(ports) > MAX_PORTS:
        raise ValueError(f"at most {MAX_PORTS} ports, not {len(ports)}")
    rng = random.Random()
    fixed = source_port(style, rng)
    six = ":" in dst
    sock = socket.socket(socket.AF_INET6 if six else socket.AF_INET, socket.SOCK_RAW,
                         socket.IPPROTO_TCP if six else socket.IPPROTO_RAW)  # fmt: skip
    with sock:
        if six:
            sock.bind((src, 0))
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        for port in ports:
            sport = fixed if style == "masscan" else source_port(style, rng)
            packet = probe(style, src, dst, sport=sport, dport=port, seq=rng.getrandbits(32))
            sock.sendto(packet, (dst, 0))
            time.sleep(GAP)
    return len(ports)


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] not in STYLES:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    style, src, dst, spec = argv
    sent = send(style, src, dst, [int(p) for p in spec.split(",")])
    print(f"{style}: {sent} probes {src} -> {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
