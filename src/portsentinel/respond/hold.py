"""KERNEL_HOLD in the daemon: what the kernel holds (from the configuration), and the loop's
releases of sources it decided not to ban.

The kernel holds the source of a probe's first packet by itself (``block/hold.py``). The
detection loop sees the same packet a moment later and decides as it always does. A ban is
the confirmation: the ban set drops the source before the hold chain. A decision not to ban
releases the source at once: it goes into the free set for the hold time (an element added
twice is fine, where deleting it from the hold set would fail once it has expired), in one
netlink transaction per loop turn. Released: sources the ban budget refused, whose evidence
is too weak, that are protected (ignore list, never-block set, own addresses: the kernel's
keep sets should have spared them; this covers a change not yet written there), and sources
whose protocol only alerts or runs a command (BLOCK_x 0 or 2; the plan leaves those
protocols out anyway). A source below SCAN_TRIGGER stays held: it is probing watched ports
no socket uses, and its hold ends by itself.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Sequence

from portsentinel.block.hold import FREE4, FREE6, HoldPlan, HoldTable, Network, seconds_text
from portsentinel.block.nfnetlink import ElementWriter
from portsentinel.block.nft_state import TABLE
from portsentinel.config.setup import Setup, detector_config
from portsentinel.config.types import Backend, BlockLevel
from portsentinel.errors import BackendError
from portsentinel.host.neverblock import Entry
from portsentinel.model import Action, Decision, Proto, Reason

RELEASE_REASONS = frozenset({
    Reason.IGNORE_LIST, Reason.OWN_ADDRESS, Reason.NEVER_BLOCK, Reason.BAN_BUDGET,
    Reason.WEAK_EVIDENCE,
})  # fmt: skip
REMEMBERED = 65_536  # released sources remembered (not sent again within the hold time)


def hold_plan(setup: Setup) -> HoldPlan | None:
    """What the kernel holds with these settings: the ports each protocol's stealth mode
    watches when that protocol blocks (BLOCK_x=1); None when KERNEL_HOLD is off or nothing
    qualifies (``hold_refusal`` says why)."""
    s = setup.settings
    if not s.kernel_hold or hold_refusal(setup) is not None:
        return None
    config = detector_config(setup)
    ports: dict[Proto, tuple[int, ...]] = {}
    for proto, mode, level in ((Proto.TCP, setup.tcp_mode, s.block_tcp),
                               (Proto.UDP, setup.udp_mode, s.block_udp)):  # fmt: skip
        watched = mode is not None and mode.stealth and level == BlockLevel.BLOCK
        ports[proto] = tuple(config.watched_ports(proto)) if watched else ()
    return HoldPlan(ports[Proto.TCP], ports[Proto.UDP], s.kernel_hold_time,
                    ssh=s.never_block_ssh_peers)  # fmt: skip


def hold_refusal(setup: Setup) -> str | None:
    """Why KERNEL_HOLD=1 cannot act with these settings, or None."""
    s = setup.settings
    if s.block_backend is not Backend.NFTABLES:
        return f"it needs BLOCK_BACKEND=nftables (not {s.block_backend.value})"
    stealth = [
        mode for mode, level in ((setup.tcp_mode, s.block_tcp), (setup.udp_mode, s.block_udp))
        if mode is not None and mode.stealth and level == BlockLevel.BLOCK
    ]  # fmt: skip
    if not stealth:
        return "no stealth or advanced mode blocks (BLOCK_TCP/BLOCK_UDP=1)"
    return None


def releases(decision: Decision) -> bool:
    """Does this decision release its source from the hold?"""
    if decision.reason in RELEASE_REASONS:
        return True
    return decision.first and decision.action in (Action.ALERT, Action.COMMAND)


class Releases:
    """The loop's releases (see the module docstring). Used from the loop's thread only."""

    def __init__(
        self,
        seconds: float,
        log: Callable[[str], None],
        writer: ElementWriter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._writer = writer if writer is not None else ElementWriter(TABLE)
        self._log = log
        self._clock = clock
        self.seconds = seconds
        self._waiting: dict[str, bytes] = {}
        self._until: dict[str, float] = {}  # released sources, not sent again before this
        self.released = 0
        self.failed = 0

    def add(self, address: str) -> None:
        """Release ``address`` at the end of the loop's turn (once per hold time)."""
        now = self._clock()
        if self._until.get(address, 0.0) > now or address in self._waiting:
            return
        try:
            self._waiting[address] = ipaddress.ip_address(address).packed
        except ValueError:
            return

    def end_turn(self) -> None:
        """Send what this turn released: one transaction per address family."""
        if not self._waiting:
            return
        waiting, self._waiting = self._waiting, {}
        now = self._clock()
        if len(self._until) + len(waiting) > REMEMBERED:
            self._until = {a: t for a, t in self._until.items() if t > now}
            if len(self._until) + len(waiting) > REMEMBERED:
                self._until.clear()
        timeout = int(self.seconds * 1000)
        for name, width in ((FREE4, 4), (FREE6, 16)):
            keys = [(packed, timeout) for packed in waiting.values() if len(packed) == width]
            if not keys:
                continue
            try:
                self._writer.add(name, keys)
            except BackendError as exc:
                self.failed += len(keys)
                if self.failed == len(keys):  # said once; the metrics count the rest
                    self._log(f"adminalert: ERROR: cannot release held sources: {exc}")
                continue
            self.released += len(keys)
        until = now + self.seconds
        for address in waiting:
            self._until[address] = until

    def close(self) -> None:
        self._writer.close()


