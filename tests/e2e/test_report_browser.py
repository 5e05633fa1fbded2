"""The HTML report in a real browser: Debian's headless ``chromium`` renders it.

Two stores are made in temporary directories: an offline one from the real nmap captures
(replayed through the detector, recorded with a small loop like ``replay --state-dir``), and a
busy live one of synthetic rows over 24 hours. For each, the ``report`` verb writes the page,
chromium dumps the DOM it built and takes a screenshot. The checks: the four charts are in the
rendered DOM with their marks (one heat-map cell per port band and time bucket, one ban bar
per ban), the screenshot shows them (decoded here with zlib: enough pixels in the charts'
colours), and the page asks for nothing from the network (no reference in it; name resolution
is disabled in the browser too). Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import struct
import subprocess
import time
import zlib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from portsentinel.cli.replay_capture import InUse, run_replay
from portsentinel.cli.report import add_parsers
from portsentinel.config.setup import detector_config, load_setup
from portsentinel.detect.detector import Detector
from portsentinel.model import Action, Decision
from portsentinel.report.data import PORT_BANDS, port_band
from portsentinel.report.svg import HEAT_STEPS, KIND_COLOURS, STATE_COLOURS
from portsentinel.store.records import BanRecord, EventRow, LiftedBy
from portsentinel.store.sqlite import Store

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)"
    ),
]

CAPTURES = Path(__file__).resolve().parents[1] / "fixtures" / "captures"
SCANS = ("syn", "connect", "fin", "null", "xmas", "udp", "syn6", "frag")
LOCAL = frozenset({bytes([198, 18, 0, 1]), bytes.fromhex("fd00005e" + "0" * 23 + "1")})
REPLAY_BAN = 2.0  # seconds: short, so the 7 s of captures hold expired and live bans
BROWSER_TIMEOUT = 120.0
SCREEN = (1280, 2400)
SHOTS = Path(os.environ.get("PORTSENTINEL_REPORT_SHOTS", "/tmp/portsentinel-report-shots"))


# --- Building the stores -------------------------------------------------------------------


def record_captures(state_dir: Path, tmp: Path) -> int:
    """Replay the real captures into an offline store, oldest first; returns events written."""
    config = tmp / "portsentinel.conf"
    config.write_text('SCAN_TRIGGER="0"\n')
    setup = load_setup(str(config), "atcp,audp")
    written = 0
    with Store.open(str(state_dir), offline=True) as store:
        for name in SCANS:
            path = str(CAPTURES / f"{name}.pcap")
            detector = Detector(detector_config(setup), ignore=setup.ignore, local=LOCAL)
            decisions: list[Decision] = []
            in_use = InUse(tcp=frozenset({22, 80}))
            run_replay(path, detector, decisions.append, local=LOCAL, in_use=in_use)
            for decision in decisions:
                _record_ban(store, decision)
            written += store.add_events(EventRow.from_decision(d, d.time) for d in decisions)
    return written


def _record_ban(store: Store, decision: Decision) -> None:
    """What the daemon's ban manager stores, in brief: expire what is due, then ban."""
    if decision.action is not Action.BLOCK or not decision.first:
        return
    for due in store.due_for_expiry(decision.time):
        store.lift(due.id, due.expires or decision.time, LiftedBy.EXPIRY)
    if store.ban_for(decision.src) is not None:
        return
    ban = store.begin_ban(
        decision.src,
        None,
        created=decision.time,
        expires=decision.time + REPLAY_BAN,
        reason=f"{decision.kind.value} scan: {decision.reason.value}",
        rule=decision.rule,
        evidence={"ports": [f"{decision.proto.key}/{decision.port}"], "hits": decision.hits},
        offence=1,
    )
    store.activate(ban.id)


