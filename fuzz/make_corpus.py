"""Write the seed corpora of the three fuzz harnesses: ``python fuzz/make_corpus.py [DIR]``.

``DIR`` (default ``fuzz/corpus``) gets one folder per harness, one file per seed, named by
its content's hash so that rewriting is idempotent:

- ``frames/``: frames taken from the repository's real captures
  (``tests/fixtures/captures/*.pcap``, read with the project's own ``open_capture``), one per
  distinct shape (length, decode outcome), the same IP datagrams again under every other link
  type, and hand-made frames the captures lack: IPv6 extension chains, IPv6 and IPv4
  fragments (tiny first fragments, overlapping later ones, atomic ones), QinQ tags, jumbo
  payload lengths, truncations. Each is prefixed with the two control bytes of
  ``fuzz_frames.py``.
- ``config/``: the config, ignore, defaults, ``--mode`` and resolv.conf texts of the test
  fixtures and a few hand-made ones, each prefixed with ``fuzz_config.py``'s target byte.
- ``pcap/``: small pcap and pcapng files built from the captures' frames, in both byte
  orders, with every packet block type and timestamp resolution option.

The seeds are built from the fixtures each time, so the CI slice uses the same functions
without reading ``DIR``.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import fuzz_config
from fuzz_frames import SUPPORTED_LINKTYPES

from portsentinel.capture.pcapfile import open_capture
from portsentinel.config.commands import render_defaults
from portsentinel.decode import decoder_for_linktype
from portsentinel.errors import DecodeError

REPO = Path(__file__).resolve().parent.parent
CAPTURES = REPO / "tests" / "fixtures" / "captures"
CONFIGS = REPO / "tests" / "fixtures" / "config" / "debian"
DEFAULT_DIR = Path(__file__).resolve().parent / "corpus"

ETHERNET, RAW, SLL, SLL2, NULL, LOOP, IPV4, IPV6 = 1, 101, 113, 276, 0, 108, 228, 229
TCP, UDP, ICMP, HOP, ROUTING, FRAG, ESP, AH, NO_NEXT, DSTOPT = 6, 17, 1, 0, 43, 44, 50, 51, 59, 60
SRC4, DST4 = bytes([198, 18, 0, 2]), bytes([198, 18, 0, 1])
SRC6 = bytes.fromhex("fd00005e000000000000000000000002")
DST6 = bytes.fromhex("fd00005e000000000000000000000001")

# --- packet builders (independent of the decoder) -------------------------------------------


def tcp(dport: int = 22, flags: int = 0x02, *, sport: int = 40000, offset: int = 5) -> bytes:
    head = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, offset << 4, flags, 1024, 0, 0)
    return head + bytes(max(0, offset - 5) * 4)


def udp(dport: int = 53, *, sport: int = 40000, payload: bytes = b"q") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv4(
    proto: int,
    body: bytes,
    *,
    frag: int = 0,
    more: bool = False,
    options: bytes = b"",
    total: int | None = None,
) -> bytes:
    ihl = 5 + len(options) // 4
    length = 20 + len(options) + len(body) if total is None else total
    flags = (0x2000 if more else 0) | frag
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, length, 7, flags, 64, proto, 0, SRC4, DST4)
    return head + options + body


def ipv6(next_header: int, body: bytes, *, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return struct.pack("!IHBB16s16s", 6 << 28, size, next_header, 64, SRC6, DST6) + body


def ext(next_header: int, units: int = 0) -> bytes:
    size = (units + 1) * 8
    return struct.pack("!BBBB", next_header, units, 1, size - 4) + bytes(size - 4)


def ah(next_header: int, units: int = 4) -> bytes:
    return struct.pack("!BBH", next_header, units, 0) + bytes((units + 2) * 4 - 4)


def frag6(next_header: int, offset: int = 0, *, more: bool = False) -> bytes:
    return struct.pack("!BBHI", next_header, 0, offset << 3 | int(more), 0xBEEF)


def ethernet(ethertype: int, payload: bytes, tags: Iterable[int] = ()) -> bytes:
    head = bytes.fromhex("020000000001") + bytes.fromhex("020000000002")
    for tpid in tags:
        head += struct.pack("!HH", tpid, 100)
    return head + struct.pack("!H", ethertype) + payload


def link(linktype: int, datagram: bytes) -> bytes:
    """``datagram`` (raw IPv4 or IPv6) framed for ``linktype``."""
    ethertype = 0x86DD if datagram[0] >> 4 == 6 else 0x0800
    if linktype == ETHERNET:
        return ethernet(ethertype, datagram)
    if linktype == SLL:
        return struct.pack("!HHH8sH", 0, 1, 6, bytes(8), ethertype) + datagram
    if linktype == SLL2:
        return struct.pack("!HHIHBB8s", ethertype, 0, 2, 1, 0, 6, bytes(8)) + datagram
    if linktype in (NULL, LOOP):
        family = 30 if ethertype == 0x86DD else 2
        return struct.pack("<I" if linktype == NULL else "!I", family) + datagram
    return datagram  # RAW, IPV4, IPV6, and the BSD raw values


# --- frames ------------------------------------------------------------------------------------


def frame_seed(linktype: int, frame: bytes, control: int = 0x01, *, high: int = 0) -> bytes:
    """A ``fuzz_frames`` input: decoder byte, control byte, frame."""
    return bytes([high << 4 | SUPPORTED_LINKTYPES.index(linktype), control]) + frame


def _shape(linktype: int, frame: bytes) -> tuple[object, ...]:
    """What makes two captured frames different seeds: length and decode outcome."""
    try:
        packet = decoder_for_linktype(linktype)(frame)
    except DecodeError as exc:
        return (len(frame), str(exc))
    if packet is None:
        return (len(frame), None)
    return (len(frame), packet[0], packet[5], packet[7], packet[8], len(packet[1]))


def captured_frames() -> list[tuple[int, bytes]]:
    """(linktype, frame) of every distinct shape in the repository's captures."""
    seen: set[tuple[object, ...]] = set()
    frames: list[tuple[int, bytes]] = []
    for path in sorted(CAPTURES.glob("*.pcap")):
        with open_capture(path) as reader:
            for _ts, linktype, frame in reader:
                shape = (linktype, *_shape(linktype, frame))
                if shape not in seen:
                    seen.add(shape)
                    frames.append((linktype, frame))
    return frames


