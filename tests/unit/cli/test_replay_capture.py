"""The replay engine: the options that shape it, the survey of ports in use, and the pass that
feeds a capture to the detector with the capture's own clock."""

from __future__ import annotations

import ipaddress
import os
import struct
import tempfile
from pathlib import Path

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portsentinel.cli import replay_capture as engine
from portsentinel.config.setup import detector_config, load_setup
from portsentinel.decode import decode_ethernet
from portsentinel.detect.detector import Detector
from portsentinel.detect.screen import ProbeScreen
from portsentinel.errors import CaptureError, ConfigError
from portsentinel.model import ACK, SYN, Decision
from unit.cli.stores import CAPTURES, LOCAL, T0
from unit.decode_frames import DST4, ETH_IPV4, SRC4, ethernet, ipv4, tcp, udp
from unit.decode_frames import TCP as TCP_PROTO
from unit.decode_frames import UDP as UDP_PROTO


def test_parse_in_use_takes_ports_and_ranges_per_protocol() -> None:
    found = engine.parse_in_use(["tcp:22,80", "UDP:53", "tcp:8000-8002"])
    assert found.tcp == {22, 80, 8000, 8001, 8002}
    assert found.udp == {53}
    assert engine.parse_in_use([]) == engine.InUse()


@pytest.mark.parametrize("value", ["22", "icmp:1", "tcp:70000", "tcp:9-3", "tcp:ssh"])
def test_parse_in_use_refuses_what_it_cannot_read(value: str) -> None:
    with pytest.raises(ConfigError, match="--in-use"):
        engine.parse_in_use([value])


def test_parse_local_packs_addresses() -> None:
    packed = engine.parse_local(LOCAL)
    assert packed == {ipaddress.ip_address(a).packed for a in LOCAL}
    with pytest.raises(ConfigError, match="--local"):
        engine.parse_local(["host.example"])


def test_the_survey_finds_the_ports_the_watched_host_answered_on() -> None:
    path = str(CAPTURES / "syn.pcap")
    nothing = ProbeScreen(bytearray(65536), bytearray(65536), frozenset())
    seen = engine.survey(path, engine.parse_local(LOCAL), nothing).in_use
    assert {22, 80} <= seen.tcp  # the SYN scan's open ports answered with SYN-ACK
    nobody = engine.survey(path, frozenset({b"\x00" * 4}), nothing)
    assert nobody.in_use == engine.InUse()
    assert nobody.kept == []


def test_the_survey_keeps_what_may_be_probes_and_counts_every_frame() -> None:
    path = str(CAPTURES / "syn.pcap")
    detector = Detector(detector_config(load_setup(None, "atcp,audp")))
    found = engine.survey(path, None, detector.screen)
    assert found.stats.frames == 246
    assert (found.stats.packets, found.stats.skipped, found.stats.decode_errors) == (246, 0, 0)
    # The SYNs to watched ports (1-120 and 443 of those scanned, but 113), in use or not: not
    # the RSTs, the SYN-ACKs, nor the SYN to 8080, which atcp does not watch.
    assert {(pkt[0], pkt[5]) for pkt in found.kept} == {(6, SYN)}
    assert sorted(pkt[4] for pkt in found.kept) == [*range(1, 113), *range(114, 121), 443]
    assert len(found.times) == len(found.kept)
    assert list(found.times) == sorted(found.times)  # the capture's times, kept with them
    assert found.resume is None


def test_run_replay_feeds_every_packet_and_counts_the_decisions() -> None:
    setup = load_setup(None, "atcp,audp")
    path = str(CAPTURES / "syn.pcap")
    local = engine.parse_local(LOCAL)
    detector = Detector(detector_config(setup), local=local)
    emitted: list[Decision] = []
    stats = engine.run_replay(path, detector, emitted.append, local=local)
    assert stats.packets > 0
    assert sum(stats.decisions.values()) == len(emitted)
    times = [d.time for d in emitted]
    assert times == sorted(times)  # the capture's clock
    line = engine.summary(path, stats)
    assert line.startswith(f"replayed {path}: {stats.frames} frames, ")
    assert "warning" not in line


