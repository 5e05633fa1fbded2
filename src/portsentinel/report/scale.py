"""Scales for the report's charts: time buckets, nice axis steps, time and count labels.

Pure arithmetic, shared by the aggregation (``data.py``, which buckets time) and the drawing
(``svg.py``, which labels axes), so a bar and its tick always agree on where a bucket starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Final

MINUTE: Final = 60.0
HOUR: Final = 3600.0
DAY: Final = 86400.0

# Bucket widths a reader recognises, smallest first; a capture of a fast scan may last less
# than a second, a week of a busy host's history fits in three-hour buckets.
NICE_STEPS: Final[tuple[float, ...]] = (
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0,
    MINUTE, 2 * MINUTE, 5 * MINUTE, 10 * MINUTE, 15 * MINUTE, 30 * MINUTE,
    HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR,
    DAY, 2 * DAY, 7 * DAY, 14 * DAY, 28 * DAY, 56 * DAY, 112 * DAY, 224 * DAY, 448 * DAY,
)  # fmt: skip


def bucket_step(start: float, end: float, max_buckets: int) -> float:
    """The smallest nice width whose snapped buckets cover ``[start, end)`` in at most
    ``max_buckets``."""
    for step in NICE_STEPS:
        if _count(start, end, step) <= max_buckets:
            return step
    return NICE_STEPS[-1]


def _count(start: float, end: float, step: float) -> int:
    first = math.floor(start / step)
    return max(math.ceil(end / step), first + 1) - first


def bucket_edges(start: float, end: float, max_buckets: int) -> tuple[float, ...]:
    """Edges of equal buckets covering ``[start, end)``, snapped to multiples of the step.

    Snapped edges make labels round (12:00, 12:30 ...) and keep a bucket's meaning stable
    between two reports of the same period.
    """
    step = bucket_step(start, end, max_buckets)
    first = math.floor(start / step)
    return tuple(i * step for i in range(first, first + _count(start, end, step) + 1))


def bucket_index(edges: Sequence[float], t: float) -> int:
    """The bucket of ``t`` (edges equally spaced); clamped to the first and last bucket."""
    step = edges[1] - edges[0]
    index = int((t - edges[0]) // step)
    return min(max(index, 0), len(edges) - 2)


def nice_axis(peak: float, ticks: int = 4) -> tuple[float, float]:
    """(top, step) of a count axis from 0 showing ``peak``: about ``ticks`` steps of 1, 2,
    2.5 or 5 times a power of ten (whole numbers: counts), the top a multiple of the step."""
    raw = max(peak, 1.0) / ticks
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(f * power for f in (1.0, 2.0, 2.5, 5.0, 10.0) if f * power >= raw)
    step = max(step, 1.0)
    return max(math.ceil(peak / step), 1) * step, step


def count_ticks(top: float, step: float) -> list[float]:
    """0, step, 2 step ... top."""
    return [i * step for i in range(round(top / step) + 1)]


# Multiples of a bucket that make a round period between two labelled ticks.
_TICK_MULTIPLES: Final = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 24, 30, 40, 50, 60, 100)


def time_ticks(edges: Sequence[float], max_ticks: int = 10) -> list[float]:
    """Bucket edges to label: every k-th, where k buckets make a round period (1 s, 5 min,
    2 h ...) and at most ``max_ticks`` fit; snapped to multiples of that period."""
    step = snap_step(edges[1] - edges[0])
    buckets = len(edges) - 1
    fitting = [k for k in _TICK_MULTIPLES if buckets / k + 1 <= max_ticks] or [buckets]
    round_ones = [k for k in fitting if _is_nice(step * k)]
    every = (round_ones or fitting)[0]
    return [e for e in edges if round(e / step) % every == 0] or [edges[0]]


def snap_step(step: float) -> float:
    """The nice width that ``step`` is, give or take float error in edges near 1.7e9."""
    return next((nice for nice in NICE_STEPS if abs(step - nice) < 1e-4 * nice), step)


def _is_nice(period: float) -> bool:
    return any(abs(period - nice) < 1e-6 * nice for nice in NICE_STEPS)


@dataclass(frozen=True, slots=True)
class Zone:
    """The time zone the page writes its times in (``report --tz``), and its name."""

    tz: tzinfo
    name: str


UTC_ZONE: Final = Zone(UTC, "UTC")


def time_format(step: float, span: float) -> str:
    """A strftime format that tells buckets ``step`` apart over ``span`` seconds (UTC)."""
    if step >= DAY:
        return "%Y-%m-%d" if span > 365 * DAY else "%m-%d"
    if span > DAY:
        return "%m-%d %H:%M"
    if step >= MINUTE:
        return "%H:%M"
    return "%H:%M:%S"


def time_label(t: float, step: float, span: float, zone: Zone = UTC_ZONE) -> str:
    """``t`` as the axis shows it; tenths or hundredths of seconds when buckets are that small."""
    moment = datetime.fromtimestamp(t, zone.tz)
    text = moment.strftime(time_format(step, span))
    if step < 1:
        digits = 1 if step >= 0.1 else 2
        fraction = f"{moment.microsecond / 1e6:.{digits}f}"[1:]
        text += fraction
    return text


def iso_minute(t: float, zone: Zone = UTC_ZONE) -> str:
    """``2026-11-25 21:26:10 UTC``: a moment in summaries and tooltips."""
    return datetime.fromtimestamp(t, zone.tz).strftime("%Y-%m-%d %H:%M:%S ") + zone.name


def table_time(t: float, zone: Zone = UTC_ZONE) -> str:
    """``2026-11-25 21:26:10``: a moment in a table column headed with the zone."""
    return datetime.fromtimestamp(t, zone.tz).strftime("%Y-%m-%d %H:%M:%S")


def duration_words(seconds: float) -> str:
    """``3 d 4 h``, ``25 min``, ``4.2 s``: a span for humans, two units at most."""
    if seconds < MINUTE:
        return f"{seconds:.3g} s"
    whole = round(seconds)
    days, rest = divmod(whole, int(DAY))
    hours, rest = divmod(rest, int(HOUR))
    minutes, secs = divmod(rest, int(MINUTE))
    parts = [(days, "d"), (hours, "h"), (minutes, "min"), (secs, "s")]
    first = next(i for i, (n, _unit) in enumerate(parts) if n)
    shown = [f"{n} {unit}" for n, unit in parts[first : first + 2] if n]
    return " ".join(shown)


def count_text(n: float) -> str:
    """``12,345``; ``2.5`` stays a fraction (an axis tick)."""
    return f"{int(n):,}" if float(n).is_integer() else f"{n:,.1f}"
