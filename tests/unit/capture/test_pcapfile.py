"""Tests for the pcap/pcapng reader: files written by dpkt and by hand, damage, and fuzzing."""

from __future__ import annotations

import io
import mmap
import os
import struct
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portsentinel.capture.pcapfile import PROGRESS_EVERY, CorruptCaptureError, Frame, open_capture
from portsentinel.errors import CaptureError

T0 = 1_700_000_000
ETH = 1
RAW = 101
SLL = 113

# --- hand-written pcapng blocks ------------------------------------------------------------


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def block(order: str, btype: int, body: bytes, *, length: int | None = None) -> bytes:
    """A pcapng block; ``length`` overrides the declared total length (for damage)."""
    body = _pad(body)
    total = 12 + len(body) if length is None else length
    return struct.pack(order + "II", btype, total) + body + struct.pack(order + "I", total)


def shb(order: str, major: int = 1, minor: int = 0) -> bytes:
    return block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, major, minor, -1))


def option(order: str, code: int, value: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + _pad(value)


def idb(order: str, linktype: int, *options: bytes, snaplen: int = 0) -> bytes:
    opts = b"".join(options) + (option(order, 0, b"") if options else b"")
    return block(order, 1, struct.pack(order + "HHI", linktype, 0, snaplen) + opts)


def tsresol(order: str, value: int) -> bytes:
    return option(order, 9, bytes([value]))


def tsoffset(order: str, seconds: int) -> bytes:
    return option(order, 14, struct.pack(order + "q", seconds))


def epb(order: str, iface: int, ticks: int, data: bytes) -> bytes:
    head = struct.pack(
        order + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data)
    )
    return block(order, 6, head + data)


def spb(order: str, data: bytes, original: int | None = None) -> bytes:
    return block(
        order, 3, struct.pack(order + "I", len(data) if original is None else original) + data
    )


def pb(order: str, iface: int, ticks: int, data: bytes) -> bytes:
    head = struct.pack(
        order + "HHIIII", iface, 0, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data)
    )
    return block(order, 2, head + data)


def pcap_file(
    order: str, magic: int, records: Iterable[tuple[int, int, bytes]], linktype: int
) -> bytes:
    """A classic pcap file; each record is (seconds, fraction, data)."""
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)]
    for sec, frac, data in records:
        out.append(struct.pack(order + "IIII", sec, frac, len(data), len(data)) + data)
    return b"".join(out)


def frame(n: int, size: int = 60) -> bytes:
    return bytes((n + i) & 0xFF for i in range(size))


def read(path: Path) -> list[Frame]:
    with open_capture(path) as capture:
        return list(capture)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- files written by dpkt, cross-checked with dpkt's readers ------------------------------

PACKETS = [(T0 + k / 4, frame(k, 60 + 7 * k)) for k in range(12)] + [(T0 + 0.123457, frame(99))]


@pytest.mark.parametrize("nano", [False, True])
def test_dpkt_pcap_matches_written_and_dpkt(tmp_path: Path, nano: bool) -> None:
    buf = io.BytesIO()
    writer = dpkt.pcap.Writer(buf, linktype=ETH, nano=nano)
    for ts, data in PACKETS:
        writer.writepkt(data, ts)
    path = write(tmp_path, "dpkt.pcap", buf.getvalue())

    got = read(path)

    assert [(lt, data) for _, lt, data in got] == [(ETH, data) for _, data in PACKETS]
    assert [ts for ts, _, _ in got[:12]] == [ts for ts, _ in PACKETS[:12]]  # exact quarters
    assert got[12][0] == pytest.approx(T0 + 0.123457, abs=1e-6)
    with path.open("rb") as file:
        theirs = list(dpkt.pcap.Reader(file))  # nanosecond timestamps come as Decimal
    assert [data for _, _, data in got] == [data for _, data in theirs]
    assert [ts for ts, _, _ in got] == pytest.approx([float(ts) for ts, _ in theirs], abs=1e-6)


def test_dpkt_pcapng_matches_written_and_dpkt(tmp_path: Path) -> None:
    buf = io.BytesIO()
    writer = dpkt.pcapng.Writer(buf, linktype=RAW)
    for ts, data in PACKETS:
        writer.writepkt(data, ts)
    path = write(tmp_path, "dpkt.pcapng", buf.getvalue())

    got = read(path)

    assert got[:12] == [(ts, RAW, data) for ts, data in PACKETS[:12]]
    assert got[12][1:] == (RAW, PACKETS[12][1])
    with path.open("rb") as file:
        assert got == [(ts, RAW, data) for ts, data in dpkt.pcapng.Reader(file)]


