"""The fleet's decisions in the kernel: two sets of their own in ``inet portsentinel``, apart
from this host's bans (``ban4``/``ban6``), so neither side's bookkeeping touches the other's::

    set fleet4 { type ipv4_addr; flags timeout; }
    set fleet6 { type ipv6_addr; flags timeout; }
    chain fleet_in  { type filter hook input priority filter - 10; policy accept;
                      ip saddr @fleet4 counter drop; ip6 saddr @fleet6 counter drop }
    chain fleet_fwd { the same, hook forward }
    chain fleet_out { hook output: ip daddr @fleet4 counter drop; ... }

Each element carries the decision's remaining lifetime, so it ends in the kernel when it ends
in LAPI, with or without the daemon. One ``nft -f`` transaction per change set; an element is
(re)written as add, delete, add, which sets its timeout whether or not it was there (an
``add`` alone does not refresh an element on every kernel), and removed as add, delete, which
succeeds whether or not it was there. A full resync replaces both sets in one transaction.
The fleet link (``fleet/link``) is the only writer, from its own thread, through a plain
``nft`` process (never the daemon's libnftables context, which the response worker uses).

When the nftables backend keeps its ingress table (``block/ingress``: ``netdev portsentinel``
with sets ``fleet4``/``fleet6`` of its own and their drops on every interface), every element
is written to those copies too, in the same transaction, so a fleet ban drops at ingress like
a local one, before conntrack and the capture. The copies are used once ``present`` (or the
first write) has seen them; a table made later brings a full rewrite.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping

from portsentinel.block import ingress
from portsentinel.block.nft_state import MAX_TIMEOUT, TABLE_REF
from portsentinel.block.runner import CommandRunner, Runner
from portsentinel.errors import BackendError

SET4, SET6 = "fleet4", "fleet6"
CHAINS = (("fleet_in", "input", "saddr"), ("fleet_fwd", "forward", "saddr"),
          ("fleet_out", "output", "daddr"))  # fmt: skip
TIMEOUT = 10.0  # seconds for one transaction


def set_of(address: str) -> str:
    return SET6 if ":" in address else SET4


def _seconds(left: float) -> int:
    return max(1, min(MAX_TIMEOUT, int(left + 0.5)))


def structure_lines() -> list[str]:
    """Create what is missing and give the chains exactly their rules (pure, idempotent)."""
    lines = [f"add table {TABLE_REF}"]
    for name, kind in ((SET4, "ipv4_addr"), (SET6, "ipv6_addr")):
        lines.append(f"add set {TABLE_REF} {name} {{ type {kind}; flags timeout; }}")
    for chain, hook, field in CHAINS:
        ref = f"{TABLE_REF} {chain}"
        lines += [
            f"add chain {ref} {{ type filter hook {hook} priority filter - 10; policy accept; }}",
            f"flush chain {ref}",
            f"add rule {ref} ip {field} @{SET4} counter drop",
            f"add rule {ref} ip6 {field} @{SET6} counter drop",
        ]
    return lines


def change_script(
    put: Mapping[str, float], remove: Iterable[str], *, full: bool = False, copies: bool = False
) -> str:
    """Elements ``put`` (address -> seconds left) and ``remove``d; ``full``: the sets hold
    exactly ``put`` afterwards; ``copies``: the ingress table's fleet sets too (pure)."""
    lines = structure_lines()
    tables = (TABLE_REF, ingress.TABLE_REF) if copies else (TABLE_REF,)
    for table in tables:
        if full:
            lines += [f"flush set {table} {SET4}", f"flush set {table} {SET6}"]
        for address in sorted(set(remove) - set(put)):
            ref = f"{table} {set_of(address)}"
            lines += [f"add element {ref} {{ {address} timeout 1s }}",
                      f"delete element {ref} {{ {address} }}"]  # fmt: skip
        for address, left in sorted(put.items()):
            ref = f"{table} {set_of(address)}"
            element = f"{{ {address} timeout {_seconds(left)}s }}"
            if full:
                lines.append(f"add element {ref} {element}")
            else:
                lines += [f"add element {ref} {element}", f"delete element {ref} {{ {address} }}",
                          f"add element {ref} {element}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def remove_script(*, copies: bool = False) -> str:
    """The chains and sets gone (the fleet turned off by a reload), the ingress copies
    emptied (they belong to the backend's table) (pure)."""
    lines = structure_lines()
    if copies:
        lines += [f"flush set {ingress.TABLE_REF} {name}" for name in (SET4, SET6)]
    lines += [f"delete chain {TABLE_REF} {chain}" for chain, _hook, _field in CHAINS]
    lines += [f"delete set {TABLE_REF} {name}" for name in (SET4, SET6)]
    return "\n".join(lines) + "\n"


class FleetSets:
    """Writes the fleet sets through ``nft -f -``."""

    def __init__(self, runner: CommandRunner | None = None, nft: str | None = None) -> None:
        self._runner = runner if runner is not None else Runner()
        self._nft = nft or shutil.which("nft") or "nft"
        self.transactions = 0
        self.copies: bool | None = None  # the ingress copies are there (None: not asked yet)

    def apply(self, put: Mapping[str, float], remove: Iterable[str], *, full: bool = False) -> None:
        if self.copies is None:
            self.copies = self._copies()
        self._run(change_script(put, remove, full=full, copies=self.copies))

    def remove(self) -> None:
        self._run(remove_script(copies=bool(self.copies)))

    def present(self) -> bool:
        """Are the chains and sets there, and the ingress copies as last seen? (Another tool
        may have flushed the ruleset; the backend may have made or dropped its table.)"""
        done = self._runner.run([self._nft, "list", "chain", *TABLE_REF.split(), CHAINS[0][0]],
                                timeout=TIMEOUT)  # fmt: skip
        copies = self._copies()
        changed = copies != self.copies
        self.copies = copies
        return done.ok and f"@{SET4}" in done.stdout and not changed

    def _copies(self) -> bool:
        argv = [self._nft, "list", "set", *ingress.TABLE_REF.split(), SET6]
        return self._runner.run(argv, timeout=TIMEOUT).ok

    def _run(self, script: str) -> None:
        done = self._runner.run([self._nft, "-f", "-"], input=script, timeout=TIMEOUT)
        self.transactions += 1
        if not done.ok:
            raise BackendError(f"nft could not write the fleet sets: {done.describe()}")
