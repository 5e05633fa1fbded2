"""Quiet sources from the detection loop: a responded source's repeats go to the kernel's count.

The detector mutes a source whose "already blocked" records the record gate holds back: from
then on it only counts that source's probes of that protocol. Each one still costs a wake-up,
a ring slot and a decode. ``Quiet`` puts the source and protocol into the ingress table's quiet
set for QUIET_REPEATS (``block/quiet.py``): the kernel marks its probes, the capture's filter
leaves them out, and the element counts them; the response worker reads the counts with its
repair check and the loop adds them to the held records' summary. When the element ends, the
next probe reaches the daemon again, is judged as before (a record when the gate lets one
through) and goes quiet again.

A response that ends (a ban lifted, a source released) takes the source out of the sets at
once, so its next probe is judged afresh; a reload empties them. Used from the detection
loop's thread only; one netlink message per loop turn for what the turn muted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from portsentinel.block import ingress
from portsentinel.block import quiet as sets
from portsentinel.block.nfnetlink import NFPROTO_NETDEV, ElementWriter
from portsentinel.config.schema import Settings
from portsentinel.errors import BackendError
from portsentinel.respond.first_ban import nftables_planned

CAP = sets.SIZE  # sources the loop remembers as quiet (the kernel's set holds as many)
FAILURES_LOGGED = 3  # refusals said in the log before they are only counted


def eligible(settings: Settings, *, dry_run: bool) -> bool:
    """Can these settings quiet sources? The ingress table is the nftables backend's."""
    if dry_run or settings.quiet_repeats <= 0 or settings.block_backend.value != "nftables":
        return False
    return nftables_planned(settings)


class Quiet:
    """See the module docstring."""

    def __init__(
        self,
        seconds: float,
        log: Callable[[str], None],
        writer: ElementWriter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._writer = (
            writer if writer is not None else ElementWriter(ingress.TABLE, family=NFPROTO_NETDEV)
        )
        self._log = log
        self._clock = clock
        self.seconds = seconds
        self._until: dict[sets.Key, float] = {}  # what the sets hold, as far as we know
        self.added = 0
        self.refused = 0

    def add(self, keys: Iterable[sets.Key]) -> None:
        """Quiet these (source, protocol) pairs for ``seconds`` (one message for all)."""
        now = self._clock()
        until = self._until
        fresh = [key for key in keys if until.get(key, 0.0) <= now]
        if not fresh:
            return
        if len(until) + len(fresh) > CAP:
            until = self._until = {key: end for key, end in until.items() if end > now}
            fresh = fresh[: max(0, CAP - len(until))]
            if not fresh:
                return
        by_set: dict[str, list[tuple[bytes, int | None]]] = {sets.SET4: [], sets.SET6: []}
        timeout = round(self.seconds * 1000)
        for src, proto in fresh:
            by_set[sets.set_of(src)].append((sets.element_key(src, proto), timeout))
        try:
            for name, elements in by_set.items():
                if elements:
                    self._writer.add(name, elements)
        except BackendError as exc:
            self._refused(len(fresh), exc)
            return
        end = now + self.seconds
        for key in fresh:
            until[key] = end
        self.added += len(fresh)

    def release(self, src: bytes) -> None:
        """``src``'s response ended: its next probe is judged again, so out of the sets."""
        keys = [key for key in sets.keys_of([src]) if self._until.pop(key, 0.0) > self._clock()]
        self._delete(keys)

    def clear(self) -> None:
        """Every quiet source out (a reload: what was muted is judged afresh)."""
        now = self._clock()
        keys = [key for key, end in self._until.items() if end > now]
        self._until.clear()
        self._delete(keys)

    def _delete(self, keys: list[sets.Key]) -> None:
        try:
            for src, proto in keys:
                self._writer.delete(sets.set_of(src), [sets.element_key(src, proto)])
        except BackendError as exc:
            self._refused(len(keys), exc)

    def _refused(self, count: int, exc: BackendError) -> None:
        self.refused += 1
        if self.refused <= FAILURES_LOGGED:
            self._log(
                f"adminalert: WARNING: {count} quiet sources not given to the kernel ({exc}); "
                "the daemon goes on reading their probes"
            )

    def close(self) -> None:
        self._writer.close()
