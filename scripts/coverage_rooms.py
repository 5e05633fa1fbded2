#!/usr/bin/env python3
"""Print branch coverage per room of the package and fail when a room is below its floor.

    python3 -m coverage combine && python3 -m coverage json -o coverage.json
    python3 scripts/coverage_rooms.py coverage.json   # exit 1 when a room is below its floor

A room is a subpackage of ``portsentinel`` (``detect``, ``daemon`` ...) or a module at the
package root (``decode``, ``model`` ...), the units docs/architecture.md layers. The pure core
(decode, detect and the vocabulary they share, model and networks) is held to 95 %: it does
no I/O, so no branch of it is hard to reach, and every room above it trusts its decisions.
Every other room is held to 80 %. A total over the whole package would let a well-tested room
hide an untested one, which is why the floors are per room.

The figure is coverage.py's own with branch measurement on, as ``coverage report`` prints it:
(lines run + branches taken) / (lines + branches). It is compared unrounded, and printed
rounded down, so that a room shown at its floor is never one that fails.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

PACKAGE = "portsentinel"
CORE = frozenset({"decode", "detect", "model", "networks"})
CORE_FLOOR = 95.0
ROOM_FLOOR = 80.0


@dataclass(frozen=True)
class Room:
    """The summed counts of one room's modules."""

    name: str
    statements: int = 0
    covered_lines: int = 0
    branches: int = 0
    covered_branches: int = 0

    @classmethod
    def of(cls, name: str, summary: Mapping[str, Any]) -> Room:
        """One module's counts from its ``coverage json`` summary, under its room's name."""
        return cls(
            name,
            int(summary["num_statements"]),
            int(summary["covered_lines"]),
            int(summary.get("num_branches", 0)),
            int(summary.get("covered_branches", 0)),
        )

    def __add__(self, other: Room) -> Room:
        """Both counts summed, under this room's name."""
        return Room(
            self.name,
            self.statements + other.statements,
            self.covered_lines + other.covered_lines,
            self.branches + other.branches,
            self.covered_branches + other.covered_branches,
        )

    @property
    def percent(self) -> float:
        """Lines and branches covered, as coverage.py counts them; an empty room is complete."""
        total = self.statements + self.branches
        if total == 0:
            return 100.0
        return 100.0 * (self.covered_lines + self.covered_branches) / total

    @property
    def floor(self) -> float:
        return CORE_FLOOR if self.name in CORE else ROOM_FLOOR


def room_of(filename: str) -> str | None:
    """The room of a measured module of the package, or None for a file in no ``portsentinel``
    directory.

    The file may be named relative to the checkout (``src/portsentinel/detect/track.py``) or
    absolutely; the last ``portsentinel`` directory on the way is the package (the checkout
    may be called portsentinel too). Only the package is measured (``source_pkgs``).
    """
    parts = PurePosixPath(filename.replace("\\", "/")).parts
    folders = parts[:-1]
    if PACKAGE not in folders:
        return None
    inside = parts[len(folders) - folders[::-1].index(PACKAGE) :]
    if len(inside) > 1:
        return inside[0]
    return PurePosixPath(inside[0]).stem


def rooms(report: Mapping[str, Any]) -> list[Room]:
    """Per-room counts of a ``coverage json`` report, sorted by room name."""
    found: dict[str, Room] = {}
    for filename, data in report["files"].items():
        name = room_of(filename)
        if name is None:
            continue
        found[name] = found.get(name, Room(name)) + Room.of(name, data["summary"])
    return [found[name] for name in sorted(found)]


def below_floor(measured: Iterable[Room]) -> list[Room]:
    """The rooms whose coverage is under their floor."""
    return [room for room in measured if room.percent < room.floor]


def _shown(percent: float) -> str:
    return f"{math.floor(percent * 10) / 10:.1f}"


def total(measured: Iterable[Room]) -> Room:
    """The whole package as one room (printed, never held to a floor)."""
    return sum(measured, Room("total"))


def table(measured: list[Room]) -> str:
    """The per-room table, a total line, and one line per room below its floor."""
    lines = [f"{'room':<12} {'lines':>6} {'branches':>8} {'cover':>6} {'floor':>6}"]
    for room in measured:
        mark = "  BELOW" if room.percent < room.floor else ""
        lines.append(
            f"{room.name:<12} {room.statements:>6} {room.branches:>8} "
            f"{_shown(room.percent):>5}% {room.floor:>5.0f}%{mark}"
        )
    whole = total(measured)
    lines.append(
        f"{whole.name:<12} {whole.statements:>6} {whole.branches:>8} {_shown(whole.percent):>5}%"
    )
    for room in below_floor(measured):
        short = math.ceil((room.floor - room.percent) * 10) / 10
        lines.append(
            f"{room.name} is below its floor: {_shown(room.percent)}% < {room.floor:.0f}% "
            f"({short:.1f} points short)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", help="the output of `coverage json`")
    args = parser.parse_args(argv)
    with open(args.report, encoding="utf-8") as file:
        measured = rooms(json.load(file))
    if not measured:
        print(f"{args.report}: no module of {PACKAGE} was measured", file=sys.stderr)
        return 1
    print(table(measured))
    return 1 if below_floor(measured) else 0


if __name__ == "__main__":
    sys.exit(main())
