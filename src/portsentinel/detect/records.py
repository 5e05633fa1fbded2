"""The detector's records: a probe that reached a decision, as a ``Decision``. Pure.

Built only for what the detector acts on, and for the ignored probes whose record the gate lets
through (``Detector.set_record_gate``): a forged flood's refused probes are counted, not built.
Mixed into ``Detector`` (it extends ``Grouping``, which names a decision's decoy group); adds
no slots.
"""

from __future__ import annotations

from typing import Final

from portsentinel.detect.decide import Policy
from portsentinel.detect.grouping import Grouping
from portsentinel.detect.track import SourceState
from portsentinel.detect.trw import SequentialTest
from portsentinel.model import Action, Decision, Mode, Packet, Proto, Reason, ScanKind, addr_text

_PROTOS: Final[dict[int, Proto]] = {int(Proto.TCP): Proto.TCP, int(Proto.UDP): Proto.UDP}
# Address texts are cached because formatting one costs about as much as the rest of a
# decision; cleared when full, so a flood of spoofed sources only churns it.
TEXT_CACHE_SIZE: Final = 4096


class Records(Grouping):
    """``Detector._decision`` and the address texts; see the module."""

    __slots__ = ()
    _trw: SequentialTest | None
    _texts: dict[bytes, str]
    _modes: dict[int, Mode | None]
    policy: Policy

    def _decision(  # noqa: PLR0917 - plain positional values: called for every probe
        self,
        pkt: Packet,
        kind: ScanKind,
        now: float,
        reason: Reason,
        state: SourceState | None,
        rule: str | None,
        action: Action,
    ) -> Decision:
        proto, src, dst, _sport, port, flags, _ttl, options, _frag = pkt
        score = self._trw.score(state) if self._trw is not None and state is not None else None
        decision = Decision(
            time=now,
            src=self._text(src),
            dst=self._text(dst),
            proto=_PROTOS[proto],
            port=port,
            kind=kind,
            action=action,
            reason=reason,
            flags=flags,
            ip_options=options,
            mode=self._modes[proto],
            rule=rule,
            hits=state.hits if state is not None else 0,
            ports_seen=state.ports_seen if state is not None else 0,
            first=reason is Reason.TRIGGERED,
            provisional=action is not Action.IGNORED and self.policy.provisional,
            score=score[0] if score is not None else None,
            contacts=score[1] if score is not None else 0,
        )
        self._tell_group(decision, src)
        return decision

    def _text(self, packed: bytes) -> str:
        texts = self._texts
        text = texts.get(packed)
        if text is None:
            if len(texts) >= TEXT_CACHE_SIZE:
                texts.clear()
            text = texts[packed] = addr_text(packed)
        return text
