"""The C yardsticks of the throughput benchmark: a TPACKET_V3 ring reader and a frame sender.

``build`` compiles ``c_reader/ring_reader.c`` and ``c_reader/sender.c`` with gcc into a
directory the caller owns (a temporary one); ``dump_filter`` writes a BPF program as the
``struct sock_filter`` records the reader loads, so the reader runs exactly the program the
daemon attaches. ``RingReader`` runs the reader in a lab namespace; ``send`` runs one bounded
burst of the sender. Every command is echoed through ``echo`` for the benchmark's record.
"""

from __future__ import annotations

import json
import shlex
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))

import netns

from portsentinel.capture.bpf import Instruction

SOURCES = Path(__file__).resolve().parent / "c_reader"
SOCK_FILTER = struct.Struct("=HBBI")  # code, jt, jf, k: struct sock_filter, native order
SEND_SLACK = 30.0  # seconds beyond the sender's own bound before it is killed

Echo = Callable[[str], None]


def build(out: Path, echo: Echo) -> tuple[Path, Path]:
    """Compile the reader and the sender into ``out``; returns their paths."""
    built = []
    for name in ("ring_reader", "sender"):
        argv = ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(out / name), str(SOURCES / f"{name}.c")]
        echo(shlex.join(argv))
        subprocess.run(argv, check=True, timeout=120)
        built.append(out / name)
    return built[0], built[1]


def dump_filter(program: Sequence[Instruction], path: Path) -> None:
    """Write ``program`` as ``struct sock_filter`` records (what ``SO_ATTACH_FILTER`` takes)."""
    path.write_bytes(b"".join(SOCK_FILTER.pack(*insn) for insn in program))


def load_filter(path: Path) -> list[Instruction]:
    """Read back what ``dump_filter`` wrote."""
    data = path.read_bytes()
    if not data or len(data) % SOCK_FILTER.size:
        raise ValueError(f"{path}: not a whole number of sock_filter records")
    return [SOCK_FILTER.unpack_from(data, at) for at in range(0, len(data), SOCK_FILTER.size)]


class RingReader:
    """The C reader running in one namespace until ``finish``."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    @classmethod
    def start(
        cls,
        lab: netns.Lab,
        binary: Path,
        program: Path,
        echo: Echo,
        *,
        seconds: float = 120.0,
        ring_mib: int = 16,
        cpu: int = 1,
    ) -> RingReader:
        argv = ["taskset", "-c", str(cpu), str(binary), str(program), str(seconds), str(ring_mib)]
        echo(f"ip netns exec {lab.target} {shlex.join(argv)}")
        proc = lab.start(lab.target, argv, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            netns.Lab.stop(proc)
            raise RuntimeError("ring_reader did not start")
        return cls(proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def finish(self) -> dict[str, Any]:
        """Stop it (SIGTERM: it reads what is ready, then reports) and return its report."""
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return report


@dataclass(frozen=True)
class Burst:
    """One bounded run of the sender: which pool, how many frames, how fast, from whom."""

    pool: str  # "syn" or "mixed"
    count: int
    pps: int  # 0: as fast as it goes
    seconds: float
    first_source: str = "198.19.100.1"
    sources: int = 200


def send(lab: netns.Lab, sender: Path, burst: Burst, echo: Echo, cpu: int = 0) -> dict[str, Any]:
    """Run one burst from the scanner namespace to the target; the sender's JSON report."""
    proc = start_send(lab, sender, burst, echo, cpu)
    return finish_send(proc, burst)


def start_send(
    lab: netns.Lab, sender: Path, burst: Burst, echo: Echo, cpu: int = 0
) -> subprocess.Popen[str]:
    """Start a burst in the background; ``finish_send`` collects its report."""
    argv = [
        "taskset", "-c", str(cpu), str(sender), lab.SCANNER_IF,
        lab.link_address(lab.target, lab.TARGET_IF), lab.link_address(lab.scanner, lab.SCANNER_IF),
        lab.TARGET4, burst.pool, str(burst.count), str(burst.pps), str(burst.seconds),
        burst.first_source, str(burst.sources),
    ]  # fmt: skip
    echo(f"ip netns exec {lab.scanner} {shlex.join(argv)}")
    return lab.start(lab.scanner, argv, stdout=subprocess.PIPE, text=True)


def finish_send(proc: subprocess.Popen[str], burst: Burst) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=burst.seconds + SEND_SLACK)
    if proc.returncode != 0:
        raise RuntimeError(f"sender failed with exit code {proc.returncode}")
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return report
