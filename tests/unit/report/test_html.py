"""The report page: self-contained (no reference to load), escaped, complete."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from html.parser import HTMLParser
from types import MappingProxyType

from portsentinel.report.data import build_report, with_fleet
from portsentinel.report.html import CSP, MAX_BAN_ROWS, render_page
from portsentinel.report.scale import Zone
from portsentinel.store.records import BanRecord, BanState, EventRow

T0 = 1_764_000_000.0
DAY = 86400.0
INJECTED = "see https://evil.example/x <script>alert(1)</script><img src=//x>"


class Page(HTMLParser):
    """Every tag, attribute and text node of a page, and the text inside <style>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str]] = []
        self.texts: list[str] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend((name, value or "") for name, value in attrs)
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        (self.styles if self._in_style else self.texts).append(data)


def parse(page: str) -> Page:
    parser = Page()
    parser.feed(page)
    parser.close()
    return parser


def ev(t: float, src: str, port: int, kind: str = "SYN", action: str = "alert") -> EventRow:
    return EventRow(t, src, "198.18.0.1", "tcp", port, kind, action, INJECTED)


def ban(ban_id: int, address: str, created: float, reason: str = INJECTED) -> BanRecord:
    return BanRecord(
        ban_id, address, 32, created, None, BanState.ACTIVE, reason, None,
        MappingProxyType({"ports": [f"tcp/{p}" for p in range(1, 15)]}), 2, None, None, False,
    )  # fmt: skip


def render(events: list[EventRow], bans: list[BanRecord], *, offline: bool = False) -> str:
    report = build_report(events, bans, T0, T0 + DAY, offline=offline)
    return render_page(
        report, store_path="/tmp/<x>/portsentinel.db", generated=T0 + DAY, version="9"
    )


def busy_page() -> str:
    events = [ev(T0 + i * 60, f"198.18.0.{i % 7}", i) for i in range(300)]
    events.append(ev(T0 + 5, "198.18.0.200", 22, kind="<b>NEW</b>", action="block"))
    return render(events, [ban(1, "198.18.0.1", T0 + 10)])


def test_the_page_references_nothing_outside_itself() -> None:
    page = busy_page()
    parsed = parse(page)
    assert not {"script", "link", "img", "iframe", "object", "embed", "base"} & set(parsed.tags)
    for name, value in parsed.attrs:
        assert name not in ("src", "href", "srcset", "action", "xlink:href"), (name, value)
        assert "//" not in value, (name, value)
        assert "url(" not in value, (name, value)
    style = "".join(parsed.styles)
    assert "url(" not in style
    assert "@import" not in style
    # http(s):// occurs only where the injected reason is shown, as text
    assert page.count("https://") == sum(t.count("https://") for t in parsed.texts) > 0
    assert "http://" not in page


def test_a_content_security_policy_forbids_every_fetch() -> None:
    parsed = parse(busy_page())
    policies = [v for n, v in parsed.attrs if n == "content"]
    assert CSP in policies
    assert "default-src 'none'" in CSP
    assert "script-src" not in CSP  # falls back to 'none'


def test_script_injected_through_a_reason_or_kind_stays_text() -> None:
    page = busy_page()
    assert "<script>" not in page
    assert "<img" not in page
    assert "<b>NEW" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    parsed = parse(page)
    assert "script" not in parsed.tags
    assert any(INJECTED in text for text in parsed.texts)  # shown, intact, in the bans table
    assert any("<b>NEW</b>" in text for text in parsed.texts)
    assert "/tmp/<x>/portsentinel.db" in parsed.texts


def test_the_page_shows_the_numbers_the_four_charts_and_both_tables() -> None:
    page = busy_page()
    parsed = parse(page)
    assert page.startswith("<!DOCTYPE html>")
    assert parsed.tags.count("svg") == 4
    assert re.findall(r'data-chart="(\w+)"', page) == ["kinds", "sources", "heat", "bans"]
    cards = re.findall(r'<div class="card"><b>([^<]*)</b><span>([^<]*)</span>', page)
    assert cards == [
        ("301", "probes"),
        ("8", "sources"),
        ("1", "block decisions"),
        ("300", "alerts (logged, not blocked)"),
        ("300", "distinct ports"),
        ("1", "bans started"),
        ("1", "bans in force at the end"),
        ("1 d", "time span"),
    ]
    assert any(text.startswith("live store") for text in parsed.texts)
    tables = page.split("<table>")[1:]
    assert len(tables) == 3
    assert tables[0].count("<tr>") == 1 + 8  # header and every source (fewer than the top 15)
    assert tables[1].count("<tr>") == 1 + 15  # the top 15 of the 300 ports
    assert "Most probed ports" in page
    assert tables[2].count("<tr>") == 1 + 1
    assert "tcp/10 and 4 more" in tables[2]  # 14 ports, 10 shown


def test_an_empty_report_still_renders_and_says_so() -> None:
    page = render([], [], offline=True)
    parsed = parse(page)
    assert parsed.tags.count("svg") == 4
    assert "No probes in this period." in parsed.texts
    assert "No ban in force." in parsed.texts
    assert any(text.startswith("offline analysis") for text in parsed.texts)


def test_the_bans_table_is_capped() -> None:
    bans = [ban(i, f"198.18.{i // 250}.{i % 250}", T0 + i, "scan") for i in range(1, 231)]
    page = render([], bans)
    assert page.split("<table>")[3].count("<tr>") == 1 + MAX_BAN_ROWS
    assert f"{230 - MAX_BAN_ROWS} more not shown." in page


def test_every_time_is_written_in_the_chosen_zone() -> None:
    """report --tz: the header, axes, tooltips and tables in that zone, named; UTC by default."""
    zone = Zone(timezone(timedelta(hours=9, minutes=30), "ACST"), "ACST")
    events = [ev(T0 + i * 60, "198.18.0.2", i) for i in range(10)]
    report = build_report(events, [ban(1, "198.18.0.2", T0 + 10)], T0, T0 + DAY)
    page = render_page(report, store_path="s", generated=T0 + DAY, version="9", zone=zone)
    utc = render_page(report, store_path="s", generated=T0 + DAY, version="9")
    assert "UTC" not in page
    assert "(ACST)" in page  # table headers and axis captions
    start = datetime.fromtimestamp(T0, zone.tz).strftime("%Y-%m-%d %H:%M:%S ACST")
    assert start in page
    assert datetime.fromtimestamp(T0, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") in utc
    assert "ACST" not in utc


def test_fleet_bans_are_marked() -> None:
    """A fleet decision applied here is a ban in force marked ``fleet`` with its origin and
    scenario; a local ban that went to the fleet says so."""
    report = build_report([], [ban(1, "198.18.0.2", T0 + 10, "SYN scan")], T0, T0 + DAY)
    decisions = [(7, "198.18.9.9", "portsentinel", "portsentinel/sweep", T0 + DAY + 600),
                 (8, "198.18.9.8", "cscli", "manual", T0 + DAY - 1)]  # fmt: skip
    marked = with_fleet(report, decisions, pushed=[1])
    assert [(b.target, b.state) for b in marked.in_force] == [
        ("198.18.0.2", "active"), ("198.18.9.9", "fleet")]  # fmt: skip
    assert marked.summary.in_force == 2
    page = render_page(marked, store_path="s", generated=T0 + DAY, version="9")
    table = page.split("<table>")[-1]
    assert "SYN scan (pushed to the fleet)" in table
    assert "fleet: portsentinel portsentinel/sweep" in table
    assert ">fleet<" in table
    assert "198.18.9.8" not in table  # ended before the window's end
