"""End to end: the live ring inside a two-namespace lab (root only; see ``netns.py``).

A receiver runs ``PacketRing`` in the target namespace and prints one JSON line per packet it
is handed. A sender crafts packets with raw sockets in the scanner namespace (or in the target
itself, for its own outgoing traffic). No test sleeps: a final "marker" SYN travels the same
path after the packets under test, so once the marker is read, every earlier packet that was
going to be delivered has been.

This file is also the program both sides run: ``python3 test_afpacket.py receive CONFIG`` and
``python3 test_afpacket.py send PACKETS`` (JSON arguments).
"""

from __future__ import annotations

import json
import queue
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import netns
import pytest

from portsentinel.capture.afpacket import PacketRing, RingConfig
from portsentinel.capture.bpf import PortFilter, build_filter
from portsentinel.decode import decode_ip
from portsentinel.errors import DecodeError
from portsentinel.model import ACK, FIN, PSH, RST, SYN, URG, Frag, addr_text

_REASON = netns.unavailable()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

Lab = netns.Lab
Spec = dict[str, Any]
Event = dict[str, Any]

_RUN_LIMIT = 60.0  # the receiver stops by itself after this many seconds, whatever happens
_WAIT = 10.0  # generous deadline for anything the test waits for
_MARKER_PORT = 1999


# --- the programs that run inside the namespaces ---------------------------------------------
def _receive(config: dict[str, Any]) -> None:
    """Open the ring, report the interfaces, print every packet until stdin closes."""
    udp = PortFilter.under(config["udp_below"], exclude=config.get("udp_exclude", ()))
    names = tuple(config.get("interfaces", ()))
    if config.get("version", 3) == 2:  # the daemon's geometry: frames read one by one
        ring_config = RingConfig(block_size=12288, block_count=64, frame_size=384,
                                 interfaces=names, version=2)  # fmt: skip
    else:
        ring_config = RingConfig(interfaces=names)
    with PacketRing(ring_config, build_filter(udp)) as ring:
        interfaces = [asdict(i) for i in ring.refresh_interfaces()]
        _emit(event="ready", counted=sorted(ring.counted_ifindexes), interfaces=interfaces)
        deadline = time.monotonic() + _RUN_LIMIT
        while time.monotonic() < deadline:
            if config.get("ready_only"):  # as the daemon: its selector waits, the ring reads
                select.select([ring.fileno()], [], [], 0.05)
                ring.read_batch(_print_packet, -1.0)
            else:
                ring.read_batch(_print_packet, 0.05)
            if select.select([sys.stdin], [], [], 0)[0] and not sys.stdin.readline():
                break
        _emit(event="stats", **asdict(ring.stats()))


def _print_packet(ring: memoryview, start: int, length: int, ifindex: int) -> None:
    now = time.time()
    try:
        packet = decode_ip(ring, start, length)  # in place, as the daemon reads
    except DecodeError as err:
        _emit(event="undecodable", error=str(err), length=length)
        return
    if packet is None:
        _emit(event="ignored", ifindex=ifindex, length=length)
        return
    proto, src, dst, sport, dport, flags, _ttl, _options, frag = packet
    _emit(event="packet", now=now, ifindex=ifindex, length=length, proto=proto, src=addr_text(src),
          dst=addr_text(dst), sport=sport, dport=dport, flags=flags, frag=frag)  # fmt: skip


def _send(specs: list[Spec]) -> None:
    """Send each packet once (the list bounds the count) and print when it left."""
    for spec in specs:
        family = socket.AF_INET6 if ":" in spec["dst"] else socket.AF_INET
        with socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            for datagram in _craft(spec):
                sock.sendto(datagram, (spec["dst"], 0))
        _emit(event="sent", t=time.time(), **spec)


def _emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


