"""fail2ban's filters against the history lines PortSentinel writes, checked by Debian's own
``fail2ban-regex``: PortSentry 2.0's stock filter and fail2ban's stock ``portsentry`` filter
match every line of their format; ours (``packaging/fail2ban``) match exactly the sources
PortSentinel acted on."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from portsentinel.alert import portsentry2_log as ps2
from portsentinel.model import Action, Decision, Proto, Reason, ScanKind
from portsentinel.store.portsentry_files import history_line

pytestmark = pytest.mark.skipif(
    shutil.which("fail2ban-regex") is None, reason="needs fail2ban-regex (apt install fail2ban)"
)

ROOT = Path(__file__).resolve().parents[3]
FILTERS = ROOT / "packaging" / "fail2ban" / "filter.d"
# PortSentry 2.0's own filter (fail2ban/portsentry.conf in its repository), and fail2ban's
# stock one for 1.2 (config/filter.d/portsentry.conf), as they ship.
STOCK_2_0 = "[Definition]\nfailregex = ^[^ ]* Scan from: \\[<HOST>\\]\n"
STOCK_1_2 = "/etc/fail2ban/filter.d/portsentry.conf"
WALL = 1765119723.25  # 2025-12-07


def decision(action: Action, reason: Reason, src: str, *, proto: Proto = Proto.TCP) -> Decision:
    kind = ScanKind.SYN if proto is Proto.TCP else ScanKind.UDP
    return Decision(
        time=0.0, src=src, dst="198.18.0.1", proto=proto, port=7, kind=kind, action=action,
        reason=reason, flags=2 if proto is Proto.TCP else 0,
    )  # fmt: skip


# (decision, acted on): every kind of line the daemon writes in 2.0's words.
CASES = [
    (decision(Action.BLOCK, Reason.TRIGGERED, "192.0.2.1"), True),
    (decision(Action.COMMAND, Reason.TRIGGERED, "192.0.2.2", proto=Proto.UDP), True),
    (decision(Action.ALERT, Reason.TRIGGERED, "2001:db8::3"), True),  # BLOCK 0: reported
    (decision(Action.IGNORED, Reason.ALREADY_BLOCKED, "192.0.2.4"), True),
    (decision(Action.IGNORED, Reason.IGNORE_LIST, "192.0.2.5"), False),
    (decision(Action.IGNORED, Reason.OWN_ADDRESS, "198.18.0.1"), False),
    (decision(Action.IGNORED, Reason.BELOW_TRIGGER, "192.0.2.6"), False),
    (decision(Action.IGNORED, Reason.NEVER_BLOCK, "192.0.2.7"), False),
    (decision(Action.IGNORED, Reason.BAN_BUDGET, "2001:db8::8"), False),
    (decision(Action.ALERT, Reason.WEAK_EVIDENCE, "192.0.2.9"), False),
]


def fail2ban_regex(log: Path, filter_: str) -> tuple[set[str], int]:
    """The hosts fail2ban-regex found and the number of lines it missed."""
    done = subprocess.run(
        ["fail2ban-regex", "--print-all-matched", "-v", str(log), filter_],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    lines = re.search(
        r"^Lines: (\d+) lines, (\d+) ignored, (\d+) matched, (\d+) missed", done.stdout, re.M
    )
    assert lines is not None, done.stdout
    hosts = set(re.findall(r"^\|\s+([0-9a-f.:]+)  \S", done.stdout, re.M))
    return hosts, int(lines[4])


def test_2_0s_stock_filter_matches_every_line_ours_only_what_was_acted_on(tmp_path: Path) -> None:
    log = tmp_path / "portsentry.history"
    log.write_text("".join(ps2.history_line(d, WALL + i) + "\n" for i, (d, _) in enumerate(CASES)))
    stock = tmp_path / "stock-2.0.conf"
    stock.write_text(STOCK_2_0)
    hosts, missed = fail2ban_regex(log, str(stock))
    assert missed == 0
    assert hosts == {d.src for d, _ in CASES}  # the ignored ones too: 2.0's caveat
    hosts, missed = fail2ban_regex(log, str(FILTERS / "portsentinel-2.0.conf"))
    assert hosts == {d.src for d, acted in CASES if acted}
    assert missed == sum(1 for _, acted in CASES if not acted)


def test_1_2s_stock_filter_and_ours_match_every_1_2_history_line(tmp_path: Path) -> None:
    log = tmp_path / "portsentry.history"
    sources = ["192.0.2.1", "2001:db8::3", "198.18.0.77"]
    names = ["192.0.2.1", "scanner.example", "x"]
    lines = [
        history_line(WALL + i, names[i], src, 1 + i, Proto.TCP if i % 2 else Proto.UDP) + "\n"
        for i, src in enumerate(sources)
    ]
    log.write_text("".join(lines))
    for filter_ in (STOCK_1_2, str(FILTERS / "portsentinel-1.2.conf")):
        hosts, missed = fail2ban_regex(log, filter_)
        assert (hosts, missed) == (set(sources), 0), filter_


def test_our_2_0_filter_refuses_lines_of_other_shapes(tmp_path: Path) -> None:
    good = ps2.history_line(CASES[0][0], WALL)
    log = tmp_path / "h"
    log.write_text(
        good.replace("blocked: [true]", "blocked: [true] extra") + "\n"
        + good.replace("ignored: [false]", "ignored: [maybe]") + "\n"
    )  # fmt: skip
    assert fail2ban_regex(log, str(FILTERS / "portsentinel-2.0.conf")) == (set(), 2)
