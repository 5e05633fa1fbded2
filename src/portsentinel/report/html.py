"""The report page: one self-contained HTML file, readable offline, that loads nothing.

Summary numbers, the four charts (inline SVG from ``svg.py``), the top sources and the bans in
force. Styles are inline, there is no script, and a Content-Security-Policy forbids every
fetch, so a page opened years later, or mailed around, never reaches out. Every text that
came from the network or the config (addresses, reasons, kinds) is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from portsentinel.report import svg
from portsentinel.report.data import BanBar, PortStats, Report, SourceStats
from portsentinel.report.scale import (
    UTC_ZONE,
    Zone,
    count_text,
    duration_words,
    iso_minute,
    table_time,
)
from portsentinel.report.svg import ACTION_COLOURS, STATE_COLOURS, esc

MAX_BAN_ROWS: Final = 200  # rows of the in-force table; the rest are counted
MAX_PORTS_SHOWN: Final = 10

# default-src 'none' blocks scripts, images, fonts, frames and fetches; only the inline
# styles below are allowed.
CSP: Final = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

STYLE: Final = """
:root { color-scheme: light; }
body { margin: 0; background: #f6f8fa; color: #1f2328;
  font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', 'DejaVu Sans', sans-serif; }
main { max-width: 1060px; margin: 0 auto; padding: 24px 20px 40px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 0 0 10px; }
.sub { color: #59636e; margin: 0 0 18px; }
.cards { display: grid; grid-template-columns: repeat(6, 1fr); gap: 10px; margin-bottom: 18px; }
.card { background: #fff; border: 1px solid #d8dee4; border-radius: 8px; padding: 10px 12px; }
.card b { display: block; font-size: 22px; font-weight: 600; }
.card span { color: #59636e; font-size: 12px; }
figure, section.table { background: #fff; border: 1px solid #d8dee4; border-radius: 8px;
  margin: 0 0 18px; padding: 14px 16px; }
figure svg { display: block; width: 100%; height: auto; }
figcaption { color: #59636e; font-size: 13px; margin-top: 6px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #eaeef2;
  vertical-align: top; }
th { color: #59636e; font-weight: 600; background: #f6f8fa; }
td.time { white-space: nowrap; font-variant-numeric: tabular-nums; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.addr { font-family: 'DejaVu Sans Mono', 'Liberation Mono', monospace; white-space: nowrap; }
.pill { display: inline-block; padding: 0 7px; border-radius: 9px; color: #fff; font-size: 12px; }
.note { color: #59636e; font-size: 13px; margin: 8px 0 0; }
footer { color: #59636e; font-size: 12px; text-align: center; }
"""


def render_page(
    report: Report, *, store_path: str, generated: float, version: str, zone: Zone = UTC_ZONE
) -> str:
    """The whole page as text; ``generated`` is when it was made (epoch seconds); every time
    is written in ``zone`` (``report --tz``)."""
    span = f"{iso_minute(report.start, zone)} to {iso_minute(report.end, zone)}"
    kind = "offline analysis (replay)" if report.summary.offline else "live store"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">',
        '<meta name="referrer" content="no-referrer">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>PortSentinel report, {esc(span)}</title>",
        f"<style>{STYLE}</style></head><body><main>",
        "<header><h1>PortSentinel report</h1>",
        f'<p class="sub">{esc(kind)} <code>{esc(store_path)}</code> &middot; {esc(span)}</p>',
        "</header>",
        _cards(report),
        _figure(
            svg.kinds_chart(report.kinds, zone=zone),
            "Probes that reached a decision, per time bucket, stacked by how they looked.",
        ),
        _figure(
            svg.sources_chart(report.sources),
            "The busiest sources; the colour is the strongest response any of their probes got.",
        ),
        _figure(
            svg.heat_chart(report.heat, zone=zone),
            "Probes per port band (bands double in width) and time bucket; hover a cell.",
        ),
        _figure(
            svg.ban_timeline(
                report.timeline, report.kinds.edges, report.timeline_hidden, zone=zone
            ),
            "Each ban from its start to its end; an arrow means still in force at the end of "
            "the period. The colour is its state then.",
        ),
        _sources_table(report.sources, zone),
        _ports_table(report.ports),
        _bans_table(report.in_force, zone),
        f"<footer>Made by PortSentinel {esc(version)} on {esc(iso_minute(generated, zone))}. "
        "Self-contained: this page loads nothing.</footer>",
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"


def _cards(report: Report) -> str:
    s = report.summary
    cards = [
        (count_text(s.probes), "probes"),
        (count_text(s.sources), "sources"),
        (count_text(s.blocks), "block decisions"),
        (count_text(s.alerts), "alerts (logged, not blocked)"),
        (count_text(s.ports), "distinct ports"),
        (count_text(s.new_bans), _bans_label(s.bans - s.new_bans)),
        (count_text(s.in_force), "bans in force at the end"),
        (duration_words(report.end - report.start), "time span"),
    ]
    inner = "".join(
        f'<div class="card"><b>{esc(v)}</b><span>{esc(k)}</span></div>' for v, k in cards
    )
    return f'<section class="cards">{inner}</section>'


def _bans_label(older: int) -> str:
    return "bans started" + (f" (+{count_text(older)} begun before)" if older else "")


def _figure(chart: str, caption: str) -> str:
    return f"<figure>{chart}<figcaption>{esc(caption)}</figcaption></figure>"


def _pill(label: str, colour: str) -> str:
    return f'<span class="pill" style="background:{colour}">{esc(label)}</span>'


def _row(cells: Sequence[tuple[str, str]]) -> str:
    """One table row from (class, already escaped HTML) pairs."""
    tds = "".join(f'<td class="{cls}">{content}</td>' if cls else f"<td>{content}</td>"
                  for cls, content in cells)  # fmt: skip
    return f"<tr>{tds}</tr>"


def _sources_table(sources: Sequence[SourceStats], zone: Zone) -> str:
    head = (
        '<tr><th class="num">#</th><th>Source</th><th class="num">Probes</th>'
        f'<th class="num">Ports</th><th>Kinds</th><th>First seen ({esc(zone.name)})</th>'
        f"<th>Last seen ({esc(zone.name)})</th><th>Response</th><th>Ban</th></tr>"
    )
    rows = []
    for rank, s in enumerate(sources, start=1):
        ban = _pill(s.ban_state, STATE_COLOURS.get(s.ban_state, "#444")) if s.ban_state else ""
        cells = [
            ("num", str(rank)),
            ("addr", esc(s.address)),
            ("num", count_text(s.probes)),
            ("num", count_text(s.ports)),
            ("", esc(", ".join(s.kinds))),
            ("time", table_time(s.first, zone)),
            ("time", table_time(s.last, zone)),
            ("", _pill(s.action, ACTION_COLOURS.get(s.action, "#444"))),
            ("", ban),
        ]
        rows.append(_row(cells))
    body = "".join(rows) or '<tr><td colspan="9">No probes in this period.</td></tr>'
    return _table_section("Top sources", head, body)


def _ports_table(ports: Sequence[PortStats]) -> str:
    head = (
        '<tr><th class="num">#</th><th>Port</th><th class="num">Probes</th>'
        '<th class="num">Sources</th><th class="num">Alerts and blocks</th></tr>'
    )
    rows = [
        _row([("num", str(rank)), ("addr", esc(f"{p.proto}/{p.port}")),
              ("num", count_text(p.probes)), ("num", count_text(p.sources)),
              ("num", count_text(p.responses))])
        for rank, p in enumerate(ports, start=1)
    ]  # fmt: skip
    body = "".join(rows) or '<tr><td colspan="5">No probes in this period.</td></tr>'
    return _table_section("Most probed ports", head, body)


def _bans_table(bans: Sequence[BanBar], zone: Zone) -> str:
    name = esc(zone.name)
    head = (
        f"<tr><th>Address</th><th>Since ({name})</th><th>Until ({name})</th><th>State</th>"
        '<th class="num">Offence</th><th>Reason</th><th>Ports seen</th></tr>'
    )
    rows = []
    for ban in bans[:MAX_BAN_ROWS]:
        until = "permanent" if ban.expires is None else table_time(ban.expires, zone)
        ports = ", ".join(ban.ports[:MAX_PORTS_SHOWN])
        if len(ban.ports) > MAX_PORTS_SHOWN:
            ports += f" and {len(ban.ports) - MAX_PORTS_SHOWN} more"
        cells = [
            ("addr", esc(ban.target)),
            ("time", "(fleet)" if ban.state == "fleet" else table_time(ban.created, zone)),
            ("time", until),
            ("", _pill(ban.state, STATE_COLOURS.get(ban.state, "#444"))),
            ("num", str(ban.offence)),
            ("", esc(ban.reason)),
            ("", esc(ports)),
        ]
        rows.append(_row(cells))
    body = "".join(rows) or '<tr><td colspan="7">No ban in force.</td></tr>'
    note = ""
    if len(bans) > MAX_BAN_ROWS:
        note = f'<p class="note">{count_text(len(bans) - MAX_BAN_ROWS)} more not shown.</p>'
    return _table_section("Bans in force at the end of the period", head, body, note)


def _table_section(title: str, head: str, body: str, note: str = "") -> str:
    return (
        f'<section class="table"><h2>{esc(title)}</h2>'
        f"<table><thead>{head}</thead><tbody>{body}</tbody></table>{note}</section>"
    )
