"""Timestamps along a scanner's first ban inside a running daemon, for ``bench/scan_trace.py``.

Python imports ``sitecustomize`` at start from the first directory of ``sys.path`` that has
one; ``bench/scan_ban.py --trace`` puts this directory first in the daemons' PYTHONPATH and sets
``PST_TRACE=FILE``. In a ``portsentinel run`` process with that variable the hook wraps a few
functions of the loop (any other process is left alone) and, at exit, writes FILE: one JSON
object of lists of ``[label, nanoseconds, ...]`` by ``time.time_ns()`` (CLOCK_REALTIME, the
clock of the ring frames' and tcpdump's timestamps):

- ``wake``: a turn of the ring begins (the selector said it is readable, or a linger ended);
- ``pkt``: per frame handed to the loop: the frame's kernel timestamp, entry, decoded,
  judged, done, and how many frames the turn handled before it;
- ``send``: ``FirstBan.take`` (the loop's way to the kernel for a ban), with how many it holds;
- ``nl``: one nfnetlink transaction: entry, the batch built, the kernel's acknowledgement;
- ``flush``: the turn's end (``Outputs.flush``), entry and exit;
- ``gc``: a collection's start and stop, with its generation;
- ``span``: with ``PST_TRACE_SPANS=module:Class.function,...``, the first calls of each.

The first ``LIMIT`` frames and every other record are kept. The wrappers cost about a
microsecond a call; what they time is otherwise the daemon's code unchanged.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import struct
import sys
import time
from typing import Any

LIMIT = 4000  # frames recorded (a scan's first ones)
SPANS = 20  # calls recorded of each function named in PST_TRACE_SPANS
_FRAME_NET = 80  # tpacket2_hdr + sockaddr_ll, aligned: where a frame's packet starts


def _install(path: str) -> None:
    from portsentinel.block import nfnetlink  # noqa: PLC0415 - the daemon's own modules
    from portsentinel.daemon import outputs, pipeline  # noqa: PLC0415
    from portsentinel.detect import detector  # noqa: PLC0415
    from portsentinel.respond import first_ban  # noqa: PLC0415

    now = time.time_ns
    records: dict[str, list[list[Any]]] = {"wake": [], "pkt": [], "send": [], "nl": [],
                                            "flush": [], "gc": []}  # fmt: skip
    turn = [0]  # frames handled in the current turn
    head = struct.Struct("=HII")  # tp_net, tp_sec, tp_nsec at offset 14

    on_ring, ring_back = pipeline.Pipeline._on_ring, pipeline.Pipeline._ring_back
    on_packet = pipeline.Pipeline._on_packet
    from portsentinel.decode import decode_ip  # noqa: PLC0415 - as the pipeline imports it

    def traced_on_ring(self: Any) -> None:
        records["wake"].append(["ring", now()])
        turn[0] = 0
        on_ring(self)

    def traced_ring_back(self: Any) -> None:
        records["wake"].append(["linger", now()])
        turn[0] = 0
        ring_back(self)

    marks: list[int] = []

    def traced_decode(ring: memoryview, start: int, length: int) -> Any:
        pkt = decode_ip(ring, start, length)
        marks.append(now())
        return pkt

    feed = detector.Detector.feed

    def traced_feed(self: Any, pkt: Any, at: float) -> Any:
        decisions = feed(self, pkt, at)
        marks.append(now())
        return decisions

    def traced_on_packet(self: Any, ring: memoryview, start: int, length: int, ifx: int) -> None:
        pkts = records["pkt"]
        if len(pkts) >= LIMIT:
            on_packet(self, ring, start, length, ifx)
            return
        entry = now()
        net, sec, nsec = head.unpack_from(ring, start - _FRAME_NET + 14)
        stamp = sec * 1_000_000_000 + nsec if net == _FRAME_NET else 0
        marks.clear()
        on_packet(self, ring, start, length, ifx)
        done = now()
        decoded = marks[0] if marks else 0
        judged = marks[1] if len(marks) > 1 else 0
        pkts.append(["pkt", stamp, entry, decoded, judged, done, turn[0]])
        turn[0] += 1

    _patch(pipeline.Pipeline, "_on_ring", traced_on_ring)
    _patch(pipeline.Pipeline, "_ring_back", traced_ring_back)
    _patch(pipeline.Pipeline, "_on_packet", traced_on_packet)
    _patch(pipeline, "decode_ip", traced_decode)
    _patch(detector.Detector, "feed", traced_feed)

    take = first_ban.FirstBan.take

    def traced_take(self: Any, *args: Any) -> None:
        records["send"].append(["take", now(), len(self._held)])
        take(self, *args)

    _patch(first_ban.FirstBan, "take", traced_take)

    add, build = nfnetlink.ElementWriter._add, nfnetlink.batch

    def traced_batch(messages: Any, first_seq: int) -> bytes:
        data = build(messages, first_seq)
        records["nl"].append(["built", now(), len(messages), len(data)])
        return data

    def traced_add(self: Any, set_name: str, elements: Any, **kw: Any) -> None:
        records["nl"].append(["enter", now(), set_name, len(elements), kw.get("mirrored")])
        try:
            add(self, set_name, elements, **kw)
        finally:
            records["nl"].append(["acked", now()])

    _patch(nfnetlink, "batch", traced_batch)
    _patch(nfnetlink.ElementWriter, "_add", traced_add)
    template = getattr(nfnetlink, "Template", None)  # the first ban's datagram built once
    one = getattr(nfnetlink.ElementWriter, "_add_one", None)
    if template is not None and one is not None:
        fill = template.fill

        def traced_fill(self: Any, key: bytes, first_seq: int) -> bytes:
            data: bytes = fill(self, key, first_seq)
            records["nl"].append(["built", now(), len(self.heads), len(data)])
            return data

        def traced_one(self: Any, set_name: str, key: bytes, *args: Any, **kw: Any) -> None:
            records["nl"].append(["enter", now(), set_name, 1, kw.get("mirrored")])
            try:
                one(self, set_name, key, *args, **kw)
            finally:
                records["nl"].append(["acked", now()])

        _patch(template, "fill", traced_fill)
        _patch(nfnetlink.ElementWriter, "_add_one", traced_one)

    flush = outputs.Outputs.flush

    def traced_flush(self: Any, *, everything: bool = False) -> None:
        records["flush"].append(["flush", now()])
        flush(self, everything=everything)
        records["flush"].append(["flushed", now()])

    _patch(outputs.Outputs, "flush", traced_flush)

    def on_gc(phase: str, info: dict[str, int]) -> None:
        records["gc"].append([phase, now(), info.get("generation", -1)])

    gc.callbacks.append(on_gc)
    records["span"] = []
    for name in filter(None, os.environ.get("PST_TRACE_SPANS", "").split(",")):
        _span(name, records["span"], now)

    def write() -> None:
        with open(path, "w") as out:
            json.dump(records, out)

    atexit.register(write)


def _patch(owner: object, name: str, value: object) -> None:
    setattr(owner, name, value)


def _span(name: str, out: list[list[Any]], now: Any) -> None:
    """Wrap ``module:Class.function`` (or ``module:function``) so its first SPANS calls are
    recorded as ``[name, entry, exit]``."""
    import importlib  # noqa: PLC0415

    module_name, _colon, attr = name.partition(":")
    owner: Any = importlib.import_module(module_name)
    *path, last = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    inner = getattr(owner, last)
    calls = [0]

    def traced(*args: Any, **kwargs: Any) -> Any:
        if calls[0] >= SPANS:
            return inner(*args, **kwargs)
        calls[0] += 1
        entry = now()
        try:
            return inner(*args, **kwargs)
        finally:
            out.append([attr, entry, now()])

    setattr(owner, last, traced)


def _wanted() -> str | None:
    path = os.environ.get("PST_TRACE")
    argv = getattr(sys, "orig_argv", [])
    if path and "portsentinel" in argv and "run" in argv:
        return path
    return None


_path = _wanted()
if _path is not None:
    _install(_path)
