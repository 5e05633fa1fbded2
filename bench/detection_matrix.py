"""Issue 11's closing table: every scan kind, live and in ``replay``, and TRW's contacts.

For each scan (nmap -sS -sT -sF -sN -sX -sU -sA -sW -sM, three --scanflags sets, -D decoys,
a -T1 slow scan of 4 ports, masscan-like and zmap-like SYNs from ``bench/rawprobes.py``),
over IPv4 and IPv6, in a fresh two-namespace lab (``tests/e2e/netns.py``; root, iproute2,
nft, nmap, tcpdump): a fresh daemon (``portsentinel run --mode atcp,audp --events FILE``,
BLOCK_TCP/BLOCK_UDP 0 so no scan is cut short, SCAN_TRIGGER 0) runs in the target
namespace while tcpdump records the target's veth; the scan runs from the scanner namespace,
then the capture goes through ``portsentinel replay --every-probe`` with the same config.
Recorded per scan: the scanned ports that got an event (any action), the kinds and the
scanner named, a decoy group if any, and the time from the scan's first packet on the wire
(tcpdump's kernel timestamp) to the first event: by the event's time (the live daemon stamps
it with its own clock when it reads the packet's batch) and by when its line was seen in the
events file (polled every 10 ms). Then the TRW rows: SCAN_RULE="trw", the first contacts and
the time to decide (from the event times, live; from the capture's clock, in replay).

Prints a markdown table; asserts nothing. Every packet stays inside the lab (198.18.0.0/24,
fd00:5e::/64); the lab, its processes and temporary files are removed at the end.
Usage: python bench/detection_matrix.py [--only TEXT] [--skip-slow] [--ipv4-only]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import banlab
import netns
import nmapcapture
from daemon import Daemon, quick_icmp
from scan_capture import decode, read_pcap

BENCH = Path(__file__).resolve().parent
Event = dict[str, object]
PROTO = {"tcp": 6, "udp": 17}
NMAP = ("nmap", "-n", "-Pn", "--disable-arp-ping")
FAST = ("-T4", "--max-retries", "1")
SCAN_TIMEOUT = 150
SETTLE = 5.0  # after the scan ends, at most this long for the events of its last ports
POLL = 0.01
EXCLUDED = frozenset({80, 113, 139})  # the open port; ADVANCED_EXCLUDE_TCP's defaults
BASE = {"BLOCK_TCP": "0", "BLOCK_UDP": "0", "SCAN_TRIGGER": "0"}


@dataclass(frozen=True)
class Family:
    name: str
    src: str
    dst: str
    decoys: tuple[str, ...]
    nmap: tuple[str, ...]


FAMILIES = (
    Family("IPv4", "198.18.0.2", "198.18.0.1", ("198.18.0.3", "198.18.0.4"), ()),
    Family("IPv6", "fd00:5e::2", "fd00:5e::1", ("fd00:5e::3", "fd00:5e::4"), ("-6",)),
)


@dataclass(frozen=True)
class Case:
    """One scan: its row label, protocol, ports, the kind(s) expected, and how it is sent."""

    name: str
    proto: str
    ports: tuple[int, ...]
    expect: str
    flags: tuple[str, ...] = ()  # nmap's options; empty for a raw-probe style
    raw: str = ""  # bench/rawprobes.py's style
    decoys: bool = False
    families: tuple[str, ...] = ("IPv4", "IPv6")
    settings: dict[str, str] = field(default_factory=dict)

    def argv(self, family: Family) -> list[str]:
        spec = ",".join(map(str, self.ports))
        if self.raw:
            return [sys.executable, str(BENCH / "rawprobes.py"), self.raw, family.src,
                    family.dst, spec]  # fmt: skip
        # -S: with the decoys on its veth the scanner's kernel would pick one of them (IPv6)
        decoy = (["-D", ",".join([*family.decoys, "ME"]), "-S", family.src,
                  "-e", netns.Lab.SCANNER_IF]
                 if self.decoys else [])  # fmt: skip
        return ["timeout", str(SCAN_TIMEOUT), *NMAP, *family.nmap, *self.flags, *decoy,
                "-p", spec, family.dst]  # fmt: skip

    def sources(self, family: Family) -> frozenset[str]:
        return frozenset([family.src, *(family.decoys if self.decoys else ())])


def port_blocks(count: int, size: int, start: int = 1) -> list[tuple[int, ...]]:
    """``count`` disjoint runs of ``size`` ports from ``start`` up, skipping ``EXCLUDED``."""
    free = (p for p in range(start, 1024) if p not in EXCLUDED)
    return [tuple(next(free) for _ in range(size)) for _ in range(count)]


def matrix_cases() -> list[Case]:
    specs: list[tuple[str, str, str, dict[str, object]]] = [
        ("nmap -sS", "tcp", "SYN", {"flags": ("-sS", *FAST)}),
        ("nmap -sT", "tcp", "SYN", {"flags": ("-sT", *FAST)}),
        ("nmap -sF", "tcp", "FIN", {"flags": ("-sF", *FAST)}),
        ("nmap -sN", "tcp", "NULL", {"flags": ("-sN", *FAST)}),
        ("nmap -sX", "tcp", "XMAS", {"flags": ("-sX", *FAST)}),
        ("nmap -sU", "udp", "UDP", {"flags": ("-sU", *FAST)}),
        ("nmap -sA", "tcp", "ACK", {"flags": ("-sA", *FAST)}),
        ("nmap -sW", "tcp", "ACK", {"flags": ("-sW", *FAST)}),
        ("nmap -sM", "tcp", "MAIMON", {"flags": ("-sM", *FAST)}),
        ("nmap --scanflags SYNFIN", "tcp", "UNKNOWN", {"flags": ("--scanflags", "SYNFIN", *FAST)}),
        ("nmap --scanflags URGPSHFIN", "tcp", "XMAS",
         {"flags": ("--scanflags", "URGPSHFIN", *FAST)}),
        ("nmap --scanflags ACKPSH", "tcp", "UNKNOWN",
         {"flags": ("--scanflags", "ACKPSH", *FAST)}),
        ("nmap -sS -D d1,d2,ME", "tcp", "SYN", {"flags": ("-sS", *FAST), "decoys": True}),
        ("masscan-like SYN", "tcp", "SYN", {"raw": "masscan"}),
        ("zmap-like SYN", "tcp", "SYN", {"raw": "zmap"}),
    ]  # fmt: skip
    blocks = port_blocks(len(specs) + 1, 6)
    cases = [
        Case(name, proto, ports, expect, **extra)  # type: ignore[arg-type]
        for (name, proto, expect, extra), ports in zip(specs, blocks, strict=False)
    ]
    slow = Case("nmap -sS -T1 (4 ports)", "tcp", blocks[-1][:4], "SYN",
                flags=("-sS", "-T1", "--max-retries", "0"))  # fmt: skip
    return [*cases, slow]


def ban_cases() -> list[Case]:
    """Run last: the bans stay in the target's nft table after the daemon stops."""
    [ports] = port_blocks(1, 6, start=400)
    return [Case("nmap -sS -D d1,d2,ME, BLOCK_TCP=1", "tcp", ports, "SYN",
                 flags=("-sS", *FAST), decoys=True, settings={"BLOCK_TCP": "1"})]  # fmt: skip


