"""``config check`` and ``config defaults`` through the command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from portsentinel import paths
from unit.cli.stores import CAPTURES, DEBIAN, write
from unit.cli.stores import run_main as run

ERROR_LINE = re.compile(r"^[^:]+:\d+: [A-Z_]+: .+ \(expected .+\)$")


def test_config_check_debian_file_loads_with_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(["config", "check", "--config", str(DEBIAN / "portsentry.conf")], capsys)
    assert status == 0
    assert "warning:" in err
    assert 'SCAN_TRIGGER="0"' in out


def test_config_check_errors_name_file_line_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write(
        tmp_path / "bad.conf", 'TCP_PORTS="1,2,x"\n# fine\nBLOCK_TCP="7"\nSCAN_TRIGER="1"\n'
    )
    status, _out, err = run(["config", "check", "--config", conf], capsys)
    assert status == 2
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert [line.split(":", 3)[1:3] for line in errors] == [
        ["1", " TCP_PORTS"],
        ["3", " BLOCK_TCP"],
    ]
    assert all(ERROR_LINE.match(line) for line in errors), errors
    assert "did you mean SCAN_TRIGGER?" in err


def test_defaults_output_is_a_valid_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _err = run(["config", "defaults"], capsys)
    assert status == 0
    # The dump names the shipped host paths: check reads them under tmp_path, not the host.
    conf = write(tmp_path / "defaults.conf", out.replace('="/etc/', f'="{tmp_path}/etc/'))
    status, _out, err = run(["config", "check", "--config", conf], capsys)
    assert status == 0, err


def test_bad_ignore_file_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ignore = write(tmp_path / "ignore", "127.0.0.1/32\nadmin.example.org\n")
    conf = write(tmp_path / "c.conf", f'IGNORE_FILE="{ignore}"\n')
    status, _out, err = run(["replay", "--config", conf, str(CAPTURES / "syn.pcap")], capsys)
    assert status == 2
    assert f"{ignore}:2: IGNORE_FILE:" in err


def test_config_check_reads_the_installed_file_without_config(
    capsys: pytest.CaptureFixture[str],
) -> None:
    installed = Path(paths.CONFIG_FILE)
    installed.parent.mkdir(parents=True, exist_ok=True)
    installed.write_text('SCAN_TRIGGER="3"\n')
    status, out, _err = run(["config", "check"], capsys)
    assert status == 0
    assert 'SCAN_TRIGGER="3"' in out


def test_config_check_json_says_the_same_in_one_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path / "good.conf", 'SCAN_TRIGGER="2"\nIGNORE_FILE="/nowhere/ignore"\n')
    status, out, err = run(["config", "check", "--json", "--config", good], capsys)
    assert (status, err) == (0, "")
    document = json.loads(out)
    assert document["ok"] is True
    assert document["config"] == good
    assert document["settings"]["SCAN_TRIGGER"] == {"value": "2", "origin": f"{good}:1"}
    assert document["settings"]["BAN_DURATION"]["origin"] == "default"
    assert any("IGNORE_FILE" in w for w in document["warnings"])
    bad = write(tmp_path / "bad.conf", 'SCAN_TRIGGER="many"\n')
    status, out, err = run(["config", "check", "--json", "--config", bad], capsys)
    assert (status, err) == (2, "")
    document = json.loads(out)
    assert document["ok"] is False
    assert "settings" not in document
    assert document["errors"][0].startswith(f"{bad}:1: SCAN_TRIGGER: ")
