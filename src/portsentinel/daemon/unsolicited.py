"""The daemon's second packet source: ACK-bearing segments of no connection, from NFLOG.

With ACK_PROBES (the default) and a stealth TCP mode, the response worker's conntrack chain
logs them to ``model.UNSOLICITED_GROUP`` (``block/table.py``) and the loop reads them here
(``capture/nflog.py``): each is decoded and judged by ``Detector.feed_unsolicited``, with the
host's socket table asked last whether any TCP socket uses the port. Opening the group can
fail (no privilege, another program reads it): the daemon says so and runs without it.
"""

from __future__ import annotations

from collections.abc import Callable

from portsentinel.alert.sinks import LogSink
from portsentinel.block.table import INVALID_PREFIX
from portsentinel.capture.nflog import NflogReader
from portsentinel.config.setup import Setup
from portsentinel.decode import decode_ip
from portsentinel.detect.detector import Detector
from portsentinel.errors import CaptureError, DecodeError
from portsentinel.model import UNSOLICITED_GROUP, Decision, Packet, Proto


def wanted(setup: Setup) -> bool:
    """Do these settings ask for ACK-bearing probes (ACK_PROBES and a stealth TCP mode)?"""
    mode = setup.tcp_mode
    return setup.settings.ack_probes and mode is not None and mode.stealth


def open_reader(setup: Setup, log: LogSink) -> NflogReader | None:
    """The group's reader, or None (not wanted, or it cannot be read: said in the log)."""
    if not wanted(setup):
        return None
    try:
        return NflogReader(UNSOLICITED_GROUP)
    except CaptureError as exc:
        log.line(f"adminalert: WARNING: ACK, Window and Maimon scans go unseen: {exc}")
        return None


_INVALID = INVALID_PREFIX.encode()


class UnsolicitedSource:
    """Reads the group and feeds the detector; ``decode_errors`` counts what did not decode,
    ``known`` the segments conntrack called invalid that belong to a connection it tracks
    (late, or out of its window: ``knows(pkt)``, asked only of those)."""

    def __init__(
        self,
        reader: NflogReader,
        detector: Detector,
        emit: Callable[[list[Decision]], None],
        now: Callable[[], float],
        knows: Callable[[Packet], bool],
    ) -> None:
        self.reader = reader
        self._detector = detector
        self._emit = emit
        self._now = now
        self._knows = knows
        self.decode_errors = 0
        self.known = 0

    def fileno(self) -> int:
        return self.reader.fileno()

    def on_ready(self) -> None:
        self.reader.read(self._on_packet)

    def _on_packet(self, packet: memoryview, prefix: bytes) -> None:
        try:
            pkt = decode_ip(packet, 0, len(packet))
        except DecodeError:
            self.decode_errors += 1
            return
        if pkt is not None and pkt[0] == Proto.TCP:
            if prefix == _INVALID and self._knows(pkt):
                self.known += 1
                return
            decisions = self._detector.feed_unsolicited(pkt, self._now())
            if decisions:
                self._emit(decisions)

    def statistics(self) -> dict[str, int]:
        return {
            "unsolicited_packets": self.reader.received,
            "unsolicited_overflows": self.reader.overflows,
            "unsolicited_known": self.known,
        }

    def close(self) -> None:
        self.reader.close()