def trw_cases() -> list[Case]:
    """SCAN_RULE="trw": port 80 is open (a success when nmap tries it)."""
    trw = {"SCAN_RULE": "trw"}
    tcp = port_blocks(4, 7, start=600)
    one = ("--max-retries", "0")
    return [
        Case("trw: nmap -sS, 8 ports (80 open)", "tcp", (*tcp[0], 80), "SYN",
             flags=("-sS", *FAST), settings=trw),
        Case("trw: nmap -sT, 8 ports (80 open)", "tcp", (*tcp[1], 80), "SYN",
             flags=("-sT", *FAST), settings=trw),
        Case("trw: nmap -sU, 8 ports", "udp", port_blocks(1, 8, start=700)[0], "UDP",
             flags=("-sU", *FAST), settings=trw),
        Case("trw: nmap -sS --scan-delay 2s, 8 ports (80 open)", "tcp", (*tcp[2], 80), "SYN",
             flags=("-sS", "--scan-delay", "2s", *one), families=("IPv4",), settings=trw),
        Case("trw: one probe to a closed port", "tcp", tcp[3][:1], "SYN",
             flags=("-sS", *one), families=("IPv4",), settings=trw),
    ]  # fmt: skip


# --- the pure parts: what the events and the capture say --------------------------------------