def handmade_datagrams() -> list[bytes]:
    """Raw IP datagrams for what the captures lack: extension chains and fragments."""
    syn = tcp()
    return [
        ipv6(HOP, ext(TCP) + syn),
        ipv6(HOP, ext(ROUTING, 1) + ext(DSTOPT) + syn),
        ipv6(DSTOPT, ext(AH) + ah(UDP) + udp()),
        ipv6(ROUTING, ext(FRAG) + frag6(TCP, more=True) + syn[:8]),  # tiny first fragment
        ipv6(FRAG, frag6(TCP, 1) + bytes(16)),  # later fragment inside the TCP header
        ipv6(FRAG, frag6(TCP, 40) + bytes(16)),  # an ordinary later fragment
        ipv6(FRAG, frag6(UDP) + udp()),  # atomic fragment: a whole packet
        ipv6(FRAG, frag6(UDP, more=True) + udp()[:4]),  # tiny UDP first fragment
        ipv6(HOP, ext(HOP) * 17 + syn),  # longer chain than the decoder walks
        ipv6(ESP, bytes(24)),
        ipv6(NO_NEXT, b""),
        ipv6(TCP, syn, length=0),  # jumbogram / BIG TCP: payload length 0
        ipv6(HOP, ext(TCP, 3) + syn, length=12),  # chain past the payload length
        ipv4(TCP, syn[:8], more=True),  # nmap -f: tiny first fragment
        ipv4(TCP, syn[:16], more=True),
        ipv4(TCP, bytes(8), frag=1),  # overlapping later fragment
        ipv4(TCP, bytes(8), frag=3),
        ipv4(UDP, udp()[:4], more=True),
        ipv4(TCP, tcp(offset=8)),
        ipv4(TCP, tcp(offset=3)),  # data offset below 5
        ipv4(TCP, tcp(flags=0x29), options=bytes([0x94, 4, 0, 0])),  # XMAS, router alert
        ipv4(UDP, udp(), total=24),  # IP length cuts the UDP header
        ipv4(ICMP, bytes(8)),
        ipv4(TCP, tcp(flags=0x12)),  # SYN-ACK: not a probe
    ]


