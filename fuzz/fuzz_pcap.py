"""Fuzz the capture-file reader: file bytes in, frames or a ``CaptureError`` out.

Run: ``python fuzz/fuzz_pcap.py [libFuzzer options] [CORPUS...]`` (needs ``atheris``).

Each input is written to a file (``open_capture`` takes a path and maps the file), opened,
iterated to the end, then iterated again and closed. Checked:

- only ``CaptureError`` escapes ``open_capture`` and the iteration;
- every frame is ``(float, int, bytes)`` with a time within 1970-9999 (what a replay's event
  can show), a 16-bit link type and no more bytes than the file holds;
- a ``CorruptCaptureError`` counts exactly the frames yielded before it and points inside
  the file;
- a second iteration yields the same frames and ends the same way (the reader keeps no
  state between iterations), and iterating a closed reader is a ``CaptureError``;
- every frame of a supported link type decodes to a packet, ``None`` or ``DecodeError``.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from fuzzing import require, run_libfuzzer

from portsentinel.capture.pcapfile import CaptureReader, CorruptCaptureError, Frame, open_capture
from portsentinel.decode import decoder_for_linktype
from portsentinel.errors import CaptureError, DecodeError

# Memory-backed when the machine has one: a file is written for every input.
_SHM: Final = "/dev/shm" if Path("/dev/shm").is_dir() else None
_FOLDER: Final = Path(tempfile.mkdtemp(prefix="fuzz-pcap-", dir=_SHM))
atexit.register(shutil.rmtree, _FOLDER, ignore_errors=True)
PATH: Final = _FOLDER / "input.pcap"
LAST_SECOND: Final = 253_402_300_799  # 9999-12-31T23:59:59Z

Outcome = tuple[list[Frame], str | None]
# "not a capture" | "clean" | "damaged" -> inputs: what a run reached (the CI slice checks it).
OUTCOMES: Counter[str] = Counter()


def _walk(reader: CaptureReader, size: int) -> Outcome:
    """Every frame, and how the iteration ended (None: cleanly)."""
    frames: list[Frame] = []
    try:
        for frame in reader:
            frames.append(frame)
    except CorruptCaptureError as exc:
        require(exc.packets == len(frames), f"{exc.packets} packets claimed, {len(frames)} read")
        require(0 <= exc.offset <= size, f"offset {exc.offset} outside a {size}-byte file")
        return frames, str(exc)
    except CaptureError as exc:
        return frames, f"capture error: {exc}"
    return frames, None


def _check_frame(frame: Frame, size: int) -> None:
    require(type(frame) is tuple and len(frame) == 3, f"not a frame: {frame!r}")
    ts, linktype, data = frame
    require(type(ts) is float and 0 <= ts <= LAST_SECOND, f"timestamp {ts!r}")
    require(type(linktype) is int and 0 <= linktype <= 0xFFFF, f"link type {linktype!r}")
    require(type(data) is bytes and len(data) <= size, "frame bytes")
    try:
        decoder = decoder_for_linktype(linktype)
    except CaptureError:
        return
    with contextlib.suppress(DecodeError):
        decoder(data)


def test_one_input(data: bytes) -> None:
    """The libFuzzer entry point."""
    PATH.write_bytes(data)
    try:
        reader = open_capture(PATH)
    except CaptureError:
        OUTCOMES["not a capture"] += 1
        return
    with reader:
        first = _walk(reader, len(data))
        OUTCOMES["clean" if first[1] is None else "damaged"] += 1
        for frame in first[0]:
            _check_frame(frame, len(data))
        require(_walk(reader, len(data)) == first, "a second iteration differs")
    try:
        iter(reader)
    except CaptureError:
        return
    raise AssertionError("a closed reader iterated")


def main(argv: Sequence[str]) -> None:
    run_libfuzzer(test_one_input, argv)


if __name__ == "__main__":
    main(sys.argv)
