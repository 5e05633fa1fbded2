"""One way for the listing verbs (``list``, ``history`` ...) to print rows.

Three views of the same rows, chosen by the caller's ``--json`` and by where the output goes:

- ``--json``: JSON Lines, one object per row with every key of the row (the event key style;
  None is ``null``). No rows: no lines, so ``wc -l`` counts items.
- a pipe or a file: a plain table, cells padded to the column's width and never cut, so that
  scripts and ``grep`` see every character.
- a terminal: the same table with the header in bold (unless ``NO_COLOR`` or a dumb
  terminal) and the widest shrinkable column cut with ``…`` so that a line fits the width.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TextIO

GAP: Final = "  "
ELLIPSIS: Final = "…"
MIN_SHRUNK: Final = 8  # a shrunk cell keeps at least this many characters
DEFAULT_WIDTH: Final = 100  # when a terminal does not say how wide it is
BOLD, RESET = "\x1b[1m", "\x1b[0m"

Row = Mapping[str, object]


def plain(value: object) -> str:
    """A cell as text: None is ``-`` (no value), everything else ``str``."""
    return "-" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: its header, the row key it shows and how the value reads."""

    header: str
    key: str
    render: Callable[[object], str] = plain
    shrink: bool = False  # may be cut on a terminal (free text: reasons, port lists)
    # For a value whose reading depends on another key (``until`` None is "permanent" for a
    # ban, nothing for an alert): the cell from the whole row, instead of ``render``.
    cell: Callable[[Row], str] | None = None

    def text(self, row: Row) -> str:
        return self.cell(row) if self.cell is not None else self.render(row.get(self.key))


def write_rows(
    rows: Sequence[Row],
    columns: Sequence[Column],
    out: TextIO,
    *,
    as_json: bool,
    empty: str,
) -> None:
    """Print ``rows`` as JSON Lines or as a table; ``empty`` is the table's line for no rows."""
    if as_json:
        for row in rows:
            out.write(json_line(row) + "\n")
        return
    if not rows:
        out.write(empty + "\n")
        return
    terminal = _isatty(out)
    cells = [[column.text(row) for column in columns] for row in rows]
    headers = [column.header for column in columns]
    widths = _widths(headers, cells)
    if terminal:
        widths = fit(widths, [c.shrink for c in columns], _terminal_width(out))
    bold = terminal and _colour_allowed()
    out.write(_line(headers, widths, bold=bold))
    for line in cells:
        out.write(_line(line, widths, bold=False))


def json_line(row: Row) -> str:
    """One compact JSON object, keys in the row's order (the event lines' style)."""
    return json.dumps(dict(row), separators=(",", ":"))


def fit(widths: list[int], shrinkable: Sequence[bool], total: int) -> list[int]:
    """Column widths whose line fits ``total`` characters, taking from shrinkable columns.

    The widest shrinkable column gives first, never below MIN_SHRUNK; when that is not enough
    the line stays too long (a terminal wraps it) rather than losing whole columns.
    """
    widths = list(widths)
    excess = sum(widths) + len(GAP) * (len(widths) - 1) - total
    while excess > 0:
        candidates = [i for i, ok in enumerate(shrinkable) if ok and widths[i] > MIN_SHRUNK]
        if not candidates:
            break
        widest = max(candidates, key=widths.__getitem__)
        runner_up = max((widths[i] for i in candidates if i != widest), default=MIN_SHRUNK)
        target = max(MIN_SHRUNK, runner_up, widths[widest] - excess)
        if target == widths[widest]:  # level with the runner-up: take turns, one at a time
            target -= 1
        excess -= widths[widest] - target
        widths[widest] = target
    return widths


def _widths(headers: Sequence[str], cells: Sequence[Sequence[str]]) -> list[int]:
    return [max(len(h), *(len(line[i]) for line in cells)) for i, h in enumerate(headers)]


def _line(cells: Sequence[str], widths: Sequence[int], *, bold: bool) -> str:
    text = GAP.join(_cut(cell, w).ljust(w) for cell, w in zip(cells, widths, strict=True))
    text = text.rstrip()
    return f"{BOLD}{text}{RESET}\n" if bold else text + "\n"


def _cut(cell: str, width: int) -> str:
    return cell if len(cell) <= width else cell[: width - 1] + ELLIPSIS


def _isatty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream: not a terminal
        return False


def _terminal_width(out: TextIO) -> int:
    try:
        return os.get_terminal_size(out.fileno()).columns
    except (AttributeError, OSError, ValueError):
        pass
    try:
        return int(os.environ.get("COLUMNS", "")) or DEFAULT_WIDTH
    except ValueError:
        return DEFAULT_WIDTH


def _colour_allowed() -> bool:
    """https://no-color.org, and no escapes for a terminal that cannot show them."""
    return "NO_COLOR" not in os.environ and os.environ.get("TERM", "") != "dumb"