@dataclass(frozen=True)
class Seen:
    """What a set of events says of one scan."""

    ports: frozenset[int]
    kinds: tuple[str, ...]
    scanners: tuple[str, ...]
    group: int  # the largest decoy group named (members), 0 for none
    decoy_bans: int  # sources blocked as a decoy group's members (BLOCK_TCP 1 only)
    cuts: int  # bans cut to DECOY_BAN_DURATION once the group showed ("type": "cut" lines)
    first: float | None  # the first event's packet time (epoch seconds)
    decision: Event | None  # the first event of the TRW rule (rule "trw")


def event_time(event: Event) -> float:
    return datetime.fromisoformat(str(event["time"])).timestamp()


def seen(
    events: Iterable[Event], sources: frozenset[str], proto: str, ports: Sequence[int]
) -> Seen:
    """The events of a scan: from its sources, of its protocol, to its ports (any action: with
    BLOCK 0 a source's probes after its first alert are "ignored", "already blocked")."""
    events = list(events)
    mine = [
        e for e in events
        if e.get("type") is None and e.get("src") in sources and e.get("proto") == proto
        and e.get("port") in ports
    ]  # fmt: skip
    cuts = [e for e in events if e.get("type") == "cut" and e.get("src") in sources]
    groups = [g for e in mine if isinstance(g := e.get("group"), list)]
    decisions = [e for e in mine if e.get("rule") == "trw"]
    return Seen(
        ports=frozenset(int(str(e["port"])) for e in mine),
        kinds=tuple(sorted({str(e["kind"]) for e in mine})),
        scanners=tuple(sorted({str(e["scanner"]) for e in mine if e.get("scanner")})),
        group=max((len(g) for g in groups), default=0),
        decoy_bans=len({e["src"] for e in mine if e.get("action") == "block" and e.get("decoy")}),
        cuts=len(cuts),
        first=min((event_time(e) for e in mine), default=None),
        decision=min(decisions, key=event_time) if decisions else None,
    )


def first_probe(pcap: bytes, sources: frozenset[str], dst: str, proto: str) -> float | None:
    """The capture time of the first packet of ``proto`` from a source to ``dst``."""
    for when, frame in read_pcap(pcap):
        decoded = decode(frame)
        if decoded and decoded[0] in sources and decoded[1] == dst and decoded[2] == PROTO[proto]:
            return when
    return None


def ms(delay: float | None) -> str:
    return "-" if delay is None else f"{delay * 1000:.1f} ms"


def since(later: float | None, start: float | None) -> float | None:
    return None if later is None or start is None else later - start


def detected(case: Case, found: Seen) -> str:
    hit = len(found.ports & set(case.ports))
    word = "yes" if hit == len(case.ports) else ("partly" if hit else "**no**")
    return f"{word} {hit}/{len(case.ports)}"


def kinds(case: Case, found: Seen) -> str:
    text = ",".join(found.kinds) or "-"
    return text if text in ("-", case.expect) else f"{text} (expected {case.expect})"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --- the lab ----------------------------------------------------------------------------------


@dataclass
class Run:
    case: Case
    family: Family
    live: Seen
    replay: Seen
    first_probe: float | None
    written: float | None  # when the first event's line was seen in the file (epoch)
    scan_exit: int


