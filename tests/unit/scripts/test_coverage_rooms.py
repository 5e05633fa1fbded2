"""``scripts/coverage_rooms.py``: which room a file is in, the per-room arithmetic on a
fabricated ``coverage json`` report, the floors, and the exit status CI gates on."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))

import coverage_rooms
from coverage_rooms import Room, below_floor, room_of, rooms, table, total


def _summary(statements: int, lines: int, branches: int, taken: int) -> dict[str, Any]:
    """A file's summary as ``coverage json`` writes it (the keys the script reads, and some)."""
    return {
        "covered_lines": lines,
        "num_statements": statements,
        "percent_covered": 0.0,  # ignored: the script sums counts, not percentages
        "missing_lines": statements - lines,
        "excluded_lines": 0,
        "num_branches": branches,
        "num_partial_branches": 0,
        "covered_branches": taken,
        "missing_branches": branches - taken,
    }


def _report(files: dict[str, tuple[int, int, int, int]]) -> dict[str, Any]:
    return {
        "meta": {"version": "7.18.0", "branch_coverage": True},
        "files": {name: {"summary": _summary(*counts)} for name, counts in files.items()},
    }


REPORT = _report(
    {
        "src/portsentinel/detect/track.py": (100, 98, 40, 39),
        "src/portsentinel/detect/classify.py": (50, 50, 10, 8),
        "src/portsentinel/detect/__init__.py": (0, 0, 0, 0),
        "src/portsentinel/daemon/loop.py": (200, 150, 60, 40),
        "src/portsentinel/decode.py": (80, 80, 30, 30),
        "src/portsentinel/__init__.py": (1, 1, 0, 0),
        "/elsewhere/site-packages/portsentinel/cli/main.py": (10, 9, 2, 1),
        "tests/unit/helper.py": (5, 5, 0, 0),
    }
)


@pytest.mark.parametrize(
    ("filename", "room"),
    [
        ("src/portsentinel/detect/track.py", "detect"),
        ("src/portsentinel/detect/sub/deeper.py", "detect"),
        ("src/portsentinel/decode.py", "decode"),
        ("src/portsentinel/__init__.py", "__init__"),
        ("/usr/lib/python3/site-packages/portsentinel/host/routes.py", "host"),
        ("/home/me/portsentinel/src/portsentinel/store/sqlite.py", "store"),
        ("src\\portsentinel\\block\\nftables.py", "block"),
        ("tests/unit/helper.py", None),
        ("portsentinel.py", None),
    ],
)
def test_room_of(filename: str, room: str | None) -> None:
    assert room_of(filename) == room


def test_rooms_sum_the_counts_of_their_modules() -> None:
    assert rooms(REPORT) == [
        Room("__init__", 1, 1, 0, 0),
        Room("cli", 10, 9, 2, 1),
        Room("daemon", 200, 150, 60, 40),
        Room("decode", 80, 80, 30, 30),
        Room("detect", 150, 148, 50, 47),
    ]


def test_percent_is_lines_and_branches_covered_over_lines_and_branches() -> None:
    by_name = {room.name: room for room in rooms(REPORT)}
    assert by_name["detect"].percent == pytest.approx(100 * (148 + 47) / (150 + 50))  # 97.5
    assert by_name["daemon"].percent == pytest.approx(100 * 190 / 260)
    assert by_name["decode"].percent == 100.0
    assert total(rooms(REPORT)) == Room("total", 441, 388, 142, 118)


def test_an_empty_room_is_complete() -> None:
    assert Room("errors").percent == 100.0


def test_a_report_without_branch_counts_counts_lines() -> None:
    lines_only = {"num_statements": 4, "covered_lines": 3}
    report = {"files": {"src/portsentinel/model.py": {"summary": lines_only}}}
    assert rooms(report) == [Room("model", 4, 3, 0, 0)]


@pytest.mark.parametrize(
    ("name", "floor"),
    [
        ("decode", 95.0),
        ("detect", 95.0),
        ("model", 95.0),
        ("networks", 95.0),
        ("daemon", 80.0),
        ("errors", 80.0),
        ("__init__", 80.0),
    ],
)
def test_the_pure_core_has_the_higher_floor(name: str, floor: float) -> None:
    assert Room(name).floor == floor


def test_below_floor_compares_unrounded() -> None:
    core_just_under = Room("detect", 9999, 9495, 1, 0)  # 94.95 %
    core_at_floor = Room("detect", 100, 95, 0, 0)
    other_just_under = Room("daemon", 1000, 799, 0, 0)
    other_at_floor = Room("daemon", 10, 8, 0, 0)
    measured = [core_just_under, core_at_floor, other_just_under, other_at_floor]
    assert below_floor(measured) == [core_just_under, other_just_under]


def test_the_table_rounds_down_and_names_the_rooms_below() -> None:
    measured = [Room("daemon", 100, 80, 0, 0), Room("detect", 9999, 9495, 1, 0)]
    assert table(measured).splitlines() == [
        "room          lines branches  cover  floor",
        "daemon          100        0  80.0%    80%",
        "detect         9999        1  94.9%    95%  BELOW",
        "total         10099        1  94.8%",
        "detect is below its floor: 94.9% < 95% (0.1 points short)",
    ]


def _run(tmp_path: Path, report: dict[str, Any]) -> int:
    path = tmp_path / "coverage.json"
    path.write_text(json.dumps(report), encoding="utf-8")
    return coverage_rooms.main([str(path)])


def test_main_fails_when_a_room_is_below_its_floor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(tmp_path, REPORT) == 1
    out = capsys.readouterr().out
    assert "daemon is below its floor: 73.0% < 80% (7.0 points short)" in out
    assert "detect" in out
    assert "detect is below" not in out


def test_main_passes_when_every_room_reaches_its_floor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _report({"src/portsentinel/detect/track.py": (100, 95, 0, 0)})
    assert _run(tmp_path, report) == 0
    assert "below" not in capsys.readouterr().out


def test_main_fails_when_nothing_of_the_package_was_measured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(tmp_path, _report({"tests/unit/helper.py": (5, 5, 0, 0)})) == 1
    assert "no module of portsentinel was measured" in capsys.readouterr().err