def busy_store(state_dir: Path, now: float) -> list[BanRecord]:
    """24 hours of a busy host: many sources, every kind, bans in every state."""
    rng = random.Random(5)
    kinds = ("SYN", "SYN", "SYN", "CONNECT", "UDP", "UDP", "FIN", "NULL", "XMAS", "FRAGMENT")
    sources = [f"203.0.113.{i}" for i in range(1, 30)] + [
        f"2001:db8:{i:x}:beef:cafe:1234:5678:{i:x}" for i in range(1, 8)
    ]
    events = []
    for n, src in enumerate(sources):
        start = now - rng.uniform(600, 86000)
        for _ in range(rng.randint(5, 40) * (3 if n < 4 else 1)):
            kind = rng.choice(kinds)
            port = rng.choice((22, 23, 80, 443, 3389, 8080)) if n % 3 else rng.randint(1, 65535)
            t = min(start + rng.expovariate(1 / 300), now - 1)
            action = "alert" if n % 5 else "block"
            proto = "udp" if kind == "UDP" else "tcp"
            events.append(EventRow(t, src, "192.0.2.1", proto, port, kind, action, "test"))
    with Store.open(str(state_dir)) as store:
        store.add_events(events)
        for i, src in enumerate(sources[:14]):
            created = now - 80000 + i * 5500
            ban = store.begin_ban(
                src, None, created=created, expires=created + 7200, reason="SYN scan: trigger",
                rule="atcp", evidence={"ports": ["tcp/22", "tcp/80"]}, offence=1 + i % 3,
            )  # fmt: skip
            if i % 4 == 1:
                store.lift(ban.id, created + 1800, LiftedBy.UNBLOCK)
            elif i % 4 == 2:
                store.fail(ban.id, created + 1)
            else:
                store.activate(ban.id)
                if created + 7200 < now:
                    store.lift(ban.id, created + 7200, LiftedBy.EXPIRY)
        prefix = store.begin_ban(
            "2001:db8:1::", 64, created=now - 3000, expires=None,
            reason="<script>alert(1)</script> prefix", rule=None, evidence={}, offence=2,
        )  # fmt: skip
        store.activate(prefix.id)
        store.begin_ban(  # backends still running: pending
            sources[20], None, created=now - 5400, expires=now + 1800, reason="UDP scan",
            rule="audp", evidence={"ports": ["udp/53"]}, offence=1,
        )  # fmt: skip
        return store.bans_between(now - 86400, now)


# --- The verb, the browser, the screenshot -------------------------------------------------


