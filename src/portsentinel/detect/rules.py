"""Scoring rules: given a source's tracked evidence and its newest probe, has it become a scan?

A rule is anything with a ``name`` and an ``observe`` method; the detector asks every rule on
every tracked probe (so rules with memory see all of them) and acts on the first that fires.
A rule that only reads the source's state may say so with a class attribute ``keeps_state =
False``: it is then not asked about the repeats of a source whose records are held back.
New rules join by being added to the list: a sequential hypothesis test (TRW) keeping its
score in ``SourceState.rule_data``, a one-port sweep across many local addresses reading
``SourceState.destinations``, a distributed scan keeping its own bounded cross-source table.
"""

from __future__ import annotations

from typing import ClassVar, Protocol, cast

from portsentinel.detect.track import SourceState
from portsentinel.model import ScanKind

_PROTO_HITS = {6: "trigger_hits_tcp", 17: "trigger_hits_udp"}


class ScoringRule(Protocol):
    """One way of deciding that a source is scanning."""

    @property
    def name(self) -> str:
        """Short identifier, written into decisions as ``rule``."""
        ...

    @property
    def times_needed(self) -> int:
        """How many recent hit times the tracker must keep per source for this rule (0: none)."""
        ...

    def observe(  # noqa: PLR0917 - plain positional values: called for every probe
        self, state: SourceState, proto: int, port: int, kind: ScanKind, dst: bytes, now: float
    ) -> bool:
        """Take in one probe (already recorded in ``state``); True when the rule fires."""
        ...


class ScanTrigger:
    """PortSentry's SCAN_TRIGGER: fire once a source's hit count reaches the trigger.

    Counted per source address: every watched port, repeats included; of both protocols
    together (PortSentry 2.0's one counter), or with ``per_protocol`` each protocol apart
    (1.2, which ran one process per protocol: LOG_FORMAT="1.2"). The count includes the
    current hit, so 0 and 1 fire on the first hit, N on the Nth, and every later hit fires
    again (the off-by-one against 1.2's docs is 1.2's real behaviour). With a window
    (PortSentry has none) only hits no older than ``window`` seconds count, of both protocols.
    """

    __slots__ = ("_name", "per_protocol", "trigger", "window")
    keeps_state: ClassVar[bool] = False  # its counts are done once a protocol triggered

    def __init__(
        self,
        trigger: int,
        window: float = 0.0,
        *,
        name: str = "scan_trigger",
        per_protocol: bool = False,
    ) -> None:
        if trigger < 0 or window < 0:
            raise ValueError("trigger and window must not be negative")
        self.trigger = trigger
        self.window = window
        self._name = name
        self.per_protocol = per_protocol

    @property
    def name(self) -> str:
        return self._name

    @property
    def times_needed(self) -> int:
        """The last ``trigger`` hit times, and only when a window is set."""
        return self.trigger if self.window > 0 and self.trigger > 1 else 0

    def observe(  # noqa: PLR0917 - plain positional values: called for every probe
        self, state: SourceState, proto: int, port: int, kind: ScanKind, dst: bytes, now: float
    ) -> bool:
        trigger = self.trigger
        if trigger <= 1:
            return True
        if self.per_protocol:
            data = state.rule_data
            if data is None:
                data = state.rule_data = {}
            key = _PROTO_HITS[proto]
            hits = cast(int, data.get(key, 0)) + 1
            data[key] = hits
        else:
            hits = state.hits
        if hits < trigger:
            return False
        if self.window <= 0:
            return True
        times = state.times
        # The tracker keeps exactly the last ``trigger`` hit times: the trigger is reached
        # inside the window when the oldest of them is not older than the window.
        return times is not None and len(times) >= trigger and now - times[-trigger] <= self.window
