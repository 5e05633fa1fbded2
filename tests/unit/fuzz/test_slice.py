"""A bounded slice of the fuzz harnesses (``fuzz/``) for every CI run.

Each harness's ``test_one_input`` runs on its whole seed corpus plus inputs mutated from it
by a seeded in-process mutator, so the slice is the same on every run and needs no atheris:
the invariant checks are the harnesses' own. The counters the harnesses keep show that the
inputs reached what the slice is for (decisions of every action, evictions, damaged
captures, configs that load and ones that do not). Where atheris is installed, a short
libFuzzer run of each harness checks the entry points as ``fuzz/run.py`` uses them.
"""

from __future__ import annotations

import importlib.util
import random
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[3] / "fuzz"
sys.path.insert(0, str(FUZZ))

import fuzz_config  # noqa: E402 - found through the path set just above
import fuzz_frames  # noqa: E402
import fuzz_pcap  # noqa: E402
import make_corpus  # noqa: E402
from fuzzing import Violation  # noqa: E402

from portsentinel.decode import decoder_for_linktype  # noqa: E402
from portsentinel.errors import CaptureError, DecodeError  # noqa: E402
from portsentinel.model import Action, Decision, Mode, Packet, Proto, Reason, ScanKind  # noqa: E402

# Bytes that decide branches in these formats: IP versions and header lengths, protocol and
# extension-header numbers, flag bits, and the edges of every range.
INTERESTING = (0, 1, 2, 4, 5, 6, 8, 17, 20, 40, 43, 44, 50, 51, 59, 60, 0x40, 0x45, 0x46,
               0x60, 0x7F, 0x80, 0x86, 0xDD, 0xFE, 0xFF)  # fmt: skip


def mutate(rng: random.Random, seed: bytes, others: list[bytes]) -> bytes:
    """One to four of libFuzzer's simplest mutations, chosen by ``rng``."""
    data = bytearray(seed)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        where = rng.randrange(len(data)) if data else 0
        if op == 0 and data:
            data[where] ^= 1 << rng.randrange(8)
        elif op == 1 and data:
            data[where] = rng.choice(INTERESTING)
        elif op == 2:
            data[where:where] = bytes([rng.randrange(256)] * rng.randint(1, 8))
        elif op == 3 and data:
            del data[where : where + rng.randint(1, 16)]
        elif op == 4:
            del data[rng.randint(0, len(data)) :]
        elif op == 5:
            other = rng.choice(others)
            data[where:] = other[rng.randint(0, len(other)) :]
        elif len(data) >= where + 2:
            value = rng.choice((0, 1, 0x7FFF, 0x8000, 0xFFFF, rng.randrange(0x10000)))
            data[where : where + 2] = struct.pack("!H", value)
    return bytes(data)


def inputs(seeds: list[bytes], count: int, rng_seed: int) -> Iterator[bytes]:
    """The seeds, then ``count`` inputs: mostly mutated seeds, some plain random bytes."""
    yield from seeds
    rng = random.Random(rng_seed)
    for index in range(count):
        if index % 10 == 9:
            yield rng.randbytes(rng.randrange(64))
        else:
            yield mutate(rng, rng.choice(seeds), seeds)


def run_slice(test_one_input: Callable[[bytes], None], seeds: list[bytes], count: int) -> None:
    for data in inputs(seeds, count, rng_seed=6):
        try:
            test_one_input(data)
        except Exception as exc:
            raise AssertionError(f"input {data.hex()} broke the harness: {exc!r}") from exc


# --- the harnesses on the slice -------------------------------------------------------------


def test_supported_linktypes_are_every_linktype_the_decoder_takes() -> None:
    taken = []
    for linktype in range(0x10000):
        try:
            decoder_for_linktype(linktype)
        except CaptureError:
            continue
        taken.append(linktype)
    assert tuple(taken) == fuzz_frames.SUPPORTED_LINKTYPES


def test_frames_slice_keeps_every_invariant() -> None:
    world = fuzz_frames.reset()
    run_slice(fuzz_frames.test_one_input, make_corpus.frame_seeds(), 20_000)
    assert world.packets > 1_000
    assert world.decode_errors > 1_000
    assert world.ignored_frames > 100
    assert all(world.decisions[action] > 0 for action in Action)
    assert world.kinds[ScanKind.FRAGMENT] > 0
    assert world.kinds[ScanKind.UDP] > 0
    assert world.evicted() > 100
    assert world.expired() > 100
    assert sum(v.reloads for v in world.variants) > 0
    # The gated detectors held records, muted sources and counted the muted repeats.
    assert sum(v.detector.stats.held for v in world.variants) > 100
    assert sum(sum(v.detector.take_held().values()) for v in world.variants) > 0