@contextlib.contextmanager
def capture(lab: netns.Lab, path: Path) -> Iterator[list[str]]:
    """tcpdump on the target's veth while the block runs: immediate mode and packet-buffered
    writes (a tcpdump ended by a signal otherwise loses what waits in its ring), nanosecond
    kernel timestamps. Yields a list that gets a note if any packet was lost."""
    argv = ["tcpdump", "-n", "-i", lab.TARGET_IF, "-s", "160", "-B", "32768", "-U",
            "--immediate-mode", "--time-stamp-precision=nano", "-Z", "root",
            "-w", str(path)]  # fmt: skip
    dump = lab.start(lab.target, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                     text=True)  # fmt: skip
    assert dump.stderr is not None
    if "listening on" not in dump.stderr.readline():
        raise RuntimeError(f"tcpdump did not start ({dump.poll()})")
    notes: list[str] = []
    try:
        yield notes
    finally:
        time.sleep(0.2)  # the target's last answers, on their way to the veth
        lab.stop(dump)
        report = dump.stderr.read()
        got = [re.search(rf"(\d+) packets? {what}", report) for what in
               ("captured", "received by filter", "dropped by kernel")]  # fmt: skip
        counts = [int(m.group(1)) if m else None for m in got]
        if None in counts or counts[0] != counts[1] or counts[2]:
            notes.append(f"tcpdump: {' '.join(report.split())}")


