"""The loop's short time slice: the ``sched_attr`` it sends, and the kernel taking it for the
calling thread only (a thread of the test's own, so the test runner keeps its slice)."""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import threading

import pytest

from portsentinel.daemon.sched import SLICE, attr, shorten_slice

_GETATTR = {"x86_64": 315, "aarch64": 275}  # __NR_sched_getattr


def test_the_attributes_are_sched_other_with_the_slice_and_the_nice_value_kept() -> None:
    data = attr(100_000, nice=5)
    size, policy, flags, nice, priority, runtime, deadline, period, umin, umax = struct.unpack(
        "=IIQiIQQQII", data
    )
    assert size == len(data) == 56
    assert (policy, flags, nice, priority) == (0, 0, 5, 0)
    assert (runtime, deadline, period, umin, umax) == (100_000, 0, 0, 0, 0)


def _slice_of_this_thread() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    data = ctypes.create_string_buffer(56)
    assert libc.syscall(_GETATTR[platform.machine()], 0, data, 56, 0) == 0
    return int(struct.unpack_from("=IIQiIQ", data.raw)[5])


def _kernel() -> tuple[int, int]:
    major, minor = platform.release().split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


@pytest.mark.skipif(platform.machine() not in _GETATTR, reason="sched_getattr's number")
@pytest.mark.skipif(_kernel() < (6, 12), reason="a task's own slice came with Linux 6.12")
def test_the_kernel_takes_the_slice_for_the_calling_thread_only() -> None:
    before = _slice_of_this_thread()
    seen: dict[str, object] = {}

    def loop_thread() -> None:
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
        seen["result"] = shorten_slice()
        seen["slice"] = _slice_of_this_thread()
        seen["nice after"] = os.getpriority(os.PRIO_PROCESS, 0)

    thread = threading.Thread(target=loop_thread)
    thread.start()
    thread.join()
    assert seen["result"] is None
    assert seen["slice"] == round(SLICE * 1e9)
    assert seen["nice after"] == seen["nice"]
    assert _slice_of_this_thread() == before  # this thread kept its own


def test_an_unknown_architecture_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "pdp11")
    assert shorten_slice() == "no sched_setattr known on pdp11"