# --- packet crafting --------------------------------------------------------------------------
def _craft(spec: Spec) -> list[bytes]:
    src, dst = spec["src"], spec["dst"]
    v6 = ":" in dst
    family = socket.AF_INET6 if v6 else socket.AF_INET
    addresses = socket.inet_pton(family, src) + socket.inet_pton(family, dst)
    proto = {"tcp": 6, "udp": 17, "icmp": 1}[spec["proto"]]
    sport, dport = spec.get("sport", 40000), spec["dport"]
    if proto == 6:
        ack = 1 if spec["flags"] & ACK else 0
        segment = struct.pack(
            "!HHIIBBHHH", sport, dport, 12345, ack, 5 << 4, spec["flags"], 1024, 0, 0
        )
        segment = _with_checksum(segment, 16, _pseudo(addresses, proto, len(segment), v6))
    elif proto == 17:
        segment = struct.pack("!HHHH", sport, dport, 13, 0) + b"probe"
        segment = _with_checksum(segment, 6, _pseudo(addresses, proto, len(segment), v6))
    else:  # ICMP echo request
        segment = _with_checksum(b"\x08\x00\x00\x00\x12\x34\x00\x01", 2, b"")
    if v6:
        return [_ip6(addresses, proto, segment, spec.get("hop_by_hop", False))]
    if spec.get("fragment"):  # nmap -f: the TCP header split at 8 bytes
        return [
            _ip4(addresses, proto, segment[:8], more=True),
            _ip4(addresses, proto, segment[8:], offset=1),
        ]
    return [_ip4(addresses, proto, segment)]


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _with_checksum(segment: bytes, at: int, pseudo: bytes) -> bytes:
    value = _checksum(pseudo + segment)
    return segment[:at] + struct.pack("!H", value) + segment[at + 2 :]


def _pseudo(addresses: bytes, proto: int, length: int, v6: bool) -> bytes:
    """The pseudo-header TCP and UDP checksums cover."""
    return addresses + (
        struct.pack("!IxxxB", length, proto) if v6 else struct.pack("!xBH", proto, length)
    )


def _ip4(
    addresses: bytes, proto: int, payload: bytes, *, more: bool = False, offset: int = 0
) -> bytes:
    frag = (0x2000 if more else 0) | offset
    header = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(payload), 0x4242, frag, 64, proto, 0)
    return _with_checksum(header + addresses, 10, b"") + payload


def _ip6(addresses: bytes, proto: int, payload: bytes, hop_by_hop: bool) -> bytes:
    if hop_by_hop:  # next header, length 0 (8 bytes), PadN of 4 bytes
        payload = struct.pack("!BB", proto, 0) + b"\x01\x04\0\0\0\0" + payload
        proto = 0
    return struct.pack("!IHBB", 6 << 28, len(payload), proto, 64) + addresses + payload