def run_case(lab: netns.Lab, base: Path, case: Case, family: Family) -> Run:
    directory = base / f"{len(list(base.iterdir()))}-{family.name}"
    daemon = Daemon.start(lab, directory, settings={**BASE, **case.settings}, measured=False)
    sources = case.sources(family)
    pcap = directory / "scan.pcap"
    written = None
    try:
        with capture(lab, pcap) as notes:
            scan = lab.start(lab.scanner, case.argv(family),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
            ended: float | None = None
            deadline = time.monotonic() + SCAN_TIMEOUT + 10
            while time.monotonic() < deadline:
                found = seen(daemon.events(), sources, case.proto, case.ports)
                if written is None and found.ports:
                    written = time.time()
                if ended is None and scan.poll() is not None:
                    ended = time.monotonic()
                if ended is not None and (
                    found.ports >= set(case.ports) or time.monotonic() - ended > SETTLE
                ):
                    break
                time.sleep(POLL)
            out, _ = scan.communicate(timeout=10)
    finally:
        daemon.stop()
    for note in notes:
        print(f"  {case.name} {family.name}: {note}", file=sys.stderr)
    if scan.returncode:
        print(f"  {case.name} {family.name}: exit {scan.returncode}: {out.decode()[-300:]}",
              file=sys.stderr)  # fmt: skip
    # The live daemon logs a cut ("ban cut to 300s as a decoy's"); its events file has none.
    cut: list[Event] = [{"type": "cut", "src": line.split()[2].rstrip(":")}
           for line in daemon.stderr().splitlines() if " ban cut to " in line]  # fmt: skip
    live = seen([*daemon.events(), *cut], sources, case.proto, case.ports)
    return Run(
        case,
        family,
        live,
        replay(directory, pcap, family, case),
        first_probe(pcap.read_bytes(), sources, family.dst, case.proto),
        written,
        scan.returncode,
    )


@contextlib.contextmanager
def decoys(lab: netns.Lab, case: Case, family: Family) -> Iterator[None]:
    """The decoys' addresses on the scanner's veth for a decoy scan only: there, each answers
    the target's SYN/ACK with an RST as a framed live host would, and nowhere else do they
    change which source address the scanner's kernel picks."""
    added = family.decoys if case.decoys else ()
    for address in added:
        banlab.add_scanner_address(lab, address)
    try:
        yield
    finally:
        for address in added:
            prefix = lab.PREFIX6 if ":" in address else lab.PREFIX4
            lab.run(lab.scanner, ["ip", "addr", "del", f"{address}/{prefix}", "dev",
                                  lab.SCANNER_IF], check=False)  # fmt: skip


def replay(directory: Path, pcap: Path, family: Family, case: Case) -> Seen:
    argv = [sys.executable, "-m", "portsentinel", "replay", "--config",
            str(directory / "portsentinel.conf"), "--mode", "atcp,audp", "--every-probe",
            "--local", family.dst, str(pcap)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        print(f"  replay {pcap}: exit {done.returncode}: {done.stderr[-300:]}", file=sys.stderr)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return seen(events, case.sources(family), case.proto, case.ports)


# --- printing ---------------------------------------------------------------------------------


def group(found: Seen) -> str:
    bans = f", {found.decoy_bans} banned as decoys" if found.decoy_bans else ""
    cuts = f", {found.cuts} ban cut" if found.cuts else ""
    return f"group of {found.group}{bans}{cuts}" if found.group else "-"


def matrix_rows(runs: Iterable[Run]) -> list[list[str]]:
    return [
        [
            r.case.name, r.family.name,
            detected(r.case, r.live), kinds(r.case, r.live), ",".join(r.live.scanners) or "-",
            group(r.live), ms(since(r.live.first, r.first_probe)),
            ms(since(r.written, r.first_probe)),
            detected(r.case, r.replay), kinds(r.case, r.replay),
            ",".join(r.replay.scanners) or "-", group(r.replay),
        ]
        for r in runs
    ]  # fmt: skip


MATRIX_HEADER = (
    "scan", "family", "live: detected (ports)", "live: kind", "live: scanner", "live: group",
    "time to alert (event time)", "time to alert (line in file)", "replay: detected",
    "replay: kind", "replay: scanner", "replay: group",
)  # fmt: skip


def trw_rows(runs: Iterable[Run]) -> list[list[str]]:
    rows = []
    for r in runs:
        row = [r.case.name, r.family.name]
        for found in (r.live, r.replay):
            d = found.decision
            if d is None:
                row += ["no decision", "-", "-", str(len(found.ports))]
            else:
                took = since(event_time(d), r.first_probe)  # replay: the same capture's clock
                row += [f"{d['contacts']} contacts", f"{d['score']:g}", ms(took),
                        str(len(found.ports))]  # fmt: skip
        rows.append(row)
    return rows


TRW_HEADER = (
    "scan", "family", "live: decision", "live: score", "live: time to decide",
    "live: ports with an event", "replay: decision", "replay: score", "replay: time to decide",
    "replay: ports with an event",
)  # fmt: skip


def environment(argv: Sequence[str]) -> str:
    nmap = subprocess.run(["nmap", "--version"], capture_output=True, text=True, check=False)
    return "\n".join([
        f"command: {' '.join(argv)}",
        f"date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"kernel: {os.uname().release}; cores: {os.cpu_count()}; "
        f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"nmap: {nmap.stdout.splitlines()[0] if nmap.stdout else '?'}",
    ])  # fmt: skip


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", help="run only the scans whose name holds this text")
    parser.add_argument("--skip-slow", action="store_true", help="no -T1 or --scan-delay scan")
    parser.add_argument("--ipv4-only", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the daemons' files, captures")
    args = parser.parse_args(argv[1:])
    missing = [tool for tool in ("nmap", "tcpdump", "nft") if shutil.which(tool) is None]
    reason = netns.unavailable() or (f"needs {', '.join(missing)}" if missing else None)
    if reason:
        print(f"detection_matrix: {reason}", file=sys.stderr)
        return 1

    def wanted(case: Case) -> list[Family]:
        slow = "-T1" in case.flags or "--scan-delay" in case.flags
        if (args.only and args.only not in case.name) or (args.skip_slow and slow):
            return []
        return [f for f in FAMILIES if f.name in case.families
                and not (args.ipv4_only and f.name == "IPv6")]  # fmt: skip

    print(environment(argv), end="\n\n")
    base = Path(tempfile.mkdtemp(prefix="detection-matrix-"))
    results: dict[str, list[Run]] = {"matrix": [], "trw": []}
    try:
        with netns.Lab.create(prefix="psdm") as lab:
            quick_icmp(lab)
            nmapcapture.listen(lab, 80)
            plan = (("matrix", matrix_cases()), ("trw", trw_cases()), ("matrix", ban_cases()))
            for key, cases in plan:
                for case in cases:
                    for family in wanted(case):
                        print(f"{case.name} {family.name}", file=sys.stderr, flush=True)
                        with decoys(lab, case, family):
                            results[key].append(run_case(lab, base, case, family))
    finally:
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    print(table(MATRIX_HEADER, matrix_rows(results["matrix"])), end="\n\n")
    print(table(TRW_HEADER, trw_rows(results["trw"])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
