"""The pure detection core: classify -> track -> score -> decide, fed with decoded packets.

Nothing in this package opens a socket, runs a command, reads a file or the clock: time is
always an argument, so the same code runs live, in ``replay`` and in benchmarks.
"""

from __future__ import annotations

from portsentinel.detect.classify import TCP_KIND, classify_tcp, portsentry_label
from portsentinel.detect.decide import Policy, PolicyCheck
from portsentinel.detect.detector import Detector
from portsentinel.detect.rules import ScanTrigger, ScoringRule
from portsentinel.detect.settings import DetectorConfig, DetectorStats
from portsentinel.detect.track import SourceState, Tracker

__all__ = [
    "TCP_KIND",
    "Detector",
    "DetectorConfig",
    "DetectorStats",
    "Policy",
    "PolicyCheck",
    "ScanTrigger",
    "ScoringRule",
    "SourceState",
    "Tracker",
    "classify_tcp",
    "portsentry_label",
]