def frame_seeds() -> list[bytes]:
    """Every ``fuzz_frames`` seed, in a fixed order."""
    seeds: list[bytes] = []
    captured = captured_frames()
    for index, (linktype, frame) in enumerate(captured):
        control = 0x01 | (0x10 if index % 8 == 0 else 0) | (0x20 if index % 5 == 0 else 0)
        if index % 3 == 0:  # records held by the gated detectors, the clock standing still:
            control = (control & 0xF0) | 0x40  # a scanner's next probe finds itself muted
        seeds.append(frame_seed(linktype, frame, control))
    # The captured datagrams again under the other link types (Ethernet: strip 14 bytes).
    others = [t for t in SUPPORTED_LINKTYPES if t != ETHERNET]
    for index, (linktype, frame) in enumerate(captured[::7]):
        if linktype == ETHERNET and len(frame) > 14 and frame[12:14] in (b"\x08\x00", b"\x86\xdd"):
            target = others[index % len(others)]
            datagram = frame[14:]
            if (target, datagram[0] >> 4) not in ((IPV4, 6), (IPV6, 4)):
                seeds.append(frame_seed(target, link(target, datagram)))
    for index, datagram in enumerate(handmade_datagrams()):
        for linktype in (RAW, ETHERNET, SLL2 if index % 2 else SLL, NULL if index % 3 else LOOP):
            seeds.append(frame_seed(linktype, link(linktype, datagram), 0x02 + index % 4))
        seeds.append(frame_seed(ETHERNET, datagram[:30], 0x11))  # cut short
    tagged = ethernet(0x0800, ipv4(TCP, tcp(dport=80)), tags=(0x88A8, 0x8100))
    seeds.append(frame_seed(ETHERNET, tagged))
    seeds.append(frame_seed(ETHERNET, ethernet(0x8100, b"", tags=(0x8100,) * 9)))
    # A reload of the detectors (see fuzz_frames), then a probe against the new caps.
    seeds.append(frame_seed(RAW, ipv4(TCP, tcp(dport=2)), 0xC1, high=0xF))
    seeds.append(frame_seed(RAW, ipv4(UDP, udp(dport=137)), 0xD4, high=0xF))
    return seeds


# --- config texts ------------------------------------------------------------------------------

_HANDMADE_CONFIG = b"""\
# a small config with the syntax's corners
TCP_PORTS="1,11,15,79,111,119,143,540,635,1080,1524,2000,5742,6667,12345,12346,20034"
UDP_PORTS = '1,7,9,69,161,162,513,635,640,641,700,37444,34555,31335,32770'
ADVANCED_PORTS_TCP=1024  # a bare value and a comment
ADVANCED_EXCLUDE_UDP="520,138,137,67"
SCAN_TRIGGER="2"
BLOCK_TCP="2"
KILL_RUN_CMD="/bin/echo $TARGET$ $PORT$ $MODE$"
BLOCK_UDP="1"
MAX_TRACKED_SOURCES="100"
BAN_RATE="0.5"
NOT_A_KEY="x"
SCAN_TRIGGER="3"
"""
_HANDMADE_IGNORE = (
    "127.0.0.1\n10.0.0.0/8 # lan\n192.168.1.7/255.255.255.0\n::1\n::ffff:1.2.3.4/120\n"
)
_HANDMADE_DEFAULTS = 'TCP_MODE="atcp"\nexport UDP_MODE=sudp\nTCP_MODE = "tcp"\n'
_HANDMADE_RESOLV = "nameserver 198.18.0.53\nnameserver fe80::1%eth0 ; zone\nnameserver\n"


def config_seeds() -> list[bytes]:
    """Every ``fuzz_config`` seed: target byte, then the text."""
    target = fuzz_config.TARGETS
    texts: list[tuple[str, bytes]] = [
        ("config", render_defaults().encode()),
        ("config", (CONFIGS / "portsentry.conf").read_bytes()),
        ("config", _HANDMADE_CONFIG),
        ("config", b'SCAN_TRIGGER="x"\nBLOCK_TCP=3\nTCP_PORTS="1,2\nA B C\n=\n'),
        ("ignore", (CONFIGS / "portsentry.ignore.static").read_bytes()),
        ("ignore", _HANDMADE_IGNORE.encode()),
        ("ignore", b"0.0.0.0/0\n::/0\n1.2.3.4/33\n1.2.3.4/255.0.255.0\nnot-an-address\n"),
        ("defaults", (CONFIGS / "default-portsentry").read_bytes()),
        ("defaults", _HANDMADE_DEFAULTS.encode()),
        ("defaults", b'TCP_MODE="audp"\nUDP_MODE=`x`\nTCP_MODE="a b"\n'),
        ("modes", b"atcp,audp"),
        ("modes", b"stcp udp"),
        ("modes", b"tcp,atcp"),
        ("resolv", _HANDMADE_RESOLV.encode()),
    ]
    return [bytes([target.index(name)]) + text for name, text in texts]