def test_info_of_pcap_and_pcapng(tmp_path: Path) -> None:
    buf = io.BytesIO()
    dpkt.pcap.Writer(buf, linktype=RAW, nano=True)
    with open_capture(write(tmp_path, "a.pcap", buf.getvalue())) as capture:
        info = capture.info
    assert (info.format, info.linktypes, info.byte_order, info.version) == (
        "pcap",
        (RAW,),
        "little",
        (2, 4),
    )
    assert info.size == 24
    data = shb(">") + idb(">", ETH) + idb(">", RAW) + epb(">", 0, 0, b"x") + idb(">", SLL)
    with open_capture(write(tmp_path, "b.pcapng", data)) as capture:
        info = capture.info
    # Only the interfaces declared before the first packet are listed.
    assert (info.format, info.linktypes, info.byte_order, info.version) == (
        "pcapng",
        (ETH, RAW),
        "big",
        (1, 0),
    )


# --- hand-written classic pcap -------------------------------------------------------------


@pytest.mark.parametrize(
    ("order", "magic", "divisor"),
    [
        ("<", 0xA1B2C3D4, 1e6),
        (">", 0xA1B2C3D4, 1e6),
        ("<", 0xA1B23C4D, 1e9),
        (">", 0xA1B23C4D, 1e9),
    ],
)
def test_pcap_both_byte_orders_and_resolutions(
    tmp_path: Path, order: str, magic: int, divisor: float
) -> None:
    records = [(T0, int(divisor) // 2, frame(1)), (T0 + 5, 3, frame(2, 1514)), (T0 + 6, 0, b"")]
    path = write(tmp_path, "hand.pcap", pcap_file(order, magic, records, linktype=RAW))

    got = read(path)

    assert got == [(sec + frac / divisor, RAW, data) for sec, frac, data in records]
    assert got[0][0] == T0 + 0.5
    assert got[1][0] == pytest.approx(T0 + 5 + 3 / divisor, abs=1e-6)
    with path.open("rb") as file:
        theirs = [float(ts) for ts, _ in dpkt.pcap.Reader(file)]
    assert [ts for ts, _, _ in got] == pytest.approx(theirs, abs=1e-6)


def test_pcap_linktype_drops_fcs_bits(tmp_path: Path) -> None:
    data = pcap_file("<", 0xA1B2C3D4, [(T0, 0, frame(1))], linktype=(1 << 26) | (4 << 27) | ETH)
    path = write(tmp_path, "fcs.pcap", data)
    assert read(path)[0][1] == ETH
    with open_capture(path) as capture:
        assert capture.info.linktypes == (ETH,)


# --- hand-written pcapng: several sections, interfaces and block kinds ---------------------

NS_TICKS = T0 * 10**9 + 123_456_789


def two_section_file() -> tuple[bytes, list[Frame]]:
    """Section 1 (little-endian): Ethernet µs + raw IP ns, SPB, PB, an unknown block.
    Section 2 (big-endian): Linux cooked with 2^-10 resolution and a 1.6e9 s offset."""
    le, be = "<", ">"
    sec1 = [
        shb(le),
        idb(le, ETH, option(le, 2, b"eth0"), snaplen=0),
        idb(le, RAW, option(le, 2, b"wg0"), tsresol(le, 9)),
        epb(le, 0, T0 * 10**6 + 250_000, frame(1)),
        epb(le, 1, NS_TICKS, frame(2, 41)),
        block(le, 0x0BAD, b"unknown block contents"),
        spb(le, frame(3, 62)),
        pb(le, 1, NS_TICKS + 10**9, frame(4)),
        spb(le, frame(7)),
    ]
    sec2 = [
        shb(be),
        idb(be, SLL, tsresol(be, 0x80 | 10), tsoffset(be, 1_600_000_000)),
        epb(be, 0, 100_000_000 * 1024 + 256, frame(5, 1514)),
        spb(be, frame(6)),
    ]
    ns = NS_TICKS / 1e9
    expected: list[Frame] = [
        (T0 + 0.25, ETH, frame(1)),
        (ns, RAW, frame(2, 41)),
        (ns, ETH, frame(3, 62)),  # SPB: interface 0, previous timestamp
        (ns + 1, RAW, frame(4)),
        (ns + 1, ETH, frame(7)),  # SPB after a PB: the PB's timestamp
        (1_700_000_000.25, SLL, frame(5, 1514)),
        (1_700_000_000.25, SLL, frame(6)),
    ]
    return b"".join(sec1 + sec2), expected


def test_pcapng_sections_interfaces_and_block_kinds(tmp_path: Path) -> None:
    data, expected = two_section_file()
    got = read(write(tmp_path, "multi.pcapng", data))
    assert [(lt, frame_) for _, lt, frame_ in got] == [(lt, f) for _, lt, f in expected]
    assert [ts for ts, _, _ in got] == pytest.approx([ts for ts, _, _ in expected], abs=1e-6)
    assert got[0][0] == T0 + 0.25
    assert got[1][0] == pytest.approx(T0 + 0.123456789, abs=1e-6)
    assert got[5][0] == 1_700_000_000.25  # 2^-10 units plus if_tsoffset, exactly
    assert all(type(f) is bytes for _, _, f in got)


def test_single_interface_tsresol_agrees_with_dpkt(tmp_path: Path) -> None:
    data = shb("<") + idb("<", RAW, tsresol("<", 9), tsoffset("<", 7))
    data += epb("<", 0, NS_TICKS, frame(1)) + epb("<", 0, NS_TICKS + 5, frame(2))
    path = write(tmp_path, "ns.pcapng", data)
    with path.open("rb") as file:
        theirs = [(ts, RAW, bytes(f)) for ts, f in dpkt.pcapng.Reader(file)]
    assert read(path) == theirs


def test_spb_before_any_timestamp_and_snaplen(tmp_path: Path) -> None:
    # 61 bytes kept of 100: the block holds 64 with padding; snaplen says where data ends.
    data = shb("<") + idb("<", ETH, snaplen=61) + spb("<", frame(1, 61), original=100)
    assert read(write(tmp_path, "spb.pcapng", data)) == [(0.0, ETH, frame(1, 61))]


def test_spb_length_comes_from_the_block_when_original_is_longer(tmp_path: Path) -> None:
    data = shb("<") + idb("<", ETH) + spb("<", frame(1, 61), original=1500)
    # Without a snaplen the captured bytes fill the block, padding included.
    assert read(write(tmp_path, "spb.pcapng", data)) == [(0.0, ETH, frame(1, 61) + b"\0\0\0")]


def test_options_after_end_of_options_are_ignored(tmp_path: Path) -> None:
    data = shb("<") + idb("<", ETH, option("<", 0, b""), tsresol("<", 9))
    data += epb("<", 0, T0 * 10**6, frame(1))
    assert read(write(tmp_path, "opts.pcapng", data)) == [(float(T0), ETH, frame(1))]


def test_reiterating_starts_again_and_frames_outlive_close(tmp_path: Path) -> None:
    data, expected = two_section_file()
    with open_capture(write(tmp_path, "again.pcapng", data)) as capture:
        first = list(capture)
        assert list(capture) == first
    assert [f for _, _, f in first] == [f for _, _, f in expected]


# --- damage ---------------------------------------------------------------------------------


def pcapng_with(*blocks: bytes) -> bytes:
    return shb("<") + idb("<", ETH) + epb("<", 0, 1, frame(1)) + b"".join(blocks)


def damage(tmp_path: Path, data: bytes) -> tuple[list[Frame], CorruptCaptureError]:
    """Iterate a damaged file; return the frames before the error and the error."""
    got: list[Frame] = []
    with (
        open_capture(write(tmp_path, "damaged", data)) as capture,
        pytest.raises(CorruptCaptureError) as caught,
    ):
        got.extend(capture)
    return got, caught.value


@pytest.mark.parametrize("cut", [1, 15, 16, 40])
def test_truncated_pcap_tail(tmp_path: Path, cut: int) -> None:
    records = [(T0, 0, frame(1)), (T0, 1, frame(2)), (T0, 2, frame(3))]
    data = pcap_file("<", 0xA1B2C3D4, records, linktype=ETH)
    got, error = damage(tmp_path, data[: len(data) - 60 - 16 + cut])
    assert [f for _, _, f in got] == [frame(1), frame(2)]
    assert (error.packets, error.offset, error.truncated) == (2, 24 + 2 * 76, True)
    assert "after 2 packets" in str(error)
    assert "at offset 176" in str(error)
    assert str(tmp_path / "damaged") in str(error)


def test_truncated_pcapng_tail(tmp_path: Path) -> None:
    data, expected = two_section_file()
    got, error = damage(tmp_path, data[:-10])
    assert [(lt, f) for _, lt, f in got] == [(lt, f) for _, lt, f in expected[:6]]
    assert (error.packets, error.truncated) == (6, True)
    assert error.offset == len(data) - len(spb(">", frame(6)))


def test_pcapng_last_block_cut_inside_its_trailer(tmp_path: Path) -> None:
    got, error = damage(tmp_path, pcapng_with(epb("<", 0, 2, frame(2)))[:-2])
    assert [f for *_, f in got] == [frame(1)]
    assert (error.packets, error.offset, error.truncated) == (1, len(pcapng_with()), True)


@pytest.mark.parametrize("tail", [b"\x06\0\0", b"\x06\0\0\0\x20\0\0\0"])
def test_pcapng_tail_shorter_than_a_block(tmp_path: Path, tail: bytes) -> None:
    got, error = damage(tmp_path, pcapng_with(tail))
    assert [f for *_, f in got] == [frame(1)]
    assert (error.packets, error.offset, error.truncated) == (1, len(pcapng_with()), True)
    assert "truncated block" in str(error)


@pytest.mark.parametrize(
    ("bad", "text"),
    [
        (epb("<", 0, 2, frame(2))[:4] + struct.pack("<I", 81) + epb("<", 0, 2, frame(2))[8:], "81"),
        (epb("<", 0, 2, b"tiny")[:4] + struct.pack("<I", 50) + epb("<", 0, 2, b"tiny")[8:], "50"),
        (block("<", 6, b"\0" * 16, length=28), "minimum 32"),
        (block("<", 0x0BAD, b"", length=8), "minimum 12"),
        (block("<", 3, b"", length=12), "minimum 16"),
    ],
)
def test_corrupt_block_length(tmp_path: Path, bad: bytes, text: str) -> None:
    got, error = damage(tmp_path, pcapng_with(bad, epb("<", 0, 3, frame(3))))
    assert [f for *_, f in got] == [frame(1)]
    assert (error.packets, error.truncated) == (1, False)
    assert error.offset == len(pcapng_with())
    assert "bad length" in str(error)
    assert text in str(error)


def test_caplen_overrunning_block(tmp_path: Path) -> None:
    bad = bytearray(epb("<", 0, 2, frame(2)))
    bad[20:24] = struct.pack("<I", 64)  # captured length 64 in a 60-byte payload
    _, error = damage(tmp_path, pcapng_with(bytes(bad)))
    assert "overruns" in str(error)


@pytest.mark.parametrize("packet", [epb, pb])
def test_packet_on_undeclared_interface(
    tmp_path: Path, packet: Callable[[str, int, int, bytes], bytes]
) -> None:
    _, error = damage(tmp_path, pcapng_with(packet("<", 3, 2, frame(2))))
    assert "interface 3" in str(error)
    assert error.packets == 1


def test_spb_without_interface(tmp_path: Path) -> None:
    _, error = damage(tmp_path, shb("<") + spb("<", frame(1)))
    assert "interface 0" in str(error)


def test_bad_second_section(tmp_path: Path) -> None:
    _, error = damage(tmp_path, pcapng_with(shb("<", major=2)))
    assert "version 2.0" in str(error)


# --- pcapng time fields: any time a 64-bit timestamp, a resolution and an offset can say ---

LAST_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z, the last time a datetime can show


@pytest.mark.parametrize("packet", [epb, pb])
@pytest.mark.parametrize(
    ("options", "ticks", "shown"),
    [
        ((tsoffset("<", 2**62),), 1, "if_tsoffset 4611686018427387904 s"),
        ((tsoffset("<", -(2**62)),), 1, "if_tsoffset -4611686018427387904 s"),
        ((tsoffset("<", -100),), 1, "if_tsoffset -100 s"),  # before 1970
        ((tsresol("<", 0),), 2**64 - 1, "timestamp 18446744073709551615 in units of 1 s"),
        ((), 2**64 - 1, "in units of 1e-06 s"),  # microseconds can say year 586,524 too
        ((tsresol("<", 0),), LAST_SECOND + 1, "timestamp 253402300800 in units of 1 s"),
    ],
)
def test_a_packet_time_outside_1970_to_9999_is_damage(
    tmp_path: Path,
    packet: Callable[[str, int, int, bytes], bytes],
    options: tuple[bytes, ...],
    ticks: int,
    shown: str,
) -> None:
    data = pcapng_with(idb("<", ETH, *options), packet("<", 1, ticks, frame(2)))
    got, error = damage(tmp_path, data)
    assert [f for *_, f in got] == [frame(1)]  # the packet before it, on interface 0
    assert (error.packets, error.truncated) == (1, False)
    assert error.offset == len(pcapng_with(idb("<", ETH, *options)))
    assert "packet time out of range" in str(error)
    assert shown in str(error)
    assert "(interface 1) is not within 1970-9999" in str(error)


@pytest.mark.parametrize(
    ("options", "ticks", "expected"),
    [
        ((tsresol("<", 0),), LAST_SECOND, float(LAST_SECOND)),
        ((tsoffset("<", LAST_SECOND),), 0, float(LAST_SECOND)),
        ((tsoffset("<", -100),), 100_000_000, 0.0),
        ((tsresol("<", 127),), 2**64 - 1, 1.8446744073709552e-108),  # 1e-127 s units
    ],
)
def test_times_at_the_edges_of_the_range_are_read(
    tmp_path: Path, options: tuple[bytes, ...], ticks: int, expected: float
) -> None:
    data = shb("<") + idb("<", ETH, *options) + epb("<", 0, ticks, frame(1))
    assert read(write(tmp_path, "edge.pcapng", data)) == [(expected, ETH, frame(1))]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    resolution=st.integers(0, 255),
    offset=st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-(10**12), 10**12)),
    ticks=st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 10**18)),
)
def test_any_time_fields_give_a_time_a_datetime_can_show_or_damage(
    tmp_path: Path, resolution: int, offset: int, ticks: int
) -> None:
    data = shb("<") + idb("<", ETH, tsresol("<", resolution), tsoffset("<", offset))
    path = write(tmp_path, "times.pcapng", data + epb("<", 0, ticks, frame(1)))
    units = float((2 if resolution & 0x80 else 10) ** (resolution & 0x7F))
    expected = ticks / units + offset
    if 0 <= expected <= LAST_SECOND:
        [(ts, _linktype, _frame)] = read(path)
        assert ts == expected
        assert datetime.fromtimestamp(ts, UTC).year <= 9999  # what replay prints
    else:
        with pytest.raises(CorruptCaptureError, match="packet time out of range") as caught:
            read(path)
        assert not caught.value.truncated


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"", "not a pcap or pcapng file (the file is empty)"),
        (b"\xd4\xc3", "not a pcap or pcapng file (only 2 bytes)"),
        (b"GIF89a....", "not a pcap or pcapng file (starts with 0x47494638)"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", "truncated pcap file header (6 of 24 bytes)"),
        (shb("<")[:8] + b"\0" * 20, "bad byte-order magic"),
        (shb("<", major=2), "unsupported pcapng version 2.0"),
        (shb("<") + idb("<", ETH, tsresol("<", 9) + b"")[:-4], "truncated block"),
        (shb("<") + idb("<", ETH, option("<", 9, b"\x06\x06")), "if_tsresol option of 2 bytes"),
        (shb("<") + idb("<", ETH, option("<", 14, b"\x06")), "if_tsoffset option of 1 bytes"),
        (
            shb("<") + block("<", 1, struct.pack("<HHI", 1, 0, 0) + struct.pack("<HH", 2, 99)),
            "overruns",
        ),
    ],
)
def test_open_rejects_non_captures(tmp_path: Path, data: bytes, text: str) -> None:
    path = write(tmp_path, "bad.cap", data)
    with pytest.raises(CaptureError, match="^" + str(path).replace("\\", "\\\\")) as caught:
        open_capture(path)
    assert text in str(caught.value)


