"""``daemon.unsolicited``: what the NFLOG group brings reaches the detector, the segments
conntrack called invalid are asked about first; the live path is in
``tests/e2e/test_unsolicited.py``."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from pathlib import Path
from typing import cast

from portsentinel.block.table import INVALID_PREFIX, NEW_PREFIX
from portsentinel.capture.nflog import NflogReader
from portsentinel.config.setup import load_setup
from portsentinel.daemon import unsolicited
from portsentinel.detect.detector import Detector
from portsentinel.detect.settings import DetectorConfig
from portsentinel.model import ACK, FIN, Decision, Packet

SCANNER, HOST = "198.18.0.2", "198.18.0.1"


def segment(port: int, flags: int) -> bytes:
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0,
        ipaddress.IPv4Address(SCANNER).packed, ipaddress.IPv4Address(HOST).packed,
    )  # fmt: skip
    return ip + struct.pack("!HHIIBBHHH", 40000, port, 1, 2, 0x50, flags, 1024, 0, 0)


class FakeReader:
    def __init__(self, packets: list[tuple[bytes, bytes]]) -> None:
        self.packets = packets
        self.received = len(packets)
        self.overflows = 2
        self.closed = False

    def fileno(self) -> int:
        return -1

    def read(self, handler: Callable[[memoryview, bytes], None], limit: int = 256) -> int:
        for data, prefix in self.packets:
            handler(memoryview(data), prefix)
        return len(self.packets)

    def close(self) -> None:
        self.closed = True


def source(
    packets: list[tuple[bytes, bytes]], known: bool
) -> tuple[unsolicited.UnsolicitedSource, list[Decision], list[Packet]]:
    detector = Detector(DetectorConfig(), local={ipaddress.IPv4Address(HOST).packed})
    out: list[Decision] = []
    asked: list[Packet] = []

    def knows(pkt: Packet) -> bool:
        asked.append(pkt)
        return known

    reader = cast(NflogReader, FakeReader(packets))
    src = unsolicited.UnsolicitedSource(reader, detector, out.extend, lambda: 5.0, knows)
    return src, out, asked


def test_an_ack_probe_from_the_group_is_judged() -> None:
    src, out, asked = source([(segment(79, ACK), NEW_PREFIX.encode())], known=False)
    src.on_ready()
    assert [(d.kind.value, d.port, d.time) for d in out] == [("ACK", 79, 5.0)]
    assert asked == []  # a new segment: conntrack is not asked


def test_an_invalid_segment_of_a_tracked_connection_is_no_probe() -> None:
    packets = [(segment(79, FIN | ACK), INVALID_PREFIX.encode()), (b"\x45\x00", b"")]
    src, out, asked = source(packets, known=True)
    src.on_ready()
    assert out == []
    assert len(asked) == 1
    assert src.statistics() == {
        "unsolicited_packets": 2, "unsolicited_overflows": 2, "unsolicited_known": 1,
    }  # fmt: skip
    assert src.decode_errors == 1
    src.close()
    assert src.reader.closed  # type: ignore[attr-defined]


def test_an_invalid_segment_of_no_connection_is_a_maimon_probe() -> None:
    src, out, _ = source([(segment(79, FIN | ACK), INVALID_PREFIX.encode())], known=False)
    src.on_ready()
    assert [d.kind.value for d in out] == ["MAIMON"]


def test_wanted_with_a_stealth_tcp_mode_and_the_setting(tmp_path: Path) -> None:
    conf = tmp_path / "portsentinel.conf"
    conf.write_text("")
    assert unsolicited.wanted(load_setup(str(conf), "atcp"))
    assert not unsolicited.wanted(load_setup(str(conf), "tcp"))
    conf.write_text('ACK_PROBES="0"\n')
    assert not unsolicited.wanted(load_setup(str(conf), "atcp,audp"))