@pytest.mark.parametrize("cut", [False, True])
def test_past_the_keep_limit_the_second_pass_reads_the_rest_again(
    cut: bool, tmp_path: Path
) -> None:
    """Packets kept between the passes are bounded; the result does not depend on the bound,
    also for a capture cut short (the second pass meets the cut again)."""
    setup = load_setup(None, "atcp,audp")
    whole = (CAPTURES / "syn.pcap").read_bytes()
    path = tmp_path / "syn.pcap"
    path.write_bytes(whole[: len(whole) * 3 // 4 + 5] if cut else whole)
    local = engine.parse_local(LOCAL)
    results = []
    for limit in (engine.KEEP_MAX, 10, 0):
        emitted: list[Decision] = []
        detector = Detector(detector_config(setup), local=local)
        stats = engine.run_replay(str(path), detector, emitted.append, local=local, limit=limit)
        results.append((stats, emitted))
    assert results[1] == results[0]
    assert results[2] == results[0]
    assert (results[0][0].truncated is not None) is cut
    assert len(results[0][1]) == (87 if cut else 118)  # the decisions before the cut


def test_summary_says_when_a_capture_was_cut_short() -> None:
    stats = engine.ReplayStats(frames=3, packets=2, truncated="ends inside a frame")
    line = engine.summary("x.pcap", stats)
    assert "decisions: none" in line
    assert line.endswith(
        "\nwarning: capture cut short, replayed up to the cut: ends inside a frame"
    )


def test_a_capture_that_is_not_a_regular_file_is_refused_before_the_reader_opens_it(
    tmp_path: Path,
) -> None:
    """The reader's open of a FIFO waits for a writer for ever."""
    fifo = tmp_path / "capture.pcap"
    os.mkfifo(fifo)
    with pytest.raises(CaptureError) as caught:
        engine.check_capture(str(fifo))
    assert str(caught.value) == (
        f"{fifo}: cannot read capture: a FIFO (named pipe), not a regular file"
    )
    loop = tmp_path / "loop.pcap"
    loop.symlink_to(loop.name)
    with pytest.raises(CaptureError, match="cannot read capture: a symlink loop"):
        engine.check_capture(str(loop))


_frames = st.lists(
    st.tuples(
        st.sampled_from([TCP_PROTO, UDP_PROTO]),
        st.booleans(),  # from the watched host (else from the scanner)
        st.sampled_from([7, 22, 53, 1023, 1024, 40000]),  # the other port
        st.sampled_from([7, 22, 53, 1023, 1024, 40000]),
        st.integers(0, 255),  # TCP flags
        st.sampled_from(["whole", "first", "later"]),  # a fragment?
    ),
    max_size=60,
)


@given(_frames, st.booleans())
@settings(max_examples=150, deadline=None)
def test_the_survey_keeps_what_the_screen_passes_and_finds_every_answer(
    frames: list[tuple[int, bool, int, int, int, str]], with_local: bool
) -> None:
    """Pass one reads the screen inline: it must keep exactly what the screen passes, and
    note a port in use for every SYN-ACK or whole UDP datagram from a watched host."""
    scanner, host = bytes([198, 18, 0, 2]), bytes([198, 18, 0, 1])
    local = frozenset({host}) if with_local else None
    built = []
    for proto, from_host, sport, dport, flags, piece in frames:
        src, dst = (host, scanner) if from_host else (scanner, host)
        body = tcp(sport, dport, flags) if proto == TCP_PROTO else udp(sport, dport)
        if piece == "first":
            packet = ipv4(proto, body[:4], src=src, dst=dst, more_fragments=True)
        elif piece == "later":
            packet = ipv4(proto, body[8:], src=src, dst=dst, frag_offset=1)
        else:
            packet = ipv4(proto, body, src=src, dst=dst)
        built.append(ethernet(ETH_IPV4, packet))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.pcap"
        with path.open("wb") as fh:
            writer = dpkt.pcap.Writer(fh)
            for i, frame in enumerate(built):
                writer.writepkt(frame, ts=T0 + i)
        detector = Detector(detector_config(load_setup(None, "atcp,audp")))
        found = engine.survey(str(path), local, detector.screen)
    decoded = [(T0 + i, pkt) for i, f in enumerate(built) if (pkt := decode_ethernet(f))]
    assert found.kept == [pkt for _ts, pkt in decoded if detector.screen(pkt)]
    assert list(found.times) == [ts for ts, pkt in decoded if detector.screen(pkt)]
    answers = [p for _ts, p in decoded if local is None or p[1] in local]
    assert found.in_use.tcp == {
        p[3] for p in answers if p[0] == TCP_PROTO and p[5] & (SYN | ACK) == SYN | ACK
    }
    assert found.in_use.udp == {p[3] for p in answers if p[0] == UDP_PROTO and not p[8]}
    assert (found.stats.frames, found.stats.packets) == (len(built), len(decoded))


def _pcap(path: Path, frames: list[bytes]) -> str:
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    records = b"".join(
        struct.pack("<IIII", 100 + i, 0, len(f), len(f)) + f for i, f in enumerate(frames)
    )
    path.write_bytes(header + records)
    return str(path)


def test_an_ack_of_no_connection_in_the_capture_is_an_ack_probe(tmp_path: Path) -> None:
    """A connection the capture shows from its SYN on: its ACKs are no probes. A bare ACK and
    a FIN+ACK to ports with no packet before them: ACK and MAIMON probes. Not with the
    setting off."""

    def out(segment: bytes) -> bytes:
        return ethernet(ETH_IPV4, ipv4(TCP_PROTO, segment, src=SRC4, dst=DST4))

    def back(segment: bytes) -> bytes:
        return ethernet(ETH_IPV4, ipv4(TCP_PROTO, segment, src=DST4, dst=SRC4))

    frames = [
        out(tcp(40000, 79, SYN)),
        back(tcp(79, 40000, 0x04 | ACK)),  # RST
        out(tcp(40000, 79, ACK)),  # the same flow
        out(tcp(40001, 80, ACK)),
        out(tcp(40001, 81, 0x01 | ACK)),
        back(tcp(81, 40001, 0x04)),
    ]
    path = _pcap(tmp_path / "ack.pcap", frames)
    setup = load_setup(None, "atcp,audp")
    for on, kinds in ((True, ["SYN", "ACK", "MAIMON"]), (False, ["SYN"])):
        emitted: list[Decision] = []
        detector = Detector(detector_config(setup))
        engine.run_replay(path, detector, emitted.append, unsolicited=on)
        assert [d.kind.value for d in emitted] == kinds
        assert [d.port for d in emitted] == [79, 80, 81][: len(kinds)]
