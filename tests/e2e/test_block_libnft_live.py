"""End to end: the nftables backend on the in-process runner (libnftables), in a fresh lab.

libnftables talks to the kernel of the namespace the process is in, so a prefix such as
``ip netns exec`` cannot carry it there. The backend therefore runs in a child process started
inside the lab's target namespace (``DRIVER`` below), and the test drives it with one JSON
request per line on its stdin, one JSON answer per line on its stdout. The test itself checks
the kernel with the real ``nft`` program in the same namespace, and the traffic with the
probes of test_block_backends (a server in the target; connections from a banned and from
another source address in the scanner).

The measurements (block() latency and batch rate, in-process against a subprocess per
command, both inside the namespace so that neither pays for ``ip netns exec``) are printed;
run with ``-s`` to see them.
"""

from __future__ import annotations

import ctypes
import json
import selectors
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import netns
import pytest
from test_block_backends import BANNED4, BANNED6, OTHER4, OTHER6, banning_lab, expect

from portsentinel.block.libnft import LIBRARY


def _library_missing() -> bool:
    try:
        ctypes.CDLL(LIBRARY)
    except OSError:
        return True
    return False


_REASON = netns.unavailable()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs the nft command"),
    pytest.mark.skipif(_library_missing(), reason=f"needs {LIBRARY}"),
]

Lab = netns.Lab
_ANSWER_TIMEOUT = 120.0

# The backend, inside the target namespace. ``select_runner(Runner())`` is the runner
# ``NftablesBackend(Runner())`` picks by itself; it is built here so that its counters can say
# where the commands went.
DRIVER = r"""
import json, sys, time
from portsentinel.block.base import BanSpec
from portsentinel.block.libnft import LibnftRunner, select_runner
from portsentinel.block.nftables import NftablesBackend
from portsentinel.block.runner import Runner
from portsentinel.errors import BackendError

runner = select_runner(Runner())
assert isinstance(runner, LibnftRunner), runner
backend = NftablesBackend(runner)
looker = LibnftRunner()  # a context of its own, for the benchmark's checks

def in_set(address):
    result = looker.run(["nft", "-j", "list", "set", "inet", "portsentinel", "ban4"])
    return result.ok and f'"{address}"' in result.stdout

def outcome(value):
    return f"error: {value}" if isinstance(value, BackendError) else "ok"

def latency(count, in_process, net):
    bench = NftablesBackend(Runner(), in_process=in_process)
    bench.start()
    seconds, missing = [], []
    for i in range(count):
        address = f"198.19.{net + i // 250}.{i % 250 + 1}"
        ban = BanSpec.create(address, timeout=600)
        started = time.perf_counter()
        bench.block(ban)
        seconds.append(time.perf_counter() - started)
        if not in_set(address):  # checked after the clock stopped
            missing.append(address)
    used = bench._runner
    runs = [type(used).__name__, getattr(used, "subprocess_runs", None)]
    bench.stop()
    return {"seconds": seconds, "missing": missing, "runner": runs}

def batch(count, in_process, net):
    looker.run(["nft", "-f", "-"], input="flush set inet portsentinel ban4\n")
    bench = NftablesBackend(Runner(), in_process=in_process)
    bench.start()
    bans = [BanSpec.create(f"198.19.{net + i // 256 % 100}.{i % 256}", timeout=3600)
            for i in range(count)]
    started = time.perf_counter()
    results = bench.block_many(bans)
    elapsed = time.perf_counter() - started
    present = len(bench.check().present)
    bench.stop()
    return {"seconds": elapsed, "refused": sum(isinstance(r, BackendError) for r in results),
            "present": present}

def handle(op, args):
    if op == "start":
        return backend.start()
    if op == "block":
        return backend.block(BanSpec.create(args["address"], timeout=args.get("timeout")))
    if op == "block_refused":
        try:
            backend.block(BanSpec.create(args["address"]))
        except BackendError as exc:
            return {"error": str(exc), "degraded": backend.degraded}
        return None
    if op == "unblock":
        return backend.unblock(args["detail"])
    if op == "check":
        found = backend.check()
        return {"intact": found.intact, "problems": list(found.problems),
                "present": dict(found.present), "degraded": backend.degraded}
    if op == "repair":
        bans = [BanSpec.create(a, timeout=args.get("timeout")) for a in args["addresses"]]
        return [outcome(r) for r in backend.repair(bans)]
    if op == "runs":
        return {"in_process": runner.in_process_runs, "subprocess": runner.subprocess_runs,
                "reason": runner.fallback_reason}
    if op == "latency":
        return latency(args["count"], args["in_process"], args["net"])
    if op == "batch":
        return batch(args["count"], args["in_process"], args["net"])
    if op == "stop":
        backend.stop()
        looker.close()
        return None
    raise ValueError(f"unknown request {op!r}")

for line in sys.stdin:
    request = json.loads(line)
    try:
        answer = {"value": handle(request["op"], request)}
    except Exception as exc:
        answer = {"failure": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(answer), flush=True)
    if request["op"] == "stop":
        break
"""


