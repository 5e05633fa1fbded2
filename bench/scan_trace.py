"""Where a first ban's time goes inside the daemon: ``bench/scan_ban.py --trace`` reads the
timestamps ``bench/tracehook/sitecustomize.py`` wrote during one scan and splits the first
probe -> ban acknowledgement into stages (milliseconds, all by CLOCK_REALTIME):

- ``ring``: the first probe on the veth (tcpdump) to its frame's timestamp in the ring;
- ``wake``: the frame that decided the ban (its ring timestamp) to the start of the loop turn
  that read it (the selector's wake-up, or a linger's end);
- ``before``: that turn's start to the deciding frame's handler: the frames read before it in
  the same turn (``ahead`` counts them);
- ``decode``, ``detect``: the handler's decoding and the detector's ``feed``;
- ``respond``: ``feed``'s return to ``FirstBan._send`` (the decision's outputs before the ban:
  the request, its evidence);
- ``build``: ``_send``'s entry to the nfnetlink batch built;
- ``kernel``: the batch built to the kernel's acknowledgement (the send, the transaction over
  the inet and netdev tables, the answer);
- ``total``: the first probe on the veth to the acknowledgement;
- ``decisive``: how many of the scan's frames the loop had read when the deciding one came
  (1: the first probe decided);
- ``gc``: collections that ran between the first probe and the acknowledgement.

Pure functions of the parsed trace; no I/O but ``load``.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

STAGES = ("ring", "wake", "before", "decode", "detect", "respond", "build", "kernel", "total")
COUNTS = ("ahead", "decisive", "gc")
NS = 1e-6  # nanoseconds -> milliseconds


def load(path: Path) -> dict[str, list[list[Any]]] | None:
    """The trace a daemon wrote at exit; None if it wrote none."""
    try:
        data: dict[str, list[list[Any]]] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def breakdown(trace: Mapping[str, Sequence[Sequence[Any]]], first_probe: float | None
              ) -> dict[str, float] | None:  # fmt: skip
    """The stages (see the module) of the trace's first ban; None when it holds no first ban
    sent by the loop, or no frame that carried it."""
    sends = trace.get("send", [])
    if not sends:
        return None
    sent_at = sends[0][1]
    pkts = trace.get("pkt", [])
    index = next((i for i, p in enumerate(pkts) if p[2] <= sent_at <= p[5]), None)
    if index is None:
        return None
    _label, stamp, entry, decoded, judged, _done, ahead = pkts[index][:7]
    wakes = [w[1] for w in trace.get("wake", []) if w[1] <= entry]
    built = next((n[1] for n in trace.get("nl", []) if n[0] == "built" and n[1] >= sent_at), None)
    acked = next((n[1] for n in trace.get("nl", []) if n[0] == "acked" and n[1] >= sent_at), None)
    if built is None or acked is None:
        return None
    woke = wakes[-1] if wakes else entry
    probe_ns = first_probe * 1e9 if first_probe is not None else None
    first_stamp = pkts[0][1] if pkts else None
    out = {
        "ring": (first_stamp - probe_ns) * NS if probe_ns and first_stamp else float("nan"),
        "wake": (woke - stamp) * NS if stamp else float("nan"),
        "before": (entry - woke) * NS,
        "decode": (decoded - entry) * NS if decoded else float("nan"),
        "detect": (judged - decoded) * NS if judged and decoded else float("nan"),
        "respond": (sent_at - judged) * NS if judged else float("nan"),
        "build": (built - sent_at) * NS,
        "kernel": (acked - built) * NS,
        "total": (acked - probe_ns) * NS if probe_ns else float("nan"),
        "ahead": float(ahead),
        "decisive": float(index + 1),
    }
    start = probe_ns if probe_ns else stamp
    out["gc"] = float(
        sum(1 for g in trace.get("gc", []) if g[0] == "start" and start <= g[1] <= acked)
    )
    return out


def line(stages: Mapping[str, float]) -> str:
    """One scan's stages, in the order of STAGES then COUNTS."""
    parts = [f"{name} {stages[name]:.3f}" for name in STAGES]
    parts += [f"{name} {stages[name]:g}" for name in COUNTS]
    return "trace (ms): " + ", ".join(parts)


def medians(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The median of each stage and count over several scans (NaN ignored)."""
    out = {}
    for name in (*STAGES, *COUNTS):
        values = [r[name] for r in rows if r[name] == r[name]]
        out[name] = statistics.median(values) if values else float("nan")
    return out
