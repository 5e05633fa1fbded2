"""``portsentinel replay``: the verb end to end on the fixture captures (no root needed)."""

from __future__ import annotations

import json
from pathlib import Path

import dpkt
import pytest

from portsentinel.cli.main import main
from unit.cli.stores import CAPTURES, LOCAL, SCANNER, write
from unit.cli.stores import run_main as run

TCP_EVENTS_IN_SYN = (set(range(1, 121)) | {443}) - {22, 80, 113}


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
    status, out, _err = run(
        ["replay", "--config", conf, "--mode", "atcp", str(CAPTURES / "syn.pcap")], capsys
    )
    assert status == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert events
    assert {(e["action"], e["reason"]) for e in events} == {("ignored", "ignore list")}


def test_replay_own_address_is_never_acted_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write(tmp_path / "c.conf", "")
    argv = ["replay", "--config", conf, "--mode", "atcp", "--local", "198.18.0.1"]
    argv += ["--local", "198.18.0.2", str(CAPTURES / "syn.pcap")]
    status, out, _err = run(argv, capsys)
    assert status == 0
    reasons = {json.loads(line)["reason"] for line in out.splitlines()}
    assert reasons == {"own address"}


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
    status, out, err = run(["replay", "--config", conf, "--mode", "atcp", str(mixed)], capsys)
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