def write_report(state_dir: Path, page: Path, since: str) -> str:
    parser = argparse.ArgumentParser(prog="portsentinel")
    add_parsers(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(
        ["report", "--since", since, "--html", str(page), "--state-dir", str(state_dir)]
    )
    out, err = io.StringIO(), io.StringIO()
    assert args.handler(args, out, err) == 0, err.getvalue()
    return out.getvalue()


def chromium(page: Path, profile: Path, *extra: str) -> str:
    """Run headless chromium on the page with networking off; its standard output."""
    assert CHROMIUM is not None
    argv = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
        '--host-resolver-rules=MAP * ~NOTFOUND', f"--user-data-dir={profile}",
        *extra, page.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=BROWSER_TIMEOUT, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def screenshot(page: Path, tmp: Path, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / f"{name}.png"
    shot.unlink(missing_ok=True)
    width, height = SCREEN
    chromium(page, tmp / "profile-shot", f"--screenshot={shot}", f"--window-size={width},{height}")
    assert shot.is_file(), "chromium wrote no screenshot"
    return shot


def png_pixels(path: Path) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Decode an 8-bit RGB/RGBA, non-interlaced PNG with the standard library: every pixel."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    width, height, depth, colour, _comp, _filter, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8, depth
    assert colour in (2, 6), colour  # RGB or RGBA
    assert interlace == 0
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    previous = bytearray(stride)
    pixels: list[tuple[int, int, int]] = []
    for y in range(height):
        start = y * (stride + 1)
        row = bytearray(raw[start + 1 : start + 1 + stride])
        row = _unfilter(raw[start], row, previous, channels)
        pixels.extend(zip(row[0::channels], row[1::channels], row[2::channels], strict=True))
        previous = row
    return width, height, pixels


def _unfilter(kind: int, row: bytearray, up: bytearray, bpp: int) -> bytearray:
    if kind == 0:
        return row
    if kind == 2:
        return bytearray((a + b) & 0xFF for a, b in zip(row, up, strict=True))
    for i in range(len(row)):
        left = row[i - bpp] if i >= bpp else 0
        if kind == 1:
            row[i] = (row[i] + left) & 0xFF
        elif kind == 3:
            row[i] = (row[i] + ((left + up[i]) >> 1)) & 0xFF
        else:
            corner = up[i - bpp] if i >= bpp else 0
            row[i] = (row[i] + _paeth(left, up[i], corner)) & 0xFF
    return row


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def rgb(colour: str) -> tuple[int, int, int]:
    value = int(colour.lstrip("#"), 16)
    return value >> 16, value >> 8 & 0xFF, value & 0xFF


# --- The rendered DOM ----------------------------------------------------------------------


class ChartMarks(HTMLParser):
    """Per chart (``data-chart``): the count of each mark class; plus every URL-ish attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, Counter[str]] = {}
        self.current: str | None = None
        self.references: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "svg" and values.get("data-chart"):
            self.current = values["data-chart"]
            self.charts[self.current or ""] = Counter()
        elif self.current is not None and values.get("class"):
            self.charts[self.current][f"{tag}.{values['class']}"] += 1
        if tag == "script":
            self.scripts += 1
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "action", "srcset", "poster", "data"):
                self.references.append(f"{name}={value}")

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.current = None


def marks(dom: str) -> ChartMarks:
    parser = ChartMarks()
    parser.feed(dom)
    return parser


def heat_cells(page_text: str) -> int:
    """The heat map's cells as the page's own markup has them (rows x time buckets)."""
    return marks(page_text).charts["heat"]["rect.cell"]


def no_network_reference(text: str) -> None:
    lowered = text.lower()
    for needle in ("http://", "https://", "//", "url(", "@import", "<script", "<link", "<img"):
        assert needle not in lowered, needle


# --- Tests ---------------------------------------------------------------------------------


def test_report_of_real_captures_renders_in_chromium(tmp_path: Path) -> None:
    state = tmp_path / "state"
    written = record_captures(state, tmp_path)
    assert written > 700  # 8 scans of about 120 probes each (the UDP one 63)
    page = tmp_path / "captures.html"
    said = write_report(state, page, "24h")
    assert said.startswith(f"report written to {page}: {written:,} probes from 2 sources")
    text = page.read_text()
    no_network_reference(text)

    dom = chromium(page, tmp_path / "profile-dom", "--dump-dom")
    found = marks(dom)
    assert set(found.charts) == {"kinds", "sources", "heat", "bans"}
    assert found.scripts == 0
    assert found.references == []
    with Store.open(str(state), offline=True) as store:
        bans = store.bans_between(-1e300, 1e300)
        highest = max(e.port for e in store.events_between(-1e300, 1e300))
    rows = port_band(highest) + 1  # up to the highest band probed
    assert rows < len(PORT_BANDS)
    cells = heat_cells(text)
    assert cells % rows == 0
    assert 5 <= cells // rows <= 60  # 7 s of captures in sub-second buckets
    assert found.charts["heat"]["rect.cell"] == cells
    assert found.charts["sources"]["rect.bar"] == 2  # 198.18.0.2 and fd00:5e::2
    assert len(bans) >= 4  # short bans: each burst after the previous ban expired bans again
    assert found.charts["bans"]["rect.ban"] == len(bans)
    kinds_drawn = found.charts["kinds"]["rect.bar"]
    assert kinds_drawn >= len(SCANS)  # at least one bar segment per scan burst

    shot = screenshot(page, tmp_path, "captures")
    width, height, pixels = png_pixels(shot)
    assert (width, height) == SCREEN
    _assert_painted(pixels, ["SYN", "FIN", "XMAS", "UDP"], states=("active", "expired"))


def test_busy_live_report_renders_in_chromium(tmp_path: Path) -> None:
    state = tmp_path / "state"
    bans = busy_store(state, time.time())  # a live store's window ends now
    page = tmp_path / "busy.html"
    write_report(state, page, "24h")
    text = page.read_text()
    no_network_reference(text)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<script>" not in text

    dom = chromium(page, tmp_path / "profile-dom", "--dump-dom")
    found = marks(dom)
    assert set(found.charts) == {"kinds", "sources", "heat", "bans"}
    assert found.scripts == 0
    assert found.references == []
    assert found.charts["heat"]["rect.cell"] == heat_cells(text)
    assert found.charts["sources"]["rect.bar"] == 15
    assert found.charts["bans"]["rect.ban"] == len(bans)
    assert "<script>alert(1)" not in dom

    shot = screenshot(page, tmp_path, "busy")
    _width, _height, pixels = png_pixels(shot)
    states = ("active", "pending", "lifted", "expired")
    _assert_painted(pixels, ["SYN", "UDP", "CONNECT"], heat=True, states=states)


def _assert_painted(
    pixels: list[tuple[int, int, int]],
    kinds: list[str],
    *,
    heat: bool = False,
    states: tuple[str, ...] = (),
) -> None:
    """Not blank: most pixels are page or panel, but the charts' colours are really there."""
    counts = Counter(pixels)
    background, most = counts.most_common(1)[0]
    assert most < 0.9 * len(pixels), "the screenshot is (almost) one colour"
    differing = len(pixels) - most
    assert differing > 0.2 * len(pixels), (background, differing)
    for kind in kinds:
        assert _near(counts, rgb(KIND_COLOURS[kind])) > 100, kind
    for state in states:
        assert _near(counts, rgb(STATE_COLOURS[state])) > 100, state
    if heat:
        assert sum(_near(counts, rgb(step)) for step in HEAT_STEPS) > 2000


def _near(counts: Counter[tuple[int, int, int]], colour: tuple[int, int, int]) -> int:
    """Pixels within a small distance of ``colour`` (colour conversion may move a step)."""
    return sum(
        n
        for pixel, n in counts.items()
        if all(abs(a - b) <= 3 for a, b in zip(pixel, colour, strict=True))
    )