def test_config_slice_keeps_every_invariant() -> None:
    fuzz_config.OUTCOMES.clear()
    run_slice(fuzz_config.test_one_input, make_corpus.config_seeds(), 3_000)
    for target in fuzz_config.TARGETS:
        assert fuzz_config.OUTCOMES[target, "ok"] > 0, target
        assert fuzz_config.OUTCOMES[target, "error"] > 0, target


def test_pcap_slice_keeps_every_invariant() -> None:
    fuzz_pcap.OUTCOMES.clear()
    run_slice(fuzz_pcap.test_one_input, make_corpus.pcap_seeds(), 10_000)
    assert fuzz_pcap.OUTCOMES["clean"] > 100
    assert fuzz_pcap.OUTCOMES["damaged"] > 100
    assert fuzz_pcap.OUTCOMES["not a capture"] > 100


# --- the checks catch what they are for -----------------------------------------------------

SYN: Packet = (6, bytes([198, 18, 0, 2]), bytes([198, 18, 0, 1]), 40000, 22, 0x02, 64, False, 0)


def _decision(**changes: object) -> Decision:
    fields: dict[str, object] = {
        "time": 1.0,
        "src": "198.18.0.2",
        "dst": "198.18.0.1",
        "proto": Proto.TCP,
        "port": 22,
        "kind": ScanKind.SYN,
        "action": Action.BLOCK,
        "reason": Reason.TRIGGERED,
        "flags": 0x02,
        "mode": Mode.ATCP,
        "rule": "scan_trigger",
        "hits": 1,
        "ports_seen": 1,
        "first": True,
    }
    fields.update(changes)
    return Decision(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"reason": Reason.BELOW_TRIGGER},  # an action without the trigger
        {"action": Action.IGNORED},  # the trigger without an action
        {"action": Action.COMMAND},  # not the configured level
        {"src": "198.18.0.9"},
        {"dst": "not an address"},
        {"port": 23},
        {"kind": ScanKind.FIN},
        {"first": False},
        {"ports_seen": 99},
        {"time": 2.0},
        {"reason": Reason.IGNORE_LIST, "action": Action.IGNORED, "first": False},  # counted
    ],
)
def test_check_decision_refuses_a_bad_decision(changes: dict[str, object]) -> None:
    variant = fuzz_frames.build_variants()[0]
    fuzz_frames.check_decision(_decision(), SYN, 1.0, variant)  # the good one passes
    with pytest.raises((Violation, ValueError)):
        fuzz_frames.check_decision(_decision(**changes), SYN, 1.0, variant)


@pytest.mark.parametrize(
    "packet",
    [
        (1, *SYN[1:]),
        (6, b"\x01\x02\x03", *SYN[2:]),
        (*SYN[:3], 70000, *SYN[4:]),
        (17, *SYN[1:]),  # UDP with TCP flags
        (*SYN[:7], 1, 0),  # options not a bool
        (*SYN[:8], 2),  # an overlap with ports
    ],
)
def test_check_packet_refuses_a_bad_packet(packet: Packet) -> None:
    fuzz_frames.check_packet(SYN)
    with pytest.raises(Violation):
        fuzz_frames.check_packet(packet)


def test_decode_both_lets_only_decode_error_through_and_compares_views() -> None:
    def broken(buf: bytes | memoryview) -> Packet | None:
        raise IndexError("read past the buffer")

    def two_faced(buf: bytes | memoryview) -> Packet | None:
        return SYN if isinstance(buf, bytes) else None

    def refusing(buf: bytes | memoryview) -> Packet | None:
        raise DecodeError("junk")

    with pytest.raises(IndexError):
        fuzz_frames.decode_both(broken, b"x")
    with pytest.raises(Violation):
        fuzz_frames.decode_both(two_faced, b"x")
    with pytest.raises(DecodeError):
        fuzz_frames.decode_both(refusing, b"x")


# --- libFuzzer itself, where atheris is installed -------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
@pytest.mark.parametrize("harness", ["frames", "config", "pcap"])
def test_libfuzzer_runs_each_harness(harness: str, tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    make_corpus.write_corpus(seeds)
    found = tmp_path / "found"
    found.mkdir()
    done = subprocess.run(
        [sys.executable, str(FUZZ / f"fuzz_{harness}.py"), "-runs=3000", "-seed=1",
         "-max_len=1024", f"-artifact_prefix={tmp_path}/", str(found), str(seeds / harness)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Done 3000 runs" in done.stderr
    assert not list(tmp_path.glob("crash-*"))
