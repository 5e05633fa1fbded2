"""Run a fuzz harness under libFuzzer for a set number of inputs and report the figures.

    python fuzz/run.py [--frames N] [--seconds S] [--harness frames|config|pcap]

Runs ``fuzz/fuzz_<harness>.py -runs=N`` (default: the frame harness, 10,000,000 inputs) on
the committed seed corpus (``fuzz/corpus/<harness>``, written by ``make_corpus.py`` when
missing) plus a scratch folder for the units it finds, samples the fuzzer's resident memory
every second from ``/proc``, and prints: executions, executions per second, coverage
(libFuzzer's ``cov:`` edges and ``ft:`` features, at start and end), crashes (any input that
raised: a finding; its file is kept) and the resident memory at start, middle and end, which
shows whether state grows without bound over millions of inputs.

``--seconds S`` stops the run after S seconds even if fewer than N inputs ran (libFuzzer's
``-max_total_time``); the report says so. Exit status 0 only when no input crashed and the
fuzzer itself ended cleanly. Needs ``atheris`` (``pip install -e '.[fuzz]'``).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import make_corpus

HERE = Path(__file__).resolve().parent
STATUS = re.compile(
    r"^#(?P<runs>\d+)\s+(?P<event>\w+)\s+cov: (?P<cov>\d+) ft: (?P<ft>\d+)"
    r".*?exec/s: (?P<rate>\d+) rss: (?P<rss>\d+)Mb"
)
FINAL = re.compile(r"^stat::(?P<name>\w+):\s+(?P<value>\d+)")
CRASH_PREFIXES = ("crash-", "leak-", "timeout-", "oom-", "slow-unit-")
MAX_LEN = {"frames": 512, "config": 4096, "pcap": 4096}


@dataclass
class Progress:
    """What the fuzzer's output said so far; written by the reader thread."""

    first: dict[str, int] = field(default_factory=dict)  # the INITED line
    last: dict[str, int] = field(default_factory=dict)
    final: dict[str, int] = field(default_factory=dict)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=60))
    inited_at: float | None = None


def _read(stream: IO[str], progress: Progress) -> None:
    for line in stream:
        progress.tail.append(line.rstrip("\n"))
        status = STATUS.match(line)
        if status is not None:
            values = {k: int(v) for k, v in status.groupdict().items() if k != "event"}
            progress.last = values
            if status["event"] == "INITED":
                progress.first = values
                progress.inited_at = time.monotonic()
            continue
        final = FINAL.match(line)
        if final is not None:
            progress.final[final["name"]] = int(final["value"])


def rss_mib(pid: int) -> float | None:
    """The resident set size of ``pid`` in MiB, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _seed_corpus(harness: str, scratch: Path) -> Path:
    committed = HERE / "corpus" / harness
    if committed.is_dir() and any(committed.iterdir()):
        return committed
    make_corpus.write_corpus(scratch / "seeds")
    return scratch / "seeds" / harness


def _command(args: argparse.Namespace, seeds: Path, found: Path, artifacts: Path) -> list[str]:
    command = [
        sys.executable,
        str(HERE / f"fuzz_{args.harness}.py"),
        f"-runs={args.frames}",
        f"-max_len={MAX_LEN[args.harness]}",
        f"-seed={args.seed}",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
    ]
    if args.seconds:
        command.append(f"-max_total_time={args.seconds}")
    return [*command, str(found), str(seeds)]


def _sample(proc: subprocess.Popen[str], progress: Progress, every: float) -> list[float]:
    """RSS samples (MiB) taken every ``every`` seconds after the seed corpus was loaded."""
    samples: list[float] = []
    while proc.poll() is None:
        rss = rss_mib(proc.pid)
        if rss is not None and progress.inited_at is not None:
            samples.append(rss)
        time.sleep(every)
    return samples


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="fuzz-run-") as folder:
        scratch = Path(folder)
        found = scratch / "found"
        found.mkdir()
        seeds = _seed_corpus(args.harness, scratch)
        artifacts = Path(args.artifacts)
        artifacts.mkdir(parents=True, exist_ok=True)
        before = set(artifacts.iterdir())
        progress = Progress()
        started = time.monotonic()
        proc = subprocess.Popen(
            _command(args, seeds, found, artifacts),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None
        reader = threading.Thread(target=_read, args=(proc.stdout, progress), daemon=True)
        reader.start()
        samples = _sample(proc, progress, args.sample)
        reader.join()
        elapsed = time.monotonic() - started
        crashes = sorted(
            p for p in set(artifacts.iterdir()) - before if p.name.startswith(CRASH_PREFIXES)
        )
        seed_count = sum(1 for _ in seeds.iterdir())
    return report(args, progress, Finished(samples, elapsed, crashes, proc.returncode, seed_count))


@dataclass(frozen=True)
class Finished:
    """How the run ended, as seen from outside the fuzzer."""

    samples: list[float]  # RSS in MiB
    elapsed: float
    crashes: list[Path]
    code: int
    seed_count: int


def report(args: argparse.Namespace, progress: Progress, finished: Finished) -> int:
    samples, elapsed, crashes = finished.samples, finished.elapsed, finished.crashes
    runs = progress.final.get("number_of_executed_units", progress.last.get("runs", 0))
    rate = runs / elapsed if elapsed else 0.0
    first, last = progress.first, progress.last
    print(f"harness:      fuzz/fuzz_{args.harness}.py (seed corpus {finished.seed_count} files)")
    print(f"executions:   {runs:,} (asked for {args.frames:,})")
    if runs < args.frames:
        print(f"              stopped early: time limit {args.seconds} s or a crash")
    print(f"wall time:    {elapsed:.1f} s")
    libfuzzer_rate = progress.final.get("average_exec_per_sec", 0)
    print(f"exec/s:       {rate:,.0f} (libFuzzer's average: {libfuzzer_rate:,})")
    print(
        f"coverage:     cov {last.get('cov', 0)}, ft {last.get('ft', 0)}"
        f" (after the seed corpus: cov {first.get('cov', 0)}, ft {first.get('ft', 0)})"
    )
    print(f"crashes:      {len(crashes)}")
    for path in crashes:
        print(f"              {path}")
    if samples:
        middle = samples[len(samples) // 2]
        print(
            f"RSS (MiB):    start {samples[0]:.1f}, middle {middle:.1f}, end {samples[-1]:.1f},"
            f" max {max(samples):.1f} ({len(samples)} samples, one per {args.sample:g} s)"
        )
    print(f"peak RSS:     {progress.final.get('peak_rss_mb', 0)} MB (libFuzzer)")
    if crashes or finished.code != 0:
        print(f"fuzzer exit status {finished.code}; its last lines:", file=sys.stderr)
        print("\n".join(progress.tail), file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--frames", type=int, default=10_000_000, help="inputs to run (-runs=)")
    parser.add_argument("--seconds", type=int, default=0, help="time limit (0: none)")
    parser.add_argument("--harness", choices=sorted(MAX_LEN), default="frames")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed")
    parser.add_argument("--sample", type=float, default=1.0, help="seconds between RSS samples")
    parser.add_argument(
        "--artifacts",
        default=str(Path(tempfile.gettempdir()) / "portsentinel-fuzz-artifacts"),
        help="where crashing inputs are written",
    )
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
