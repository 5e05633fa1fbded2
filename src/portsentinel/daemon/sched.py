"""The detection loop asks the scheduler for a short time slice, so that a probe wakes it soon.

Where a scan's first ban waited (``bench/scan_ban.py --trace``, Linux 6.18, other jobs on the
daemon's CPU): now and then 3-7 ms between the probe's arrival in the ring and the loop's
first instruction, while another task finished its slice. Linux's fair scheduler (EEVDF,
6.6 and later) gives each task a virtual deadline one slice ahead; from 6.12 a task may ask
for its own slice (``sched_setattr``'s ``sched_runtime`` under SCHED_OTHER, 0.1-100 ms, no
privilege needed), and a woken task whose deadline comes first runs at once. A shorter slice
brings no more CPU time than the task's fair share: the loop only gets it sooner and gives it
back sooner.

Only the calling thread is changed (the loop's; threads started before keep theirs). Older
kernels ignore the field; where the system call is missing or refused (not Linux, another
architecture, a seccomp filter) nothing changes and ``shorten_slice`` says why.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from typing import Final

SLICE: Final = 0.0001  # seconds: the shortest the kernel takes (it clamps to 0.1-100 ms)
# struct sched_attr (SCHED_ATTR_SIZE_VER1): size, policy, flags, nice, priority, runtime,
# deadline, period, util_min, util_max
_ATTR: Final = struct.Struct("=IIQiIQQQII")
_SCHED_OTHER: Final = 0
_SETATTR: Final = {"x86_64": 314, "aarch64": 274}  # __NR_sched_setattr


def attr(slice_ns: int, nice: int = 0) -> bytes:
    """A ``sched_attr`` for SCHED_OTHER at ``nice`` with a slice of ``slice_ns`` (pure)."""
    return _ATTR.pack(_ATTR.size, _SCHED_OTHER, 0, nice, 0, slice_ns, 0, 0, 0, 0)


def shorten_slice(seconds: float = SLICE) -> str | None:
    """Ask for a slice of ``seconds`` for the calling thread, its nice value kept; None when
    the kernel took it, else why not."""
    number = _SETATTR.get(platform.machine())
    if number is None:
        return f"no sched_setattr known on {platform.machine()}"
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        data = ctypes.create_string_buffer(attr(round(seconds * 1e9), nice), _ATTR.size)
        if libc.syscall(number, 0, data, 0) != 0:
            return os.strerror(ctypes.get_errno())
    except (OSError, AttributeError) as exc:
        return str(exc)
    return None