class HoldKeeper:
    """The response worker's side: the chain installed at start, the keep sets written
    whenever the never-block set changes, both repaired with the bans, removed at the stop (a
    hold needs the daemon to confirm or release it)."""

    def __init__(self, table: HoldTable, log: Callable[[str], None]) -> None:
        self.table = table
        self._log = log
        self.installed = False
        self._kept: frozenset[Network] | None = None

    def start(self, entries: Sequence[Entry]) -> None:
        why = self.table.install()
        if why is not None:
            self._log(f"adminalert: ERROR: KERNEL_HOLD: cannot install the hold chain ({why}); "
                      "probes are not held, detection and bans go on")  # fmt: skip
            return
        self.installed = True
        self._kept = None
        self.keep(entries)
        plan = self.table.plan
        self._log(f"adminalert: KERNEL_HOLD: the kernel holds the source of a probe to "
                  f"{len(plan.tcp)} TCP and {len(plan.udp)} UDP ports no socket uses, for "
                  f"{seconds_text(plan.seconds)} unless banned or released")  # fmt: skip

    def keep(self, entries: Sequence[Entry]) -> None:
        """The never-block set as the kernel's keep sets (written only when it changed)."""
        networks = frozenset(net for net, _reason, _source in entries)
        if not self.installed or networks == self._kept:
            return
        why = self.table.keep(networks)
        if why is not None:
            self._log(f"adminalert: ERROR: KERNEL_HOLD: cannot write the never-block set to "
                      f"the kernel ({why}); tried again at the next repair")  # fmt: skip
            return
        self._kept = networks

    def repair(self, entries: Sequence[Entry]) -> None:
        if not self.installed:
            return
        problem = self.table.problem()
        if problem is not None:
            self._log(f"adminalert: KERNEL_HOLD: {problem}; installing it again")
            self.start(entries)
        elif self._kept is None:
            self.keep(entries)

    def stop(self) -> None:
        """The chain removed (when installed), the table's nft context freed."""
        if self.installed:
            why = self.table.remove()
            if why is not None:
                self._log(f"adminalert: ERROR: KERNEL_HOLD: cannot remove the hold chain: {why}")
            self.installed = False
        self.table.close()