# --- capture files -----------------------------------------------------------------------------


def pcap_file(
    frames: Iterable[tuple[int, bytes]], order: str = "<", *, nano: bool = False
) -> bytes:
    """A classic pcap file of ``frames`` (the first frame's link type for the file)."""
    frames = list(frames)
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    linktype = frames[0][0] if frames else ETHERNET
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)]
    for index, (_linktype, frame) in enumerate(frames):
        out.append(struct.pack(order + "IIII", 1_700_000_000 + index, index * 7, len(frame), 1500))
        out.append(frame)
    return b"".join(out)


def _block(order: str, btype: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    total = 12 + len(body)
    return struct.pack(order + "II", btype, total) + body + struct.pack(order + "I", total)


def _shb(order: str) -> bytes:
    return _block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def _idb(order: str, linktype: int, resolution: int | None = None) -> bytes:
    body = struct.pack(order + "HHI", linktype, 0, 0)
    if resolution is not None:
        body += struct.pack(order + "HHB3x", 9, 1, resolution)
        body += struct.pack(order + "HHq", 14, 8, 10)  # if_tsoffset
        body += struct.pack(order + "HH", 0, 0)
    return _block(order, 1, body)


def _packet_block(order: str, kind: int, iface: int, ticks: int, frame: bytes) -> bytes:
    if kind == 3:  # simple packet block
        return _block(order, 3, struct.pack(order + "I", len(frame)) + frame)
    high, low = ticks >> 32, ticks & 0xFFFFFFFF
    if kind == 2:  # obsolete packet block
        head = struct.pack(order + "HHIIII", iface, 0, high, low, len(frame), len(frame))
        return _block(order, 2, head + frame)
    head = struct.pack(order + "IIIII", iface, high, low, len(frame), len(frame))
    return _block(order, 6, head + frame)


def pcapng_file(frames: Iterable[tuple[int, bytes]], order: str = "<") -> bytes:
    """A pcapng file: two sections, two interfaces, every packet block type."""
    frames = list(frames)
    half = len(frames) // 2
    out = [_shb(order), _idb(order, ETHERNET), _idb(order, RAW, resolution=0x89)]
    for index, (_linktype, frame) in enumerate(frames[:half]):
        kind = (6, 6, 2, 3)[index % 4]
        out.append(_packet_block(order, kind, 0, 1_700_000_000_000_000 + index, frame))
    out.append(_block(order, 0x0BAD, b"custom"))
    out += [_shb(order), _idb(order, ETHERNET, resolution=9)]
    for index, (_linktype, frame) in enumerate(frames[half:]):
        out.append(_packet_block(order, 6, 0, index, frame))
    return b"".join(out)


def pcap_seeds() -> list[bytes]:
    """Every ``fuzz_pcap`` seed: small files built from the captures' frames."""
    frames = [(t, f) for t, f in captured_frames() if t == ETHERNET]
    chunks = [frames[i : i + 6] for i in range(0, min(len(frames), 48), 6)]
    seeds = []
    for index, chunk in enumerate(chunks):
        order = "<" if index % 2 else ">"
        seeds.append(pcap_file(chunk, order, nano=index % 3 == 0))
        seeds.append(pcapng_file(chunk, order))
    whole = pcap_file(frames[:4])
    seeds += [whole[:-10], whole[:30], pcapng_file(frames[:4])[:-8]]
    return seeds


# --- writing -----------------------------------------------------------------------------------


def _named(seeds: Iterable[bytes]) -> Iterator[tuple[str, bytes]]:
    for seed in seeds:
        yield hashlib.sha1(seed).hexdigest(), seed  # libFuzzer's own naming


def write_corpus(directory: Path) -> dict[str, int]:
    """Write every corpus under ``directory``; returns the seed count per harness."""
    counts = {}
    for name, seeds in (
        ("frames", frame_seeds()),
        ("config", config_seeds()),
        ("pcap", pcap_seeds()),
    ):
        folder = directory / name
        folder.mkdir(parents=True, exist_ok=True)
        named = dict(_named(seeds))
        for digest, seed in named.items():
            (folder / digest).write_bytes(seed)
        counts[name] = len(named)
    return counts


def main(argv: list[str]) -> int:
    directory = Path(argv[1]) if len(argv) > 1 else DEFAULT_DIR
    counts = write_corpus(directory)
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    summary = ", ".join(f"{name} {count}" for name, count in counts.items())
    print(f"{directory}: {summary} seeds, {size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
