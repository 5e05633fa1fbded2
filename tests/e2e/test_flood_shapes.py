"""End to end: forged floods shaped against the ban budget's own rule, a real scan in each.

The budget ranks strong evidence by distinct ports in tiers that double (5, 10, 20, 40+ by
default) with a bucket each; a source spends its own tier's tokens or a lower one's. Each
flood here gives its forged sources a shape chosen to spend those tokens:

- ``twenty_ports``: 4,096 forged sources with 20 distinct ports each, shuffled, so each
  source comes back about every 80,000 frames (the old fixed "broad" rule was 20 ports);
- ``slash16``: 65,536 forged sources over a /16 with 5 ports each (the lowest tier);
- ``nmap_like``: 2,048 forged sources, each sending 64 ports in a row, as a scan does, again
  and again: the top port tier, the scanner's own. Nothing in the packets tells them from
  real scans: they and the scanner share the top tier's tokens, which go to whoever probes
  first once one comes back, so the scanner, probing more often than any one of them, still
  wins one soon.

In each, ``nmap -sS -p 1-1000`` from 198.18.0.2 (again while not banned: a full capture ring
may take none of one scan's probes) must be banned while the flood goes on, and the flood's
chosen addresses may be banned no faster than the tiers it reaches allow, and once the budget
is pressed, for at most SHORT_BAN (10 minutes) each. The daemon runs as
the packaged service does (atcp, nftables, defaults, no events stream).

Root, iproute2, nmap, nft and a C compiler; every packet stays inside the lab.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import floodlab
import netns
import pytest
from banlab import nft_elements, scan_until_banned, unavailable
from daemon import Daemon

from portsentinel.detect.budget import PORT_TIERS, PRESSURE_LEVEL, SHORT_BAN, BudgetConfig

pytestmark = [pytest.mark.e2e]
_REASON = unavailable(("nmap", "nft")) or floodlab.unavailable()
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

SCANNER4 = netns.Lab.SCANNER4
FLOOD_SECONDS = 20.0
BAN_DEADLINE = 15.0  # from the first scan; the flood outlasts it
AFTER_SCAN = 2.0
SCAN_PORTS = "1-1000"


@dataclass(frozen=True)
class Shape:
    sources: int
    per_source: int
    shuffle: bool
    tier: int  # the highest port tier the forged sources reach with default settings


SHAPES = {
    "twenty_ports": Shape(sources=4096, per_source=20, shuffle=True, tier=2),
    "slash16": Shape(sources=65536, per_source=5, shuffle=True, tier=0),
    "nmap_like": Shape(sources=2048, per_source=64, shuffle=False, tier=PORT_TIERS - 1),
}


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    with netns.Lab.create("pfs") as built:
        yield built


@pytest.mark.parametrize("name", list(SHAPES))
def test_a_real_scan_is_banned_in_a_flood_shaped_against_the_budget(
    lab: netns.Lab, tmp_path: Path, name: str
) -> None:
    shape = SHAPES[name]
    binary = floodlab.build(tmp_path)
    daemon = Daemon.start(lab, tmp_path / "daemon", mode="atcp", events=False, measured=False)
    flood = floodlab.Flood(
        sources=shape.sources,
        per_source=shape.per_source,
        shuffle=shape.shuffle,
        count=50_000_000,
        seconds=FLOOD_SECONDS,
    )
    sender = floodlab.start(lab, binary, flood)
    try:
        daemon.wait_for_line("attackalert:", BAN_DEADLINE)  # the flood reached the daemon
        flood_began = time.monotonic()
        scans, took = scan_until_banned(
            lab, SCANNER4, SCAN_PORTS, each=AFTER_SCAN, deadline=BAN_DEADLINE
        )
        assert sender.poll() is None, "banned while the flood went on"
        elements = nft_elements(lab, 4) or {}
        forged = len(elements) - 1
        long_bans = [a for a, left in elements.items() if left is None or left > SHORT_BAN]
        elapsed = time.monotonic() - flood_began + 2.0  # the flood began before its first line
    finally:
        netns.Lab.stop(sender)
        code, stderr = daemon.stop()
    assert code == 0, stderr[-2000:]
    assert "Traceback" not in stderr
    # What the flood's chosen addresses could get: the tokens of the tiers it reaches (its
    # own and those below), and the weak bucket (a source seen with fewer ports so far).
    budget = BudgetConfig()
    per_tier = budget.burst + budget.rate * elapsed
    weak = budget.burst * budget.weak_share + budget.rate * budget.weak_share * elapsed
    assert forged <= (shape.tier + 1) * per_tier + weak, forged
    # Once the budget is pressed, no ban without a handshake is long: only those admitted
    # before (a tenth of a burst per bucket the flood reaches) may be.
    pressed_after = (shape.tier + 2) * budget.burst * (1 - PRESSURE_LEVEL) + 2
    assert len(long_bans) <= pressed_after, (len(long_bans), forged)
    assert "bans without a completed handshake last at most 10 minutes" in stderr
    print(
        f"{name}: scanner banned {took:.2f} s after its first scan began ({scans} scan(s) of "
        f"{SCAN_PORTS}); {forged} forged addresses banned in {elapsed:.0f} s, "
        f"{len(long_bans)} for longer than {SHORT_BAN:.0f} s"
    )
