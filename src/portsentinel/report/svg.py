"""The report's four charts as inline SVG, written by hand: no script, nothing from the network.

Each chart is one ``<svg>`` string with a title, axes, labels, a legend and a ``<title>``
tooltip on every mark, so the page reads in any browser, printed, or with scripts off. Every
text that came from records (addresses, kinds, reasons) is escaped here; a chart with no data
still draws its frame and says so. The two time charts share one left margin and one time
axis, so a column of the heat map sits under the bar of the same bucket.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Final

from portsentinel.report.data import BanBar, HeatMap, KindSeries, SourceStats
from portsentinel.report.scale import (
    UTC_ZONE,
    Zone,
    count_text,
    count_ticks,
    iso_minute,
    nice_axis,
    snap_step,
    time_label,
    time_ticks,
)

WIDTH: Final = 1000
TIME_LEFT: Final = 110  # left margin of the time charts: y labels, port bands
NAME_LEFT: Final = 250  # left margin of the charts labelled by address
RIGHT: Final = 24
FONT: Final = "system-ui, -apple-system, 'Segoe UI', 'DejaVu Sans', 'Liberation Sans', sans-serif"
MONO: Final = "'DejaVu Sans Mono', 'Liberation Mono', monospace"
INK, MUTED, GRID, EMPTY = "#1f2328", "#59636e", "#d8dee4", "#f3f4f6"
DASH: Final = "\u2013"  # en dash, between the ends of a range
MAX_LABEL: Final = 34  # characters of an address shown before an ellipsis (IPv6 is long)

# Okabe-Ito colours: told apart with the common colour-vision deficiencies.
KIND_COLOURS: Final = {
    "SYN": "#0072B2",
    "FIN": "#E69F00",
    "NULL": "#009E73",
    "XMAS": "#CC79A7",
    "UNKNOWN": "#6E6E6E",
    "UDP": "#56B4E9",
    "CONNECT": "#D55E00",
    "FRAGMENT": "#B59B00",
}
ACTION_COLOURS: Final = {
    "block": "#C62828",
    "command": "#6A1B9A",
    "alert": "#F29F05",
    "ignored": "#9E9E9E",
}
STATE_COLOURS: Final = {
    "active": "#C62828",
    "pending": "#F29F05",
    "lifted": "#1565C0",
    "expired": "#9E9E9E",
    "failed": "#6A1B9A",
    "fleet": "#00796B",  # a fleet decision applied here (report/data.with_fleet)
}
HEAT_STEPS: Final = ("#deebf7", "#9ecae1", "#6baed6", "#3182bd", "#08519c")
OTHER_COLOUR: Final = "#444444"


# --- Element helpers -----------------------------------------------------------------------


def esc(value: object) -> str:
    """Text or attribute value, safe in HTML and XML alike (quotes included)."""
    return escape(str(value), quote=True)


def _n(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _tip(text: str) -> str:
    return f"<title>{esc(text)}</title>"


def rect(
    x: float, y: float, w: float, h: float, fill: str, *, tip: str | None = None, cls: str = ""
) -> str:
    klass = f' class="{cls}"' if cls else ""
    head = f'<rect{klass} x="{_n(x)}" y="{_n(y)}" width="{_n(w)}" height="{_n(h)}" fill="{fill}"'
    return f"{head}>{_tip(tip)}</rect>" if tip else f"{head}/>"


def text(
    x: float,
    y: float,
    content: str,
    *,
    anchor: str = "start",
    size: int = 12,
    fill: str = INK,
    weight: str = "normal",
    family: str | None = None,
    turn: bool = False,
) -> str:
    """A label; ``turn`` sets it vertical (reading upwards) around its anchor point."""
    font = f' font-family="{family}"' if family else ""
    bold = f' font-weight="{weight}"' if weight != "normal" else ""
    rotate = f' transform="rotate(-90 {_n(x)} {_n(y)})"' if turn else ""
    return (
        f'<text x="{_n(x)}" y="{_n(y)}" text-anchor="{anchor}" font-size="{size}" '
        f'fill="{fill}"{font}{bold}{rotate}>{esc(content)}</text>'
    )


def line(x1: float, y1: float, x2: float, y2: float, stroke: str = GRID) -> str:
    return (
        f'<line x1="{_n(x1)}" y1="{_n(y1)}" x2="{_n(x2)}" y2="{_n(y2)}" stroke="{stroke}" '
        'stroke-width="1"/>'
    )


def svg(name: str, height: float, title: str, body: Sequence[str]) -> str:
    """The chart's root: a titled, scalable ``<svg>``; its first child names it for tooltips
    and screen readers."""
    return (
        f'<svg class="chart" data-chart="{name}" viewBox="0 0 {WIDTH} {_n(height)}" '
        f'width="{WIDTH}" height="{_n(height)}" role="img" aria-label="{esc(title)}" '
        f'font-family="{FONT}">{_tip(title)}'
        f"{text(0, 18, title, size=15, weight='600')}{''.join(body)}</svg>"
    )


def legend(items: Sequence[tuple[str, str]], x: float, y: float) -> list[str]:
    """Swatches in one row from ``x``; about 7 px per character keeps the labels apart."""
    parts = []
    for label, colour in items:
        parts.append(rect(x, y - 10, 12, 12, colour))
        parts.append(text(x + 17, y, label, fill=MUTED))
        x += 17 + 7.2 * len(label) + 18
    return parts


def plural(n: int, word: str) -> str:
    """``1 probe``, ``2 probes``, ``1,024 probes``."""
    return f"{count_text(n)} {word}{'' if n == 1 else 's'}"


def _short(address: str) -> str:
    return address if len(address) <= MAX_LABEL else address[: MAX_LABEL - 1] + "…"


def _no_data(x: float, y: float, message: str) -> str:
    return text(x, y, message, anchor="middle", size=14, fill=MUTED)


# --- Axes ----------------------------------------------------------------------------------


class TimeAxis:
    """Maps epoch seconds onto ``[left, right]`` for the window the edges cover."""

    def __init__(
        self, edges: Sequence[float], left: float, right: float, zone: Zone = UTC_ZONE
    ) -> None:
        self.edges = edges
        self.zone = zone
        self.left, self.right = left, right
        self.start, self.end = edges[0], edges[-1]
        self.step = snap_step(edges[1] - edges[0])

    def x(self, t: float) -> float:
        t = min(max(t, self.start), self.end)
        return self.left + (t - self.start) / (self.end - self.start) * (self.right - self.left)

    def label(self, t: float) -> str:
        return time_label(t, self.step, self.end - self.start, self.zone)

    def span_text(self, index: int) -> str:
        """'12:00-12:30 UTC' (an en dash) for bucket ``index``."""
        a, b = self.edges[index], self.edges[index + 1]
        return f"{self.label(a)}{DASH}{self.label(b)} {self.zone.name}"

    def draw(self, top: float, bottom: float) -> list[str]:
        """Vertical grid lines at the ticks, labels under ``bottom``, and the axis title."""
        parts = [line(self.left, bottom, self.right, bottom, MUTED)]
        for t in time_ticks(self.edges):
            x = self.x(t)
            label = self.label(t)
            half = 3.6 * len(label)  # about 7 px per character at 12 px
            anchor = "end" if x + half > WIDTH else "middle"
            parts.append(line(x, top, x, bottom))
            parts.append(line(x, bottom, x, bottom + 4, MUTED))
            parts.append(text(x, bottom + 18, label, anchor=anchor, fill=MUTED))
        caption = f"time ({self.zone.name}), from {iso_minute(self.start, self.zone)}"
        parts.append(text((self.left + self.right) / 2, bottom + 38, caption, anchor="middle"))
        return parts


def _count_axis(
    axis: tuple[float, float], left: float, right: float, y0: float, y1: float
) -> list[str]:
    """Horizontal grid lines and labels for counts from ``y0`` (zero) up to ``y1`` (top)."""
    top_value, step = axis
    parts = []
    for tick in count_ticks(top_value, step):
        y = y0 - (y0 - y1) * tick / top_value
        parts.append(line(left, y, right, y, GRID if tick else MUTED))
        parts.append(text(left - 8, y + 4, count_text(tick), anchor="end", fill=MUTED))
    return parts


# --- 1. Probes over time, stacked by kind --------------------------------------------------


def kinds_chart(
    series: KindSeries, title: str = "Probes over time, by scan kind", zone: Zone = UTC_ZONE
) -> str:
    height, top, bottom = 330.0, 62.0, 270.0
    axis = TimeAxis(series.edges, TIME_LEFT, WIDTH - RIGHT, zone)
    totals = series.totals()
    scale = nice_axis(max(totals, default=0))
    peak = scale[0]
    colours = [(k, KIND_COLOURS.get(k, OTHER_COLOUR)) for k in series.kinds]
    body = legend(colours, TIME_LEFT, 42)
    body += _count_axis(scale, TIME_LEFT, WIDTH - RIGHT, bottom, top)
    body.append(text(24, (top + bottom) / 2, "probes", anchor="middle", fill=MUTED, turn=True))
    body += axis.draw(top, bottom)
    slot = (axis.right - axis.left) / (len(series.edges) - 1)
    width = max(slot * 0.8, 1.0)
    for index, total in enumerate(totals):
        if not total:
            continue
        x = axis.left + index * slot + (slot - width) / 2
        y = bottom
        for (kind, colour), counts in zip(colours, series.counts, strict=True):
            n = counts[index]
            if n:
                h = (bottom - top) * n / peak
                y -= h
                tip = f"{axis.span_text(index)}: {count_text(n)} {kind} of {count_text(total)}"
                body.append(rect(x, y, width, h, colour, tip=tip, cls="bar"))
    if not any(totals):
        body.append(_no_data((axis.left + axis.right) / 2, (top + bottom) / 2, "No probes"))
    return svg("kinds", height, title, body)


# --- 2. Top sources ------------------------------------------------------------------------


def sources_chart(sources: Sequence[SourceStats], title: str = "Top sources") -> str:
    row, top = 26.0, 62.0
    rows = max(len(sources), 1)
    bottom = top + rows * row
    height = bottom + 48
    right = WIDTH - 210  # room for "12,345 probes, 1,024 ports" after the longest bar
    peak, step = nice_axis(max((s.probes for s in sources), default=0))
    body = legend([(a, c) for a, c in ACTION_COLOURS.items()], NAME_LEFT, 42)
    for tick in count_ticks(peak, step):
        x = NAME_LEFT + (right - NAME_LEFT) * tick / peak
        body.append(line(x, top - 4, x, bottom, GRID if tick else MUTED))
        body.append(text(x, bottom + 18, count_text(tick), anchor="middle", fill=MUTED))
    body.append(text((NAME_LEFT + right) / 2, bottom + 38, "probes", anchor="middle"))
    for i, s in enumerate(sources):
        y = top + i * row
        w = max((right - NAME_LEFT) * s.probes / peak, 2.0)
        ban = f", ban {s.ban_state}" if s.ban_state else ""
        tip = (
            f"{s.address}: {count_text(s.probes)} probes, {count_text(s.ports)} ports, "
            f"{'/'.join(s.kinds)}; {s.action}{ban}"
        )
        colour = ACTION_COLOURS.get(s.action, OTHER_COLOUR)
        body.append(text(NAME_LEFT - 10, y + 17, _short(s.address), anchor="end", family=MONO))
        body.append(rect(NAME_LEFT, y + 4, w, row - 8, colour, tip=tip, cls="bar"))
        note = f"{count_text(s.probes)} probes, {count_text(s.ports)} ports"
        body.append(text(NAME_LEFT + w + 8, y + 17, note, fill=MUTED))
    if not sources:
        body.append(_no_data((NAME_LEFT + right) / 2, top + row * 0.65, "No sources"))
    return svg("sources", height, title, body)


# --- 3. Heat map: port bands x time --------------------------------------------------------


def heat_level(count: int, peak: int) -> int:
    """0 for an empty cell, else 1..len(HEAT_STEPS) on a log scale up to ``peak``: one busy
    cell must not wash every other cell out to the palest step."""
    if count <= 0 or peak <= 0:
        return 0
    if peak == 1:
        return len(HEAT_STEPS)
    fraction = math.log(min(count, peak)) / math.log(peak)
    return 1 + min(int(fraction * len(HEAT_STEPS)), len(HEAT_STEPS) - 1)


def heat_ranges(peak: int) -> list[tuple[int, int, int]]:
    """(level, lowest count, highest count) of each step that some count up to ``peak`` gets."""
    lows: list[tuple[int, int]] = []
    if peak <= 0:
        return []
    for level in range(1, len(HEAT_STEPS) + 1):
        n = max(math.ceil(peak ** ((level - 1) / len(HEAT_STEPS))), 1)
        while n > 1 and heat_level(n - 1, peak) >= level:  # float rounding: step back
            n -= 1
        while n <= peak and heat_level(n, peak) < level:
            n += 1
        if n <= peak and heat_level(n, peak) == level:
            lows.append((level, n))
    bounds = [low for _level, low in lows[1:]] + [peak + 1]
    return [(level, low, high - 1) for (level, low), high in zip(lows, bounds, strict=True)]


def _heat_legend(peak: int, x: float, y: float) -> list[str]:
    items = [("0", EMPTY)]
    for level, low, high in heat_ranges(peak):
        label = count_text(low) if low == high else f"{count_text(low)}{DASH}{count_text(high)}"
        items.append((label, HEAT_STEPS[level - 1]))
    return [text(x, y, "probes per cell:", fill=MUTED), *legend(items, x + 110, y)]


def heat_chart(heat: HeatMap, title: str = "Probed ports over time", zone: Zone = UTC_ZONE) -> str:
    cell_h, top = 20.0, 62.0
    bottom = top + cell_h * len(heat.bands)
    height = bottom + 50
    axis = TimeAxis(heat.edges, TIME_LEFT, WIDTH - RIGHT, zone)
    peak = heat.peak
    body = _heat_legend(peak, TIME_LEFT, 42)
    slot = (axis.right - axis.left) / (len(heat.edges) - 1)
    for band_index, (low, high) in enumerate(heat.bands):
        y = bottom - (band_index + 1) * cell_h  # lowest ports at the bottom
        body.append(text(TIME_LEFT - 8, y + 14, f"{low}{DASH}{high}", anchor="end", family=MONO))
        for column, n in enumerate(heat.probes[band_index]):
            level = heat_level(n, peak)
            fill = HEAT_STEPS[level - 1] if level else EMPTY
            sources = heat.sources[band_index][column]
            tip = (
                f"ports {low}{DASH}{high}, {axis.span_text(column)}: {plural(n, 'probe')}"
                f" from {plural(sources, 'source')}"
            )
            x = axis.left + column * slot
            w = max(slot - 1, 0.5)
            body.append(rect(x + 0.5, y + 0.5, w, cell_h - 1, fill, tip=tip, cls="cell"))
    body.append(text(24, (top + bottom) / 2, "ports", anchor="middle", fill=MUTED, turn=True))
    body += axis.draw(bottom, bottom)
    if not peak:
        body.append(_no_data((axis.left + axis.right) / 2, (top + bottom) / 2 + 5, "No probes"))
    return svg("heat", height, title, body)


# --- 4. Ban timeline -----------------------------------------------------------------------


def ban_timeline(
    bars: Sequence[BanBar],
    edges: Sequence[float],
    hidden: int = 0,
    title: str = "Bans",
    zone: Zone = UTC_ZONE,
) -> str:
    row, top = 22.0, 62.0
    rows = max(len(bars), 1)
    bottom = top + rows * row
    height = bottom + 50 + (18 if hidden else 0)
    axis = TimeAxis(edges, NAME_LEFT, WIDTH - RIGHT, zone)
    body = legend(list(STATE_COLOURS.items()), NAME_LEFT, 42)
    body += axis.draw(top - 4, bottom)
    for i, bar in enumerate(bars):
        y = top + i * row
        body.append(text(NAME_LEFT - 10, y + 15, _short(bar.target), anchor="end", family=MONO))
        body.append(_ban_mark(bar, axis, y + 4, row - 8))
    if not bars:
        body.append(_no_data((axis.left + axis.right) / 2, top + row * 0.7, "No bans"))
    if hidden:
        more = f"{plural(hidden, 'older ban')} not shown"
        body.append(text(NAME_LEFT, height - 8, more, fill=MUTED))
    return svg("bans", height, title, body)


def _length(seconds: float) -> str:
    """A ban's real length, as the hover title says it (a bar may be a sliver of the axis):
    ``45 s``, ``1 h 30 min``, ``7 d`` (to its expiry when it is still in force)."""
    whole = max(round(seconds), 0)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n} {unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "min")) if n]
    if secs and not days and not hours:
        parts.append(f"{secs} s")
    return " ".join(parts[:2]) or "0 s"


def _ban_mark(bar: BanBar, axis: TimeAxis, y: float, h: float) -> str:
    """A bar from creation to the end of its life; an open end (still in force) is an arrow."""
    x0 = axis.x(bar.created)
    x1 = axis.x(bar.ended if bar.ended is not None else axis.end)
    colour = STATE_COLOURS.get(bar.state, OTHER_COLOUR)
    zone = axis.zone
    until = "permanent" if bar.expires is None else iso_minute(bar.expires, zone)
    ended = "" if bar.ended is None else f", ended {iso_minute(bar.ended, zone)}"
    ports = f"; ports {', '.join(bar.ports[:12])}{' …' if len(bar.ports) > 12 else ''}"
    last = bar.ended if bar.ended is not None else bar.expires
    length = "" if last is None else f" ({_length(last - bar.created)})"
    tip = (
        f"{bar.target}: {bar.state} (offence {bar.offence}), {bar.reason}; "
        f"from {iso_minute(bar.created, zone)} until {until}{ended}{length}"
        f"{ports if bar.ports else ''}"
    )
    width = max(x1 - x0, 3.0)
    mark = rect(x0, y, width, h, colour, tip=tip, cls="ban")
    if bar.ended is not None:
        return mark
    tip_x = x0 + width
    arrow = (
        f'<polygon points="{_n(tip_x)},{_n(y - 2)} {_n(tip_x + 8)},{_n(y + h / 2)} '
        f'{_n(tip_x)},{_n(y + h + 2)}" fill="{colour}">{_tip(tip)}</polygon>'
    )
    return mark + arrow