# --- the test side ----------------------------------------------------------------------------
class Receiver:
    """The receiver process and the events it printed, read by a thread into a queue."""

    def __init__(self, lab: netns.Lab, config: dict[str, Any]) -> None:
        argv = [sys.executable, __file__, "receive", json.dumps(config)]
        self.lab = lab
        self.proc = lab.start(lab.target, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
        self.events: queue.Queue[Event | None] = queue.Queue()
        self.packets: list[Event] = []  # decoded TCP/UDP packets, in order
        self.others: list[Event] = []  # anything else handed on (none expected)
        threading.Thread(target=self._pump, daemon=True).start()
        self.ready = self.next_event("ready")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))
        self.events.put(None)

    def next_event(self, kind: str) -> Event:
        """The next event of ``kind``, keeping what is seen on the way."""
        deadline = time.monotonic() + _WAIT
        while True:
            try:
                event = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {kind!r} event from the receiver within {_WAIT} s")
            if event is None:
                assert self.proc.stderr is not None
                pytest.fail(f"receiver ended before {kind!r}: {self.proc.stderr.read()}")
            if event["event"] == kind:
                return event
            (self.packets if event["event"] == "packet" else self.others).append(event)

    def until_port(self, dport: int) -> Event:
        """Wait for the packet to ``dport``; earlier packets are kept in ``packets``."""
        while True:
            event = self.next_event("packet")
            self.packets.append(event)
            if event["dport"] == dport:
                return event

    def finish(self) -> Event:
        """Ask the receiver to stop; its final statistics."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        stats = self.next_event("stats")
        self.proc.wait(_WAIT)
        return stats


def send(lab: netns.Lab, ns: str, specs: list[Spec]) -> list[Event]:
    argv = [sys.executable, __file__, "send", json.dumps(specs)]
    done = lab.run(ns, argv, timeout=_WAIT)
    return [json.loads(line) for line in done.stdout.splitlines()]


def probe(dport: int, proto: str = "tcp", flags: int = SYN, v6: bool = False, **extra: Any) -> Spec:
    src, dst = (Lab.SCANNER6, Lab.TARGET6) if v6 else (Lab.SCANNER4, Lab.TARGET4)
    return {"src": src, "dst": dst, "proto": proto, "dport": dport, "flags": flags, **extra}


def seen(packets: list[Event]) -> set[tuple[str, int, int, int]]:
    """(address family, protocol, destination port, fragment status) of each packet."""
    return {("6" if ":" in p["src"] else "4", p["proto"], p["dport"], p["frag"]) for p in packets}


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    with Lab.create() as lab:
        yield lab


@pytest.fixture(params=[2, 3], ids=["v2", "v3"])
def receiver(lab: netns.Lab, request: pytest.FixtureRequest) -> Iterator[Receiver]:
    """Both ring kinds: V2 frames (the daemon's) and V3 blocks."""
    rx = Receiver(lab, {"udp_below": 1024, "udp_exclude": [520], "version": request.param})
    yield rx
    Lab.stop(rx.proc)


def test_counts_only_the_veth(lab: netns.Lab, receiver: Receiver) -> None:
    veth = lab.ifindex(lab.target, Lab.TARGET_IF)
    assert receiver.ready["counted"] == [veth]
    loopback = [i for i in receiver.ready["interfaces"] if i["loopback"]]
    assert [i["name"] for i in loopback] == ["lo"]


def test_probes_reach_python_and_the_rest_stays_in_the_kernel(
    lab: netns.Lab, receiver: Receiver
) -> None:
    wanted = [
        *(probe(port) for port in (1001, 1002, 1003)),
        probe(1004, flags=FIN),
        probe(1005, flags=0),
        probe(1006, flags=FIN | PSH | URG),
        probe(514, "udp"),
        probe(1007, v6=True),
        probe(515, "udp", v6=True),
        probe(1008, v6=True, hop_by_hop=True),
        probe(1009, fragment=True),
    ]
    unwanted = [
        probe(2001, flags=ACK),
        probe(2002, flags=RST),
        probe(2003, flags=SYN | ACK),
        probe(2004, flags=RST | ACK),
        probe(40000, "udp"),
        probe(520, "udp"),  # excluded from the watched range
        probe(2005, flags=ACK, v6=True),
        probe(40001, "udp", v6=True),
        probe(0, "icmp"),
        {**probe(516, "udp"), "dst": Lab.BROADCAST4},  # watched port, but not to this host
    ]
    sent = send(lab, lab.scanner, [*wanted, *unwanted, probe(_MARKER_PORT)])
    assert len(sent) == len(wanted) + len(unwanted) + 1
    receiver.until_port(_MARKER_PORT)

    tcp, udp, none, tiny, overlap = 6, 17, int(Frag.NONE), int(Frag.TINY), int(Frag.OVERLAP)
    assert seen(receiver.packets) == {
        *(("4", tcp, port, none) for port in (1001, 1002, 1003, 1004, 1005, 1006, _MARKER_PORT)),
        ("4", udp, 514, none),
        ("6", tcp, 1007, none),
        ("6", udp, 515, none),
        ("6", tcp, 1008, none),
        ("4", tcp, 1009, tiny),
        ("4", tcp, 0, overlap),
    }
    assert len(receiver.packets) == 13  # each once
    assert receiver.others == []
    veth = lab.ifindex(lab.target, Lab.TARGET_IF)
    for packet in receiver.packets:
        assert packet["ifindex"] == veth
        assert packet["src"] in (Lab.SCANNER4, Lab.SCANNER6)
        assert packet["length"] >= 20  # at least an IP header was handed on


def test_own_outgoing_packets_are_not_seen(lab: netns.Lab, receiver: Receiver) -> None:
    own = {"src": Lab.TARGET4, "dst": Lab.SCANNER4, "proto": "tcp", "flags": SYN}
    send(lab, lab.target, [{**own, "dport": 4001}, {**own, "proto": "udp", "dport": 514}])
    send(lab, lab.scanner, [probe(_MARKER_PORT)])
    receiver.until_port(_MARKER_PORT)
    assert [p["dport"] for p in receiver.packets] == [_MARKER_PORT]
    assert receiver.others == []


def test_a_lone_probe_arrives_at_once(lab: netns.Lab, receiver: Receiver) -> None:
    [sent] = send(lab, lab.scanner, [probe(1500)])
    packet = receiver.until_port(1500)
    latency = packet["now"] - sent["t"]
    # The sender stamps its time after send() returns: a V2 ring can hand the packet on
    # before that (measured -0.3 ms), hence the slack below zero.
    assert -0.05 <= latency < 1.0, f"a lone SYN took {latency * 1000:.1f} ms"
    stats = receiver.finish()
    assert stats["drops"] == 0
    assert stats["handled"] == 1
    assert stats["packets"] == 1


def test_a_ring_read_without_a_wait_hands_on_what_is_ready(lab: netns.Lab) -> None:
    """A negative time-out reads the ready frames and makes no system call of its own (the
    daemon's selector has waited): every probe still arrives, each at once."""
    rx = Receiver(lab, {"udp_below": 1024, "version": 2, "ready_only": True})
    try:
        for port in (1501, 1502, 1503):
            [sent] = send(lab, lab.scanner, [probe(port)])
            packet = rx.until_port(port)
            assert -0.05 <= packet["now"] - sent["t"] < 1.0
        stats = rx.finish()
        assert stats["handled"] == 3
        assert stats["drops"] == 0
    finally:
        Lab.stop(rx.proc)


def test_a_bridged_packet_is_seen_once_on_the_bridge(lab: netns.Lab) -> None:
    mac = lab.link_address(lab.target, Lab.TARGET_IF)
    for command in (
        ["ip", "link", "add", "br0", "address", mac, "type", "bridge"],
        ["ip", "link", "set", Lab.TARGET_IF, "master", "br0"],
        ["ip", "addr", "flush", "dev", Lab.TARGET_IF],
        ["ip", "addr", "add", f"{Lab.TARGET4}/{Lab.PREFIX4}", "dev", "br0"],
        ["ip", "link", "set", "br0", "up"],
    ):
        lab.run(lab.target, command)
    lab.check_closed(extra={"br0"})
    bridge = lab.ifindex(lab.target, "br0")
    rx = Receiver(lab, {"udp_below": 1024})
    assert rx.ready["counted"] == [bridge]
    send(lab, lab.scanner, [probe(1001), probe(_MARKER_PORT)])
    rx.until_port(_MARKER_PORT)
    assert [(p["dport"], p["ifindex"]) for p in rx.packets] == [
        (1001, bridge),
        (_MARKER_PORT, bridge),
    ]
    stats = rx.finish()
    assert stats["not_counted_iface"] == 2  # the copies seen on the bridge port


if __name__ == "__main__":
    commands: dict[str, Callable[[Any], None]] = {"receive": _receive, "send": _send}
    commands[sys.argv[1]](json.loads(sys.argv[2]))
