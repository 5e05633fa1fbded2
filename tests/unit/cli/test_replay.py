"""``portsentinel replay``: the verb end to end on the fixture captures (no root needed)."""

from __future__ import annotations

import ipaddress
import json
import re
import struct
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import dpkt
import pytest

from portsentinel.cli.main import main
from unit.cli.stores import CAPTURES, LOCAL, SCANNER, T0, write
from unit.cli.stores import run_main as run
from unit.decode_frames import ETH_IPV4, ethernet, ipv4, tcp
from unit.decode_frames import TCP as TCP_PROTO

TCP_EVENTS_IN_SYN = (set(range(1, 121)) | {443}) - {22, 80, 113}
Json = dict[str, Any]


def split(out: str) -> tuple[list[Json], list[Json]]:
    """A replay's JSON lines: (events, summaries of what was held back)."""
    lines = [json.loads(line) for line in out.splitlines()]
    return [x for x in lines if "type" not in x], [x for x in lines if x.get("type") == "summary"]


@pytest.mark.parametrize(
    ("extra", "status", "needle"),
    [
        (["--in-use", "sctp:5"], 2, "--in-use"),
        (["--in-use", "tcp:99999"], 2, "--in-use"),
        (["--local", "not-an-ip"], 2, "--local"),
        (["--mode", "atcp,stcp"], 2, "mode"),
    ],
)
def test_replay_usage_errors(
    extra: list[str], status: int, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write(tmp_path / "c.conf", "")
    code, out, err = run(["replay", "--config", conf, *extra, str(CAPTURES / "syn.pcap")], capsys)
    assert code == status
    assert out == ""
    assert needle in err
    assert "Traceback" not in err


@pytest.mark.parametrize("content", [b"", b"this is not a capture at all, just text\n"])
def test_replay_of_a_non_capture_is_a_runtime_failure(
    content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = tmp_path / "junk.pcap"
    capture.write_bytes(content)
    conf = write(tmp_path / "c.conf", "")
    status, _out, err = run(["replay", "--config", conf, "--mode", "atcp", str(capture)], capsys)
    assert status == 1
    assert str(capture) in err


@pytest.mark.parametrize(
    ("resolution", "offset", "ticks"),
    [(6, 2**62, 1), (6, -(2**62), 1), (0, 0, 2**64 - 1)],  # huge, negative; 1 s and the largest
)
def test_replay_of_a_pcapng_with_impossible_times_is_one_line_and_status_1(
    resolution: int, offset: int, ticks: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    syn = ethernet(ETH_IPV4, ipv4(TCP_PROTO, tcp(40000, 23)))
    header = struct.pack("<HHI", 1, 0, 0) + struct.pack("<HHB3x", 9, 1, resolution)
    header += struct.pack("<HHq", 14, 8, offset) + struct.pack("<HH", 0, 0)
    packet = struct.pack("<IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF, len(syn), len(syn)) + syn
    capture = tmp_path / "times.pcapng"
    capture.write_bytes(
        pcapng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
        + pcapng_block(1, header)
        + pcapng_block(6, packet)
    )
    conf = write(tmp_path / "c.conf", "")
    status, out, err = run(["replay", "--config", conf, "--mode", "atcp", str(capture)], capsys)
    assert status == 1
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"portsentinel: {capture}: packet time out of range: ")
    assert "Traceback" not in err


def pcapng_block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


def test_replay_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write(tmp_path / "c.conf", "")
    missing = tmp_path / "nope.pcap"
    status, _out, err = run(["replay", "--config", conf, "--mode", "atcp", str(missing)], capsys)
    assert status == 1
    assert str(missing) in err


def test_replay_honours_the_ignore_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ignore = write(
        tmp_path / "ignore", "# the scanner's /24, written with a host address\n198.18.0.77/24\n"
    )
    conf = write(tmp_path / "c.conf", f'IGNORE_FILE="{ignore}"\n')
    argv = ["replay", "--config", conf, "--mode", "atcp", "--every-probe"]
    status, out, _err = run([*argv, str(CAPTURES / "syn.pcap")], capsys)
    assert status == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert len(events) == len(TCP_EVENTS_IN_SYN)
    assert {(e["action"], e["reason"]) for e in events} == {("ignored", "ignore list")}


def test_replay_own_address_is_never_acted_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write(tmp_path / "c.conf", "")
    argv = ["replay", "--config", conf, "--mode", "atcp", "--local", "198.18.0.1"]
    argv += ["--local", "198.18.0.2", str(CAPTURES / "syn.pcap")]
    status, out, _err = run(argv, capsys)
    assert status == 0
    events, summaries = split(out)
    assert {e["reason"] for e in events} == {"own address"}
    assert {(s["src"], s["reason"]) for summary in summaries for s in summary["sources"]} == {
        ("198.18.0.2", "own address")
    }


def test_replay_modes_from_the_defaults_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    defaults = write(tmp_path / "portsentry", 'TCP_MODE="stcp"\nUDP_MODE="sudp"\n')
    conf = write(tmp_path / "c.conf", f'DEFAULTS_FILE="{defaults}"\nTCP_PORTS="1,2,3"\n')
    status, out, _err = run(["replay", "--config", conf, str(CAPTURES / "syn.pcap")], capsys)
    assert status == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert {e["port"] for e in events} == {1, 2, 3}
    assert {e["mode"] for e in events} == {"stcp"}


def test_replay_of_a_capture_cut_short_keeps_what_it_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole = (CAPTURES / "syn.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(whole[: len(whole) // 2 + 7])  # ends inside a record
    conf = write(tmp_path / "c.conf", "")
    status, out, err = run(["replay", "--config", conf, "--mode", "atcp", str(cut)], capsys)
    assert status == 0
    assert "cut short" in err
    assert len(out.splitlines()) > 10


def test_replay_counts_malformed_frames_and_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = [frame for _ts, frame in dpkt.pcap.Reader((CAPTURES / "syn.pcap").open("rb"))]
    mixed = tmp_path / "mixed.pcap"
    with mixed.open("wb") as fh:
        writer = dpkt.pcap.Writer(fh)
        for i, frame in enumerate(good):
            writer.writepkt(frame, ts=1_000_000 + i)
            writer.writepkt(frame[:20], ts=1_000_000 + i)  # Ethernet + 6 bytes of IPv4
    conf = write(tmp_path / "c.conf", "")
    argv = ["replay", "--config", conf, "--mode", "atcp", "--every-probe", str(mixed)]
    status, out, err = run(argv, capsys)
    assert status == 0
    assert f"{len(good)} malformed" in err
    assert len(out.splitlines()) == len(TCP_EVENTS_IN_SYN)


def test_replay_state_dir_records_what_why_and_history_then_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``portsentinel replay --state-dir`` records; why and history read the record."""
    state = tmp_path / "state"
    local = [arg for address in LOCAL for arg in ("--local", address)]
    capture = str(CAPTURES / "syn.pcap")
    assert main(["replay", *local, "--state-dir", str(state), capture]) == 0
    capsys.readouterr()
    assert main(["why", SCANNER, "--state-dir", str(state), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ban"]["offline"] is True
    assert main(["why", "192.0.2.99", "--state-dir", str(state)]) == 1
    assert main(["history", "--since", "soon", "--state-dir", str(state)]) == 2


# --- a scanner's repeats: summarised by default, every one with --every-probe ---------------

SCANNERS = ("198.19.0.1", "198.19.0.2")
TARGET = "198.18.0.1"
SCANNED = [port for port in range(1, 601) if port not in {113, 139}]  # atcp watches them all
STEP = 0.05  # seconds between two probes of one scanner: 30 s for the whole scan


def two_scanners(path: Path) -> Path:
    """Two scanners sending a SYN to each port of SCANNED, interleaved, over 30 s; nothing
    answers. Every probe after a scanner's first finds it already blocked."""
    target = ipaddress.ip_address(TARGET).packed
    with path.open("wb") as fh:
        writer = dpkt.pcap.Writer(fh)
        for k, port in enumerate(SCANNED):
            for i, scanner in enumerate(SCANNERS):
                src = ipaddress.ip_address(scanner).packed
                packet = ipv4(TCP_PROTO, tcp(40000, port), src=src, dst=target)
                writer.writepkt(ethernet(ETH_IPV4, packet), ts=T0 + k * STEP + i * 0.001)
    return path


def replay_scan(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[str, str]:
    capture = two_scanners(tmp_path / "scan.pcap")
    conf = write(tmp_path / "c.conf", "")
    status, out, err = run(
        ["replay", "--config", conf, "--mode", "atcp", *extra, str(capture)], capsys
    )
    assert status == 0, err
    return out, err


def test_every_probe_prints_a_record_for_every_probe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = replay_scan(tmp_path, capsys, "--every-probe")
    events, summaries = split(out)
    assert summaries == []
    for scanner in SCANNERS:
        mine = [e for e in events if e["src"] == scanner]
        assert [e["port"] for e in mine] == SCANNED
        assert [e["action"] for e in mine] == ["block"] + ["ignored"] * (len(SCANNED) - 1)
    assert f"decisions: 2 block, {2 * len(SCANNED) - 2} ignored" in err


def test_by_default_a_scanners_repeats_are_summarised_never_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = replay_scan(tmp_path, capsys)
    events, summaries = split(out)
    held: Counter[str] = Counter()
    for summary in summaries:
        assert summary["held"] == sum(source["count"] for source in summary["sources"])
        for source in summary["sources"]:
            assert source["reason"] == "already blocked"
            held[source["src"]] += source["count"]
    for scanner in SCANNERS:
        mine = [e for e in events if e["src"] == scanner]
        assert mine[0]["action"] == "block"  # its first decisions, the block first
        assert [e["port"] for e in mine[:21]] == SCANNED[:21]  # then 20 repeats at once
        assert len(mine) < 60  # then about one a second, over 30 s
        assert len(mine) + held[scanner] == len(SCANNED)  # every probe printed or counted
    # A summary every 10 s of the capture's clock, the last at its end.
    times = [datetime.fromisoformat(s["time"]).timestamp() - T0 for s in summaries]
    assert times[:2] == [pytest.approx(10.0), pytest.approx(20.0)]
    assert times[-1] == pytest.approx((len(SCANNED) - 1) * STEP + 0.001)
    assert [s["window"] for s in summaries[:2]] == [10.0, 10.0]
    # Every probe is still counted, as with --every-probe.
    assert f"decisions: 2 block, {2 * len(SCANNED) - 2} ignored" in err


def test_log_lines_summarise_repeats_as_the_daemon_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    every, _ = replay_scan(tmp_path, capsys, "--log", "--every-probe")
    out, _ = replay_scan(tmp_path, capsys, "--log")
    summary = re.compile(
        r".* adminalert: (\d+) repetitive records held back in the last [\d.]+s "
        r"\(most from 198\.19\.0\.\d already blocked: \d+(, 198\.19\.0\.\d already blocked: \d+)?\)"
    )
    lines = out.splitlines()
    held = [int(m.group(1)) for line in lines if (m := summary.fullmatch(line))]
    assert held
    already = [line for line in lines if line.endswith("is already blocked Ignoring")]
    assert len(already) + sum(held) == len(
        [line for line in every.splitlines() if line.endswith("is already blocked Ignoring")]
    )
    assert not any("repetitive records" in line for line in every.splitlines())


def test_bound_modes_from_the_defaults_file_are_replayed_as_their_stealth_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Debian's portsentry package ships TCP_MODE="tcp": a bound mode decides nothing from a
    capture, so replay judges the same ports in the packets (stcp) and says so; the summary
    names the modes and where they came from."""
    defaults = write(tmp_path / "default-portsentry", 'TCP_MODE="tcp"\nUDP_MODE="udp"\n')
    config = write(tmp_path / "c.conf", f'DEFAULTS_FILE="{defaults}"\nTCP_PORTS="1,11,111"\n')
    sample = Path(__file__).resolve().parents[3] / "examples" / "sample.pcap"
    status, out, err = run(["replay", "--config", config, str(sample)], capsys)
    assert status == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert {e["mode"] for e in events if e.get("proto") == "tcp"} == {"stcp"}
    blocked = [e["port"] for e in events if e.get("action") == "block"]
    assert blocked
    assert set(blocked) <= {1, 11, 111}
    assert f"replay: tcp (from {defaults}) binds its ports" in err
    assert f"replay: udp (from {defaults}) binds its ports" in err
    assert err.rstrip().endswith(f"; modes: stcp,sudp (from {defaults})")
    status, out, err = run(["replay", "--config", config, "--mode", "atcp", str(sample)], capsys)
    assert "binds its ports" not in err
    assert err.rstrip().endswith("; modes: atcp (from --mode)")


def test_log_lines_in_2_0s_words_when_the_configuration_chooses_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = Path(__file__).resolve().parents[3] / "examples" / "sample.pcap"
    config = write(tmp_path / "c.conf", 'LOG_FORMAT="2.0"\nBLOCK_UDP="0"\n')
    status, out, _err = run(["replay", "--config", config, "--log", str(sample)], capsys)
    assert status == 0
    lines = [line.split(" ", 1)[1] for line in out.splitlines()]
    scans = [line for line in lines if line.startswith("Scan from: [")]
    assert scans
    assert not [line for line in lines if line.startswith("attackalert: TCP")]
    # replay bans nothing: a block decision is triggered, not noblock, and not blocked
    assert any(
        line.endswith("triggered: [true] noblock: [false] blocked: [false]") for line in scans
    )