def test_open_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="No such file or directory"):
        open_capture(tmp_path / "missing.pcap")
    with pytest.raises(CaptureError, match="Is a directory"):
        open_capture(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_open_unreadable(tmp_path: Path) -> None:
    path = write(tmp_path, "secret.pcap", pcap_file("<", 0xA1B2C3D4, [], ETH))
    path.chmod(0)
    with pytest.raises(CaptureError, match="Permission denied"):
        open_capture(path)


def test_open_fifo_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # a writer, so opening for reading won't block
    try:
        with pytest.raises(CaptureError, match="not a regular file"):
            open_capture(path)
    finally:
        os.close(fd)


# --- lifecycle ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
def test_closed_reader_refuses_to_iterate(tmp_path: Path, kind: str) -> None:
    records = [(T0, 0, frame(1)), (T0, 1, frame(2))]
    data = pcap_file("<", 0xA1B2C3D4, records, ETH) if kind == "pcap" else two_section_file()[0]
    capture = open_capture(write(tmp_path, "c." + kind, data))
    running = iter(capture)
    first = next(running)
    capture.close()
    capture.close()  # idempotent
    with pytest.raises(CaptureError, match="closed"):
        iter(capture)
    with pytest.raises(CaptureError, match="closed during iteration"):
        next(running)
    assert first[2] == frame(1)
    assert "closed" in repr(capture)


def test_unmappable_file_is_read_instead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, expected = two_section_file()
    path = write(tmp_path, "nomap.pcapng", data)

    refused: list[object] = []

    def refuse(*args: object, **_kwargs: object) -> mmap.mmap:
        refused.append(args)
        raise OSError(19, "No such device")

    with monkeypatch.context() as patch:
        patch.setattr(mmap, "mmap", refuse)
        capture = open_capture(path)
    assert refused
    with capture:
        assert [f for *_, f in capture] == [f for *_, f in expected]


# --- fuzzing: junk only ever raises CaptureError ---------------------------------------------


def _valid_samples() -> list[bytes]:
    buf = io.BytesIO()
    writer = dpkt.pcap.Writer(buf, nano=True)
    for ts, data in PACKETS[:4]:
        writer.writepkt(data, ts)
    big_endian = pcap_file(">", 0xA1B2C3D4, [(T0, 1, frame(1)), (T0, 2, frame(2))], RAW)
    return [buf.getvalue(), big_endian, two_section_file()[0]]


SAMPLES = _valid_samples()


def consume(path: Path) -> int:
    """Open and read a file; only CaptureError may escape. Returns the frames read."""
    size = path.stat().st_size
    count = 0
    try:
        with open_capture(path) as capture:
            for ts, linktype, data in capture:
                assert isinstance(ts, float)
                assert 0 <= ts <= LAST_SECOND
                assert 0 <= linktype <= 0xFFFFFFFF
                assert type(data) is bytes
                assert len(data) <= size
                count += 1
    except CaptureError:
        pass
    return count


FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(st.binary(max_size=256))
def test_random_bytes_only_raise_capture_error(tmp_path: Path, data: bytes) -> None:
    consume(write(tmp_path, "random", data))


@FUZZ
@given(
    st.sampled_from(SAMPLES),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    st.integers(0, 10**6),
)
def test_mutated_captures_only_raise_capture_error(
    tmp_path: Path, sample: bytes, edits: list[tuple[int, int]], keep: int
) -> None:
    data = bytearray(sample)
    for position, value in edits:
        data[position % len(data)] = value
    consume(write(tmp_path, "mutated", bytes(data[: keep % (len(data) + 1)])))


def test_a_reader_notes_how_far_it_has_read(tmp_path: Path) -> None:
    """Every PROGRESS_EVERY packets the walk notes (bytes, packets), pcap and pcapng alike, for
    replay's progress line; nothing before the first note."""
    frame = b"\x45" + b"\x00" * 19
    one = epb("<", 0, T0, frame)
    head = shb("<") + idb("<", RAW)
    path = tmp_path / "c.pcapng"
    path.write_bytes(head + one * (PROGRESS_EVERY + 3))
    with open_capture(path) as reader:
        assert reader.progress == (0, 0)
        assert reader.size == path.stat().st_size
        assert sum(1 for _ in reader) == PROGRESS_EVERY + 3
        assert reader.progress == (len(head) + PROGRESS_EVERY * len(one), PROGRESS_EVERY)
