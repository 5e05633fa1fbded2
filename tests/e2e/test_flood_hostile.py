"""End to end: a real scan in the middle of a SYN flood from random forged sources.

The C sender (``floodlab.py``, ``synflood.c``) floods the daemon's target namespace as fast
as it goes (at most FLOOD_SECONDS and FLOOD_FRAMES) from 130,816 forged IPv4 sources in random
order, far more than MAX_TRACKED_SOURCES, and more than the daemon can look at: the kernel
drops the rest at its capture ring. Meanwhile ``nmap -sS -p 1-1000`` (nmap's default size)
scans from 198.18.0.2, again while it is not banned: the ring is full, and which frames the
kernel takes into it is a race the flood mostly wins (in one run none of a 200-port scan's
probes reached the daemon), so a scan can pass unseen; a scanner that goes on does not.
The daemon (atcp, nftables bans, default caps and budget; with an events stream, and as the
packaged service runs it, without one: records of ignored probes held back before they are
built) must still ban the real scanner,
keep its memory bounded (a generous behaviour bound, not a speed figure), count the frames
its ring dropped in its statistics line, and stop cleanly on SIGTERM.

Root, iproute2, nmap, nft and a C compiler; every packet stays inside the lab.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import floodlab
import netns
import pytest
from banlab import every_ban, scan_until_banned, unavailable, wait_until
from daemon import Daemon, Event, statistics

pytestmark = [pytest.mark.e2e]
_REASON = unavailable(("nmap", "nft")) or floodlab.unavailable()
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

SCANNER4 = netns.Lab.SCANNER4
FLOOD_SECONDS = 15.0
FLOOD_FRAMES = 2_000_000
RSS_BOUND_MIB = 400
BAN_DEADLINE = 30.0
SCAN_PORTS = "1-1000"
AFTER_SCAN = 3.0  # seconds from a scan's start for its ban to show before the next scan
NMAP_FRAMES = 10_000  # more than nmap sends in the scans the deadline allows


def events_written(daemon: Daemon) -> bool:
    return daemon.events_path.exists() and daemon.events_path.stat().st_size > 0


def events_from(daemon: Daemon, src: str) -> list[Event]:
    """The events about ``src``; the file holds one per forged source too, so lines are
    picked by text before they are parsed."""
    quoted = f'"{src}"'
    with daemon.events_path.open() as lines:
        found = [json.loads(line) for line in lines if quoted in line and line.endswith("\n")]
    return [event for event in found if event["src"] == src]


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    with netns.Lab.create("psh") as built:
        yield built


@pytest.mark.parametrize("events", [True, False], ids=["events", "service"])
def test_a_real_scan_is_banned_in_a_spoofed_flood(
    lab: netns.Lab, tmp_path: Path, events: bool
) -> None:
    binary = floodlab.build(tmp_path)
    daemon = Daemon.start(lab, tmp_path / "daemon", mode="atcp", events=events, measured=False)
    rss = floodlab.RssSampler(daemon.pid)
    flood = floodlab.Flood(count=FLOOD_FRAMES, seconds=FLOOD_SECONDS)
    sender: subprocess.Popen[str] | None = None
    try:
        sender = floodlab.start(lab, binary, flood)
        # The flood is under way once the daemon writes about forged sources.
        if events:
            wait_until(lambda: events_written(daemon), "the flood reaching the daemon")
        else:
            daemon.wait_for_line("attackalert:", BAN_DEADLINE)

        scans = 0
        try:
            scans, _seconds = scan_until_banned(
                lab, SCANNER4, SCAN_PORTS, each=AFTER_SCAN, deadline=BAN_DEADLINE
            )
        except AssertionError:  # say what the daemon saw of the scanner, for the next look
            said = [line for line in daemon.stderr().splitlines() if SCANNER4 in line]
            if events:
                seen = events_from(daemon, SCANNER4)
                said += sorted({f"{e['action']}/{e['reason']}/{e['ports_seen']}" for e in seen})
            raise AssertionError(
                f"the real scanner is not in the ban set after {BAN_DEADLINE}s; the daemon "
                f"wrote {len(said)} lines about it, the last: {said[-3:]}"
            ) from None
        assert sender.poll() is None, "banned while the flood went on"
        sent = floodlab.result(sender, FLOOD_SECONDS + floodlab.SLACK)  # the flood runs its course
        assert daemon.proc.poll() is None, "the daemon stayed up"
        if events:
            about = events_from(daemon, SCANNER4)
            assert any(e["action"] == "block" for e in about), about[-5:]
        assert SCANNER4 in {ban.address for ban in every_ban(daemon)}
    finally:
        if sender is not None:
            netns.Lab.stop(sender)
        code, stderr = daemon.stop()
        samples = rss.stop()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    peak_mib = max(kib for _, kib in samples) / 1024
    assert peak_mib < RSS_BOUND_MIB, f"VmRSS reached {peak_mib:.0f} MiB"
    counters = statistics(stderr)
    assert {"kernel_packets", "kernel_drops", "ring_handled"} <= counters.keys(), stderr[-2000:]
    # The socket counts each frame once, handled or dropped at the ring (or left in it at the
    # stop); the flood and the scan are all it saw: the target's own replies are not captured.
    handled, drops = counters["ring_handled"], counters["kernel_drops"]
    assert handled > 0
    assert handled + drops <= counters["kernel_packets"] <= sent.sent + NMAP_FRAMES
    print(
        f"flood: {sent.sent} frames in {sent.seconds:.1f} s ({sent.pps / 1e3:.0f} kpps); "
        f"daemon: handled {counters['ring_handled']}, kernel drops {counters['kernel_drops']}, "
        f"scanner banned after {scans} scan(s) of {SCAN_PORTS}, "
        f"peak VmRSS {peak_mib:.0f} MiB"
    )


def test_an_alert_only_daemon_accounts_for_every_alert_in_a_spoofed_flood(
    lab: netns.Lab, tmp_path: Path
) -> None:
    """BLOCK_x=0 has no ban budget: every forged source is an alert with a history line. The
    response worker cannot write them as fast as they come; what it cannot take is dropped
    and counted, so memory stays bounded and the daemon stops promptly."""
    binary = floodlab.build(tmp_path)
    directory = tmp_path / "daemon"
    daemon = Daemon.start(
        lab,
        directory,
        mode="atcp",
        events=False,
        settings={"BLOCK_TCP": "0", "BLOCK_UDP": "0"},
        measured=False,
    )
    rss = floodlab.RssSampler(daemon.pid)
    sender = floodlab.start(lab, binary, floodlab.Flood(count=FLOOD_FRAMES, seconds=FLOOD_SECONDS))
    try:
        floodlab.result(sender, FLOOD_SECONDS + floodlab.SLACK)
    finally:
        netns.Lab.stop(sender)
        code, stderr = daemon.stop()  # within the fixture's grace: the backlog is bounded
        samples = rss.stop()
    assert code == 0, stderr[-2000:]
    assert "Traceback" not in stderr
    counters = statistics(stderr)
    alerts = counters["decisions_alert"]
    written = len((directory / "history_file").read_text().splitlines())
    assert alerts > 1000
    assert written + counters["alerts_dropped"] == alerts
    if counters["alerts_dropped"]:
        assert "the response worker fell behind" in stderr
    peak_mib = max(kib for _, kib in samples) / 1024
    assert peak_mib < RSS_BOUND_MIB, f"VmRSS reached {peak_mib:.0f} MiB"
