"""The pure parts of ``bench/scan_trace.py`` (a first ban's stages from a daemon's trace, on a
trace built here with known times) and ``bench/scan_ban.py``'s rows with ``--before``."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "e2e"))

import scan_trace
from scan_ban import Row, plan

T0 = 1_800_000_000_000_000_000  # ns: the first probe on the veth


def us(n: float) -> int:
    return T0 + int(n * 1000)


def trace() -> dict[str, list[list[object]]]:
    return {
        "wake": [["ring", us(150)]],
        "pkt": [
            ["pkt", us(10), us(200), us(215), us(600), us(900), 0],  # the first probe decided
            ["pkt", us(40), us(905), us(910), us(930), us(940), 1],
        ],
        "send": [["take", us(660), 0]],
        "nl": [
            ["enter", us(670), "ban4", 1, False],
            ["built", us(700), 3, 160],
            ["acked", us(780)],
        ],
        "flush": [],
        "gc": [["start", us(500), 0], ["stop", us(520), 0], ["start", us(2000), 0]],
    }


def test_the_stages_of_a_first_ban_add_up_from_probe_to_acknowledgement() -> None:
    stages = scan_trace.breakdown(trace(), T0 / 1e9)
    assert stages is not None
    expected = {"ring": 0.010, "wake": 0.140, "before": 0.050, "decode": 0.015, "detect": 0.385,
                "respond": 0.060, "build": 0.040, "kernel": 0.080, "total": 0.780}  # fmt: skip
    for name, value in expected.items():
        assert math.isclose(stages[name], value, abs_tol=2e-3), name
    parts = sum(stages[n] for n in scan_trace.STAGES if n not in ("total",))
    assert math.isclose(parts, stages["total"], abs_tol=2e-3)  # the stages leave no gap
    assert (stages["ahead"], stages["decisive"], stages["gc"]) == (0, 1, 1)
    assert scan_trace.line(stages).startswith("trace (ms): ring 0.010, wake 0.140")


def test_a_trace_without_a_loop_ban_has_no_stages() -> None:
    empty = trace() | {"send": []}
    assert scan_trace.breakdown(empty, T0 / 1e9) is None
    assert scan_trace.breakdown(trace() | {"nl": []}, T0 / 1e9) is None


def test_medians_skip_what_a_scan_could_not_time() -> None:
    one = scan_trace.breakdown(trace(), T0 / 1e9)
    assert one is not None
    other = dict(one, ring=math.nan, total=2.0)
    got = scan_trace.medians([one, other])
    assert math.isclose(got["ring"], one["ring"])
    assert math.isclose(got["total"], (one["total"] + 2.0) / 2)


def test_before_rows_follow_each_portsentinel_row_and_not_1_2() -> None:
    args = argparse.Namespace(only="portsentry12,default,debian", events="off",
                              kinds="sS", no_ipv6=True, before="/old/src")  # fmt: skip
    rows, _scans = plan(args)
    old = str(Path("/old/src").resolve())
    assert rows == [Row("portsentry12"), Row("default"), Row("default", False, old),
                    Row("debian"), Row("debian", False, old)]  # fmt: skip
    assert rows[2].name == "default (before)"
