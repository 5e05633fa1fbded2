"""Bans dropped at ingress: a ``netdev`` table with copies of the ban sets (pure scripts).

A packet socket bound to one protocol (the capture's, ``capture/afpacket.py``) is served after
the ingress hooks, and the ``netdev`` family's ingress hook runs before the IP stack and
conntrack. So a banned source's packets, dropped here, cost neither the daemon nor the
kernel's connection tracking anything. Layout (the nftables backend owns it, beside
``inet portsentinel``)::

    table netdev portsentinel {
      set ban4 { type ipv4_addr; flags timeout; counter; }   (+ interval with prefix bans)
      set ban6 { type ipv6_addr; flags timeout; counter; }
      set fleet4 { type ipv4_addr; flags timeout; }          the fleet's decisions (issue 12)
      set fleet6 { type ipv6_addr; flags timeout; }
      chain dev_eth0 { type filter hook ingress device "eth0" priority -500; policy accept;
                       ip saddr @ban4 drop; ip6 saddr @ban6 drop;
                       ip saddr @fleet4 drop; ip6 saddr @fleet6 drop; (quiet marks) }
      chain dev_... (one per interface but loopback)
    }

The fleet sets are the copies of ``inet portsentinel``'s fleet sets: the fleet link
(``block/fleet_sets``) writes both in one transaction once it sees these here; the backend
only makes them and their rules, never their elements.

Every write to ``inet portsentinel``'s ban sets goes to these copies in the same transaction,
with the same timeout, so both end together; the detection loop's first ban of a turn is the
exception: its inet element goes alone and its copy follows when the turn ends
(``respond/first_ban.py``), a fraction of a millisecond later. The ``counter`` on each
element counts what the banned source sent after its ban: ``why``, ``status`` and the metrics
read it.

A netdev chain hooks one device. Kernels before 6.10 or so delete it with its device and refuse
one for a device that does not exist; newer ones keep it. So the chains follow the interfaces
(``follow_script``): the backend compares the interface names with the chains it made and adds
or deletes the difference. A chain is named after its device (``dev_`` + the name, or
``devx_`` + the name in hex when the name has characters nft does not take in a name).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from portsentinel.block import quiet
from portsentinel.block.nft_state import (
    SET_TYPES,
    TableState,
    read_listing,
    set_elements,
    set_flags,
)

FAMILY: Final = "netdev"
TABLE: Final = "portsentinel"
TABLE_REF: Final = f"{FAMILY} {TABLE}"
SET4, SET6 = "ban4", "ban6"
FLEET4, FLEET6 = "fleet4", "fleet6"
PRIORITY: Final = -500  # before any other ingress chain the host may have
_RULES: Final = ((SET4, "ip"), (SET6, "ip6"), (FLEET4, "ip"), (FLEET6, "ip6"))
_FLEET_TYPES: Final = {FLEET4: "ipv4_addr", FLEET6: "ipv6_addr"}
_SETS: Final = (SET4, SET6, FLEET4, FLEET6, quiet.SET4, quiet.SET6)
_PLAIN_NAME: Final = re.compile(r"[A-Za-z0-9_.-]+")
CHAIN_PREFIXES: Final = ("dev_", "devx_")

Counts = tuple[int, int]  # packets, bytes


def chain_name(device: str) -> str:
    """The chain that hooks ``device`` (pure)."""
    if _PLAIN_NAME.fullmatch(device):
        return f"dev_{device}"
    return f"devx_{device.encode().hex()}"


def device_of(chain: str) -> str | None:
    """The device a chain of ours hooks, from its name; None for a chain not ours (pure)."""
    if chain.startswith("dev_"):
        return chain[4:] or None
    if chain.startswith("devx_"):
        try:
            return bytes.fromhex(chain[5:]).decode() or None
        except (ValueError, UnicodeDecodeError):
            return None
    return None


def hooked(names: Iterable[str]) -> frozenset[str]:
    """The devices to hook among ``names``: all but loopback (no banned address can come
    from the host itself)."""
    return frozenset(name for name in names if name and name != "lo")


class IngressState(TableState):
    """What ``nft -j list table netdev portsentinel`` showed (our chains: ``dev_*``)."""

    def devices(self) -> dict[str, str]:
        """Chain name -> device, for our chains."""
        return {name: dev for name in self.chains if (dev := device_of(name)) is not None}


def parse(text: str) -> IngressState:
    """The table's sets, chains and rules from nft's JSON (ValueError when it is not JSON)."""
    return read_listing(text, IngressState(), lambda name: device_of(name) is not None, _SETS)


def _set_problem(name: str, spec: Mapping[str, Any], prefix_bans: bool) -> str | None:
    flags = spec.get("flags", [])
    flags = [flags] if isinstance(flags, str) else flags
    if spec.get("type") != SET_TYPES[name]:
        return f"ingress set {name} has type {spec.get('type')!r}"
    missing = [flag for flag in set_flags(prefix_bans) if flag not in flags]
    if missing:
        return f"ingress set {name} lacks the flags {', '.join(missing)}"
    if not any(isinstance(s, dict) and "counter" in s for s in spec.get("stmt", [])):
        return f"ingress set {name} does not count its elements"
    return None


def _chain_header(chain: str, device: str) -> str:
    return (
        f'add chain {TABLE_REF} {chain} {{ type filter hook ingress device "{device}" '
        f"priority {PRIORITY}; policy accept; }}"
    )


def _chain_lines(chain: str, device: str) -> list[str]:
    lines = [_chain_header(chain, device), f"flush chain {TABLE_REF} {chain}"]
    lines += [f"add rule {TABLE_REF} {chain} {proto} saddr @{name} drop" for name, proto in _RULES]
    return lines + quiet.rule_lines(TABLE_REF, chain)


def structure_script(state: IngressState, prefix_bans: bool, devices: Iterable[str]) -> str:
    """One transaction that leaves the table with its two sets (elements kept unless a set
    must be recreated) and one chain per device of ``devices``, stale chains deleted (pure)."""
    wanted = {chain_name(dev): dev for dev in hooked(devices)}
    stale_sets = [
        name for name, spec in state.sets.items() if _any_set_problem(name, spec, prefix_bans)
    ]
    lines = [f"add table {TABLE_REF}"]
    if stale_sets:  # the rules refer to the sets: empty every chain first
        lines += [f"flush chain {TABLE_REF} {chain}" for chain in state.chains]
        lines += [f"delete set {TABLE_REF} {name}" for name in stale_sets]
    flags = ", ".join(set_flags(prefix_bans))
    for name in (SET4, SET6):
        lines.append(
            f"add set {TABLE_REF} {name} {{ type {SET_TYPES[name]}; flags {flags}; counter; }}"
        )
    lines += [
        f"add set {TABLE_REF} {name} {{ type {kind}; flags timeout; }}"
        for name, kind in _FLEET_TYPES.items()
    ]
    lines += quiet.set_lines(TABLE_REF)
    lines += [f"delete chain {TABLE_REF} {chain}" for chain in state.chains if chain not in wanted]
    for chain, dev in sorted(wanted.items()):
        lines += _chain_lines(chain, dev)
    return "".join(f"{line}\n" for line in lines)


def follow_script(have: Mapping[str, str], devices: Iterable[str]) -> str:
    """Chains for the devices that have none, and no chain for a device that is gone (pure);
    empty when nothing changed. ``have``: chain name -> device."""
    wanted = {chain_name(dev): dev for dev in hooked(devices)}
    lines = [f"delete chain {TABLE_REF} {chain}" for chain in sorted(have) if chain not in wanted]
    for chain, dev in sorted(wanted.items()):
        if chain not in have:
            lines += _chain_lines(chain, dev)
    return "".join(f"{line}\n" for line in lines)


def problems(state: IngressState, prefix_bans: bool, devices: Iterable[str]) -> list[str]:
    """What is missing or wrong; empty when the table is as ``structure_script`` makes it."""
    if not state.exists:
        return [f"table {TABLE_REF} is missing"]
    found = [
        p for name, spec in state.sets.items() if (p := _any_set_problem(name, spec, prefix_bans))
    ]
    found += [f"ingress set {name} is missing" for name in _SETS if name not in state.sets]
    for dev in sorted(hooked(devices)):
        chain = chain_name(dev)
        spec = state.chains.get(chain)
        if spec is None:
            found.append(f"ingress chain {chain} for {dev} is missing")
            continue
        if spec.get("hook") != "ingress" or spec.get("prio") != PRIORITY:
            found.append(f"ingress chain {chain} is not on the ingress hook at {PRIORITY}")
        rules = state.rules.get(chain, [])
        for name, proto in _RULES:
            if not any(_drops(expr, proto, name) for expr in rules):
                found.append(f"ingress chain {chain} has no '{proto} saddr @{name} drop' rule")
        if problem := quiet.chain_problem(chain, rules):
            found.append(problem)
    return found


def _any_set_problem(name: str, spec: Mapping[str, Any], prefix_bans: bool) -> str | None:
    if name in quiet.SET_TYPES:
        return quiet.set_problem(name, spec)
    if name in _FLEET_TYPES:
        flags = spec.get("flags", [])
        if spec.get("type") != _FLEET_TYPES[name] or "timeout" not in flags:
            return f"ingress set {name} is not a {_FLEET_TYPES[name]} set with timeouts"
        return None
    return _set_problem(name, spec, prefix_bans)


def _drops(expr: Sequence[Any], proto: str, name: str) -> bool:
    wanted = {"op": "==", "left": {"payload": {"protocol": proto, "field": "saddr"}},
              "right": f"@{name}"}  # fmt: skip
    matches = [e["match"] for e in expr if isinstance(e, dict) and "match" in e]
    return matches == [wanted] and any(isinstance(e, dict) and "drop" in e for e in expr)


def element_counts(state: IngressState, key_of: Any) -> dict[str, Counts]:
    """Ban key -> (packets, bytes) its element counted; ``key_of`` turns nft's value into a
    ban key (None: skipped)."""
    found: dict[str, Counts] = {}
    for name in (SET4, SET6):
        for raw in state.sets.get(name, {}).get("elem", []):
            elem = raw.get("elem") if isinstance(raw, dict) else None
            if not isinstance(elem, dict):
                continue
            key = key_of(elem.get("val"))
            counter = elem.get("counter")
            if key is not None and isinstance(counter, dict):
                found[key] = (int(counter.get("packets", 0)), int(counter.get("bytes", 0)))
    return found


def element_keys(state: IngressState) -> set[str]:
    """The ban keys in the two sets."""
    return {key for name in (SET4, SET6) for key in set_elements(state.sets.get(name, {}))}


class DropTotals:
    """What banned sources sent since the daemon started, summed from the elements' counters.

    An element's counter goes when its ban ends (and restarts when a ban is renewed), so the
    total adds each element's growth between readings: it only ever grows, as a Prometheus
    counter must, and loses only what an element counted after its last reading.
    """

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0
        self.last: dict[str, Counts] = {}

    def update(self, counts: Mapping[str, Counts]) -> None:
        last = self.last
        for key, (packets, size) in counts.items():
            before = last.get(key, (0, 0))
            if packets >= before[0]:  # else the element was renewed: its count restarted
                self.packets += packets - before[0]
                self.bytes += max(0, size - before[1])
            else:
                self.packets += packets
                self.bytes += size
        self.last = dict(counts)
