"""The figures of ``bench/throughput.py`` and the summary table printed at the end of a run.

Pure: plain records in, Markdown text out (the same text goes into ``bench/README.md``).
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ban_latency import percentile


@dataclass(frozen=True)
class Step:
    """One rate step of the probe throughput ladder for one reader."""

    reader: str
    rate: int  # the sender's target rate; 0 = as fast as it goes
    sent: int
    pps: float  # the rate the sender achieved
    handled: int
    drops: int

    @property
    def clean(self) -> bool:
        """Every probe handled and none dropped by the kernel."""
        return self.drops == 0 and self.handled >= self.sent

    @property
    def handled_pps(self) -> float:
        """Handled per second of sending (the backlog drained after the step counts too)."""
        return self.handled * self.pps / self.sent if self.sent else 0.0

    @property
    def label(self) -> str:
        return "max" if self.rate == 0 else f"{self.rate // 1000}k"

    def row(self) -> str:
        return (f"{self.reader:<15} {self.label:>4}: offered {self.pps:>9,.0f} pps, sent "
                f"{self.sent:>9,}, handled {self.handled:>9,}, drops {self.drops:>9,}  "
                f"{'ok' if self.clean else 'LOSS'}")  # fmt: skip


@dataclass(frozen=True)
class Drain:
    """A ring filled while the reader was stopped, then drained: the cost of one core."""

    reader: str
    filled: int
    handled: int
    drops: int
    cpu_seconds: float

    @property
    def us_per_packet(self) -> float:
        return self.cpu_seconds * 1e6 / self.handled if self.handled else 0.0

    @property
    def pps(self) -> float:
        return self.handled / self.cpu_seconds if self.cpu_seconds else float("inf")

    def row(self) -> str:
        return (f"{self.reader:<15} filled {self.filled:,}, handled {self.handled:,}, drops "
                f"{self.drops:,}, CPU {self.cpu_seconds:.3f} s = {self.us_per_packet:.3f} µs/pkt"
                f" = {self.pps / 1e6:.2f} Mpps per core")  # fmt: skip


@dataclass(frozen=True)
class Cost:
    """Reader CPU while normal traffic (with probes mixed in) crossed the target."""

    load: str
    reader: str
    frames: int  # received by the target's interface (skbs: GSO frames count once)
    bytes: int
    cpu_seconds: float
    probes_sent: int
    probes_counted: int
    drops: int
    note: str

    @property
    def us_per_frame(self) -> float:
        return self.cpu_seconds * 1e6 / self.frames if self.frames else 0.0

    def row(self) -> str:
        return (f"{self.load:<21} {self.reader:<15} frames {self.frames:,} ({self.note}), CPU "
                f"{self.cpu_seconds:.2f} s = {self.us_per_frame:.3f} µs/frame, probes "
                f"{self.probes_counted:,}/{self.probes_sent:,}, drops {self.drops:,}")  # fmt: skip


@dataclass(frozen=True)
class Latency:
    """First probe sent -> the ban visible in the kernel, one fresh source per sample."""

    daemon: str
    samples: int
    seconds: Sequence[float]

    def ms(self) -> tuple[float, float, float, float] | None:
        """Median, p95, min and max in milliseconds; None without a sample."""
        if not self.seconds:
            return None
        ms = [s * 1000 for s in self.seconds]
        return statistics.median(ms), percentile(ms, 0.95), min(ms), max(ms)

    def row(self) -> str:
        figures = self.ms()
        if figures is None:
            return f"{self.daemon}: no ban seen"
        median, p95, low, high = figures
        return (f"{self.daemon}: median {median:.2f} ms, p95 {p95:.2f} ms, min {low:.2f}, max "
                f"{high:.2f} ({len(self.seconds)}/{self.samples} banned)")  # fmt: skip


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)
    drains: list[Drain] = field(default_factory=list)
    costs: list[Cost] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)

    def table(self) -> str:
        parts = [self._throughput(), self._drains(), self._costs(), self._latencies()]
        return "\n\n".join(part for part in parts if part)

    def _throughput(self) -> str:
        if not self.steps:
            return ""
        lines = ["### Probe throughput (SYN probes; highest offered rate with every probe "
                 "handled and 0 kernel drops)", "",
                 "| reader | highest clean step: offered pps | handled / offered | drops | "
                 "next step: offered pps, handled, drops | best handled / sending time |",
                 "|---|---|---|---|---|---|"]  # fmt: skip
        best: dict[str, float] = {}
        for reader in dict.fromkeys(step.reader for step in self.steps):
            mine = [s for s in self.steps if s.reader == reader]
            clean = [s for s in mine if s.clean]
            top = max(clean, key=lambda s: s.pps) if clean else None
            after = [s for s in mine if not s.clean and (top is None or s.pps > top.pps)]
            nxt = min(after, key=lambda s: s.pps) if after else None
            best[reader] = top.pps if top else 0.0
            lines.append(
                f"| {reader} | {f'{top.pps:,.0f} ({top.label})' if top else 'none'} | "
                f"{f'{top.handled:,} / {top.sent:,}' if top else '-'} | "
                f"{top.drops if top else '-'} | "
                f"{f'{nxt.pps:,.0f}, {nxt.handled:,}, {nxt.drops:,}' if nxt else 'no loss seen'}"
                f" | {max(s.handled_pps for s in mine):,.0f} |"
            )
        c_best = best.get("C ring reader")
        capped = all(s.clean for s in self.steps if s.reader == "C ring reader")
        for name in ("portsentinel", "portsentinel --dry-run"):
            ours = best.get(name)
            if c_best and ours is not None:
                lines += ["", f"{name} / C reader (highest clean offered rate): "
                          f"{ours / c_best:.2f}" + (" (the C reader never lost a probe: its "
                          "figure is the sender's ceiling)" if capped else "")]  # fmt: skip
        lines += ["", "| reader | target | offered pps | sent | handled | kernel drops | |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {s.reader} | {s.label} | {s.pps:,.0f} | {s.sent:,} | {s.handled:,} | "
                  f"{s.drops:,} | {'ok' if s.clean else 'loss'} |" for s in self.steps]  # fmt: skip
        return "\n".join(lines)

    def _drains(self) -> str:
        if not self.drains:
            return ""
        lines = ["### Saturated (ring filled while the reader was stopped, then drained)", "",
                 "| reader | frames filled | handled | drops | CPU s | µs per packet | "
                 "packets/s on one core |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {d.reader} | {d.filled:,} | {d.handled:,} | {d.drops:,} | "
                  f"{d.cpu_seconds:.3f} | {d.us_per_packet:.3f} | {d.pps:,.0f} |"
                  for d in self.drains]  # fmt: skip
        return "\n".join(lines)

    def _costs(self) -> str:
        if not self.costs:
            return ""
        lines = ["### Cost on normal traffic", "",
                 "| load | reader | frames received | load rate | reader CPU s | "
                 "µs per frame | probes counted / sent | drops |",
                 "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {c.load} | {c.reader} | {c.frames:,} | {c.note} | {c.cpu_seconds:.2f} | "
                  f"{c.us_per_frame:.3f} | {c.probes_counted:,} / {c.probes_sent:,} | "
                  f"{c.drops:,} |" for c in self.costs]  # fmt: skip
        return "\n".join(lines)

    def _latencies(self) -> str:
        if not self.latencies:
            return ""
        lines = ["### First probe to ban in the kernel", "",
                 "| daemon: what is timed | bans | median ms | p95 ms | min ms | max ms |",
                 "|---|---|---|---|---|---|"]  # fmt: skip
        for lat in self.latencies:
            figures = lat.ms()
            cells = " | ".join(f"{x:.2f}" for x in figures) if figures else "- | - | - | -"
            lines.append(f"| {lat.daemon} | {len(lat.seconds)}/{lat.samples} | {cells} |")
        return "\n".join(lines)