class Driver:
    """The backend in the target namespace, one request at a time."""

    def __init__(self, lab: netns.Lab) -> None:
        self.proc = lab.start(
            lab.target,
            [sys.executable, "-c", DRIVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self._stdin, self._stdout = self.proc.stdin, self.proc.stdout
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._stdout, selectors.EVENT_READ)

    def __call__(self, op: str, **args: Any) -> Any:
        self._stdin.write(json.dumps({"op": op, **args}) + "\n")
        self._stdin.flush()
        if not self._selector.select(_ANSWER_TIMEOUT):
            pytest.fail(f"no answer to {op!r} within {_ANSWER_TIMEOUT}s")
        line = self._stdout.readline()
        assert line, f"the driver ended (exit {self.proc.poll()}) before answering {op!r}"
        answer: dict[str, Any] = json.loads(line)
        assert "failure" not in answer, answer["failure"]
        return answer["value"]

    def stop(self) -> int:
        self("stop")
        return self.proc.wait(10)


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    """The lab of test_block_backends: a second scanner address and a server in the target."""
    with banning_lab("psl") as lab:
        yield lab


@pytest.fixture
def driver(lab: netns.Lab) -> Iterator[Driver]:
    running = Driver(lab)
    yield running
    if running.proc.poll() is None:
        Lab.stop(running.proc)


def kernel_set(lab: netns.Lab, name: str) -> set[str]:
    """The addresses in one of the backend's sets, as the nft program shows them."""
    done = lab.run(lab.target, ["nft", "-j", "list", "set", "inet", "portsentinel", name])
    items = json.loads(done.stdout)["nftables"]
    elements = next(item["set"].get("elem", []) for item in items if "set" in item)
    return {e["elem"]["val"] if isinstance(e, dict) else e for e in elements}


def test_in_process_backend_blocks_unblocks_and_repairs(lab: netns.Lab, driver: Driver) -> None:
    driver("start")
    expect(lab, dropped=[], passing=[BANNED4, OTHER4, BANNED6, OTHER6])

    details = [driver("block", address=a, timeout=3600) for a in (BANNED4, BANNED6)]
    assert kernel_set(lab, "ban4") == {BANNED4}
    assert kernel_set(lab, "ban6") == {BANNED6}
    expect(lab, dropped=[BANNED4, BANNED6], passing=[OTHER4, OTHER6])
    found = driver("check")
    assert found["intact"], found["problems"]
    assert set(found["present"]) == {BANNED4, BANNED6}

    for detail in details:
        driver("unblock", detail=detail)
        driver("unblock", detail=detail)  # idempotent
    assert kernel_set(lab, "ban4") == set()
    assert kernel_set(lab, "ban6") == set()
    expect(lab, dropped=[], passing=[BANNED4, OTHER4, BANNED6, OTHER6])

    driver("block", address=BANNED4, timeout=600)
    lab.run(lab.target, ["nft", "flush", "ruleset"])  # another tool wipes everything
    expect(lab, dropped=[], passing=[BANNED4, OTHER4])
    broken = driver("check")  # the context's cache must not hide the flush
    assert broken["problems"] == ["table inet portsentinel is missing"]
    refused = driver("block_refused", address="198.18.0.99")
    assert refused is not None
    assert refused["degraded"] is not None

    assert driver("repair", addresses=[BANNED4, BANNED6], timeout=600) == ["ok", "ok"]
    fixed = driver("check")
    assert fixed["intact"], fixed["problems"]
    assert fixed["degraded"] is None
    assert kernel_set(lab, "ban4") == {BANNED4}
    expect(lab, dropped=[BANNED4, BANNED6], passing=[OTHER4, OTHER6])

    runs = driver("runs")
    print(
        f"\nlibnft: commands in-process {runs['in_process']}, as a subprocess {runs['subprocess']}"
    )
    assert runs == {"in_process": runs["in_process"], "subprocess": 0, "reason": None}
    assert runs["in_process"] >= 15
    assert driver.stop() == 0


def test_in_process_and_subprocess_bans_are_all_in_the_set(driver: Driver) -> None:
    driver("start")
    count, batch = 200, 10_000
    lines = [f"\nblock() latency over {count} bans, each in the set when block() returned:"]
    medians = {}
    for in_process, net, label in ((True, 0, "in-process"), (False, 10, "subprocess")):
        found = driver("latency", count=count, in_process=in_process, net=net)
        assert found["missing"] == []
        assert found["runner"] == (["LibnftRunner", 0] if in_process else ["Runner", None])
        ms = sorted(s * 1000 for s in found["seconds"])
        medians[label] = statistics.median(ms)
        p95 = statistics.quantiles(ms, n=20)[18]
        lines.append(
            f"  {label:10}  median {medians[label]:.3f} ms  p95 {p95:.3f} ms  max {ms[-1]:.3f} ms"
        )
    lines.append(f"batch of {batch} bans in one block_many():")
    for in_process, label in ((True, "in-process"), (False, "subprocess")):
        found = driver("batch", count=batch, in_process=in_process, net=100)
        assert (found["refused"], found["present"]) == (0, batch)
        rate = batch / found["seconds"]
        lines.append(f"  {label:10}  {found['seconds']:.3f} s  {rate:,.0f} bans/s")
    print("\n".join(lines))  # figures only: speed goals live in benchmarks, not in assertions
    assert driver.stop() == 0
