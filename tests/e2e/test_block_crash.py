"""End to end: ``kill -9`` in the middle of a burst of bans leaves nothing a restart cannot fix.

A raw sender in the scanner namespace forges SYNs from 151 distinct sources (198.18.0.100 to
.250) at about the rate the daemon bans them, so it is busy all along; every source is banned
on its first probe (SCAN_TRIGGER 0, BAN_STRONG_PORTS 1, a budget far above the burst). Once
the nft set holds a given number of bans the daemon is killed with SIGKILL, wherever it is:
between writing a ban to the store and adding the element, between the element and the
``active`` mark. A new daemon on the same state then finishes what the old one left, and once
all is quiet the store's live bans and the set's elements are the same addresses, each once,
and no ban is left pending.

Root, iproute2, nmap, nft and hping3 (see ``banlab.py``); every packet stays inside the lab.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import netns
import pytest
from banlab import burst, every_ban, list_bans, nft_elements, source_range, unavailable, wait_until
from daemon import Daemon

pytestmark = [pytest.mark.e2e]
_REASON = unavailable()
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

SOURCES = source_range("198.18.0.", 100, 250)
RATE = 1000.0  # forged SYNs per second: the burst lasts 0.15 s
SETTINGS = {
    "BAN_RATE": "10000",
    "BAN_BURST": "10000",
    "BAN_STRONG_PORTS": "1",
    "BLOCK_UDP": "0",
}


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    with netns.Lab.create("psc") as built:
        yield built


def kernel_bans(lab: netns.Lab) -> dict[str, int | None]:
    return nft_elements(lab, 4) or {}


def settled(lab: netns.Lab, daemon: Daemon) -> tuple[list[str], list[str]]:
    """(store addresses, set elements), once both agree twice in a row; the deadline fails."""
    seen: list[tuple[list[str], list[str]]] = []

    def agree() -> tuple[list[str], list[str]] | None:
        store = sorted(ban["address"] for ban in list_bans(lab, daemon))
        kernel = sorted(kernel_bans(lab))
        seen.append((store, kernel))
        stable = len(seen) > 1 and seen[-2] == seen[-1]
        return (store, kernel) if stable and set(store) == set(kernel) else None

    return wait_until(agree, "the store and the nft set agreeing", deadline=20)


@pytest.mark.parametrize("kill_after", [1, 50, 120])
def test_a_kill_during_a_burst_of_bans_is_finished_by_the_next_start(
    lab: netns.Lab, tmp_path: Path, kill_after: int
) -> None:
    daemon = Daemon.start(lab, tmp_path, settings=SETTINGS)
    sender = burst(lab, SOURCES, [80], rate=RATE)
    wait_until(lambda: len(kernel_bans(lab)) >= kill_after, f"{kill_after} bans in the set")
    daemon.stop(signal.SIGKILL)
    at_kill = set(kernel_bans(lab))
    assert at_kill, "the bans outlive the daemon (kernel timeouts)"

    daemon = Daemon.start(lab, tmp_path, settings=SETTINGS)
    try:
        out, _ = sender.communicate(timeout=40)
        assert out.strip() == str(len(SOURCES)), "the burst was sent whole"
        store, kernel = settled(lab, daemon)
        assert len(store) == len(set(store)), f"a source banned twice: {store}"
        assert store == kernel
        assert at_kill <= set(store), "a ban in force at the kill was lost"
        assert set(store) <= set(SOURCES)
        states = {ban["state"] for ban in list_bans(lab, daemon)}
        assert states == {"active"}
        assert {b.state.value for b in every_ban(daemon)} == {"active"}
        assert "bans restored from the state store" in daemon.stderr()
    finally:
        code, stderr = daemon.stop()
    assert code == 0, stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("loss", ["deleted", "emptied"])
def test_a_lost_store_adopts_the_kernels_bans_with_the_time_they_have_left(
    lab: netns.Lab, tmp_path: Path, loss: str
) -> None:
    """The store goes (deleted, or truncated to 0 bytes) while the daemon is down and the set
    holds its bans: the next start keeps every one, with its remaining time, and says so."""
    sources = SOURCES[:20]
    daemon = Daemon.start(lab, tmp_path, settings={**SETTINGS, "BAN_DURATION": "600"})
    sender = burst(lab, sources, [80], rate=RATE)
    assert sender.communicate(timeout=40)[0].strip() == str(len(sources))
    wait_until(lambda: len(kernel_bans(lab)) == len(sources) or None, "every source banned")
    code, stderr = daemon.stop()
    assert code == 0, stderr
    store = tmp_path / "portsentinel.db"
    for leftover in tmp_path.glob("portsentinel.db-*"):  # WAL and shared memory
        leftover.unlink()
    if loss == "deleted":
        store.unlink()
    else:
        store.write_bytes(b"")

    daemon = Daemon.start(lab, tmp_path, settings={**SETTINGS, "BAN_DURATION": "600"})
    try:
        assert set(kernel_bans(lab)) == set(sources), "nothing lifted as a stray"
        bans = list_bans(lab, daemon)
        assert sorted(ban["address"] for ban in bans) == sorted(sources)
        for ban in every_ban(daemon):
            assert ban.reason == "adopted from the kernel"
            assert ban.expires is not None
            assert 0 < ban.expires - ban.created <= 600
        warning = daemon.wait_for_line("were in the kernel but not in the state store")
        assert f"{len(sources)} nftables bans" in warning
    finally:
        code, stderr = daemon.stop()
    assert code == 0, stderr
