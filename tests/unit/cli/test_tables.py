"""The shared table: plain text that keeps every character, a terminal's width and bold
header, JSON Lines with every key."""

from __future__ import annotations

import io

import pytest

from portsentinel.cli.tables import Column, fit, write_rows


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


ROWS: list[dict[str, object]] = [
    {"name": "alpha", "note": "a long free text that will not fit", "n": 1},
    {"name": "b", "note": None, "n": 22},
]


COLUMNS = (Column("NAME", "name"), Column("NOTE", "note", shrink=True), Column("N", "n"))


def printed(out: io.StringIO, rows: list[dict[str, object]], *, as_json: bool = False) -> str:
    write_rows(rows, COLUMNS, out, as_json=as_json, empty="nothing")
    return out.getvalue()


def test_plain_table_keeps_every_character() -> None:
    assert printed(io.StringIO(), ROWS) == (
        "NAME   NOTE                                N\n"
        "alpha  a long free text that will not fit  1\n"
        "b      -                                   22\n"
    )


def test_terminal_table_fits_the_width_and_bolds_the_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "30")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert printed(Terminal(), ROWS) == (
        "\x1b[1mNAME   NOTE                 N\x1b[0m\n"
        "alpha  a long free text t…  1\n"
        "b      -                    22\n"
    )
    monkeypatch.setenv("NO_COLOR", "1")
    assert printed(Terminal(), ROWS).startswith("NAME ")


def test_json_lines_hold_every_key_and_no_rows_print_nothing() -> None:
    assert printed(io.StringIO(), ROWS, as_json=True).splitlines() == [
        '{"name":"alpha","note":"a long free text that will not fit","n":1}',
        '{"name":"b","note":null,"n":22}',
    ]
    assert printed(io.StringIO(), [], as_json=True) == ""
    assert printed(io.StringIO(), []) == "nothing\n"


@pytest.mark.parametrize(
    ("widths", "shrink", "total", "expected"),
    [
        ([5, 40, 5], [False, True, False], 30, [5, 16, 5]),
        ([5, 40, 30], [False, True, True], 50, [5, 20, 21]),  # the widest gives first
        ([5, 10, 5], [False, True, False], 10, [5, 8, 5]),  # never below 8: wraps instead
        ([5, 10], [False, False], 3, [5, 10]),
    ],
)
def test_fit(widths: list[int], shrink: list[bool], total: int, expected: list[int]) -> None:
    assert fit(widths, shrink, total) == expected
