"""End to end: the live daemon against real nmap scans, every mode, IPv4 and IPv6.

One daemon per way of running it (``--mode atcp,audp``, ``stcp,sudp``, ``tcp,udp`` and
PortSentry's own ``-atcp -audp``) runs in the lab's target namespace while the scanner
namespace runs, all at once, every scan the modes can see over both families: each scan type
on its own port range (see ``daemon.SCANS``), so every event is attributed by port. With
SCAN_TRIGGER 0 each probe is one event; BLOCK_TCP/BLOCK_UDP 0 keep the scanner unblocked, so
the results do not depend on which scan a ban would have cut short.

Root, iproute2, nft and nmap only (see ``netns.py``); every packet stays inside the lab.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import netns
import pytest
from daemon import (
    FAMILIES,
    Daemon,
    Event,
    Family,
    Scan,
    expected_kind,
    quick_icmp,
    run_scans,
    scan_events,
    scans_for,
    statistics,
)

pytestmark = [pytest.mark.e2e]
_REASON = netns.unavailable() or (None if shutil.which("nmap") else "needs nmap")
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))


@dataclass(frozen=True)
class Run:
    """One way of starting the daemon: ``--mode`` or PortSentry's flags (``name`` is the test
    id, and a directory name)."""

    name: str
    tcp_mode: str
    udp_mode: str
    flags: tuple[str, ...] = ()

    @property
    def scans(self) -> list[tuple[str, Scan]]:
        """(mode, scan) for every scan this run's two modes can see."""
        return [(m, s) for m in (self.tcp_mode, self.udp_mode) for s in scans_for(m)]

    def settings(self) -> dict[str, str]:
        """TCP_PORTS/UDP_PORTS list exactly the scanned ports (the stcp/sudp/tcp/udp lists)."""
        ports = {"tcp": set[int](), "udp": set[int]()}
        for _mode, scan in self.scans:
            ports[scan.proto].update(scan.ports)
        return {
            "TCP_PORTS": ",".join(map(str, sorted(ports["tcp"]))),
            "UDP_PORTS": ",".join(map(str, sorted(ports["udp"]))),
            "BLOCK_TCP": "0",
            "BLOCK_UDP": "0",
        }


RUNS = (
    Run("atcp,audp", "atcp", "audp"),
    Run("stcp,sudp", "stcp", "sudp"),
    Run("tcp,udp", "tcp", "udp"),
    Run("flags-atcp-audp", "atcp", "audp", flags=("-atcp", "-audp")),
)


@dataclass(frozen=True)
class Observed:
    """What one daemon saw of all its scans, and how it ended."""

    events: list[Event]
    started: dict[tuple[str, str], float]
    exit_code: int
    stderr: str


class Observations:
    """Runs each daemon (and its scans) once, on first demand; tests are ordered by run."""

    def __init__(self, lab: netns.Lab, base: Path) -> None:
        self.lab = lab
        self.base = base
        self._seen: dict[str, Observed | AssertionError] = {}

    def __getitem__(self, run: Run) -> Observed:
        """The run's observations; a run that failed fails each of its tests, without retry."""
        if run.name not in self._seen:
            try:
                self._seen[run.name] = self._observe(run)
            except AssertionError as exc:
                self._seen[run.name] = exc
        seen = self._seen[run.name]
        if isinstance(seen, AssertionError):
            raise seen
        return seen

    def _observe(self, run: Run) -> Observed:
        directory = self.base / run.name.replace(",", "-")
        mode = f"{run.tcp_mode},{run.udp_mode}"
        daemon = Daemon.start(
            self.lab, directory, mode=mode, flags=run.flags, settings=run.settings()
        )
        try:
            jobs = [(scan, family) for _mode, scan in run.scans for family in FAMILIES]
            started = run_scans(self.lab, jobs)
            wanted = {(f.src, s.proto, p) for s, f in jobs for p in s.ports}
            daemon.wait_for_events(
                lambda events: wanted <= {(e["src"], e["proto"], e["port"]) for e in events},
                "an event for every scanned port",
                check=False,  # each test below says what is missing
            )
        finally:
            code, stderr = daemon.stop()
        return Observed(daemon.events(), started, code, stderr)


@pytest.fixture(scope="module")
def lab() -> Iterator[netns.Lab]:
    with netns.Lab.create(prefix="psm") as built:
        quick_icmp(built)
        yield built


@pytest.fixture(scope="module")
def observed(lab: netns.Lab, tmp_path_factory: pytest.TempPathFactory) -> Observations:
    return Observations(lab, tmp_path_factory.mktemp("modes"))


CASES = [
    pytest.param(run, mode, scan, family, id=f"{run.name}-{scan.flag[1:]}-{family.name}")
    for run in RUNS
    for mode, scan in run.scans
    for family in FAMILIES
]


@pytest.mark.parametrize(("run", "mode", "scan", "family"), CASES)
def test_scan_is_reported(
    observed: Observations, run: Run, mode: str, scan: Scan, family: Family
) -> None:
    seen = observed[run]
    events = scan_events(seen.events, scan, family)
    missing = sorted(set(scan.ports) - {e["port"] for e in events})
    assert not missing, f"{mode} {scan.flag} {family.name}: no event for ports {missing}"
    kind = expected_kind(mode, scan)
    wrong = [e for e in events if (e["kind"], e["dst"], e["mode"]) != (kind, family.dst, mode)]
    assert not wrong, f"expected kind {kind}, dst {family.dst}, mode {mode}: {wrong}"
    # BLOCK 0: the first probe of the source is an alert, the rest "already" answered.
    assert {e["action"] for e in events} <= {"alert", "ignored"}


@pytest.mark.parametrize("run", [pytest.param(r, id=r.name) for r in RUNS])
def test_daemon_saw_nothing_else_and_stopped_cleanly(observed: Observations, run: Run) -> None:
    seen = observed[run]
    explained = [
        e for _mode, scan in run.scans for family in FAMILIES
        for e in scan_events(seen.events, scan, family)
    ]  # fmt: skip
    assert len(explained) == len(seen.events), "events no scan explains"
    assert seen.exit_code == 0, seen.stderr
    stats = statistics(seen.stderr)
    assert stats, seen.stderr
    assert stats["decode_errors"] == 0
    assert stats.get("kernel_drops", 0) == 0
