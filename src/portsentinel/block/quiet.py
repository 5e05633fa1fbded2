"""Quiet sources: a responded source's repeats counted in the kernel, not read by the daemon.

A source the daemon already answered (alerted with BLOCK_x 0, or answered by KILL_RUN_CMD
alone at BLOCK_x 2) goes on probing, and every probe still wakes the daemon, which only
counts it. So its source and protocol go into a set of the ``netdev`` table for QUIET_REPEATS:
the table's ingress chains mark the source's probe-shaped packets (TCP without ACK and RST, and
UDP) with ``MARK``, the capture's kernel filter (``capture/bpf.py``) leaves marked packets out
of the ring, and the set element's counter counts them. Layout, beside the ban copies of
``ingress.py``::

    table netdev portsentinel {
      set quiet4 { type ipv4_addr . inet_proto; flags timeout; counter; size 16384; }
      set quiet6 { type ipv6_addr . inet_proto; flags timeout; counter; size 16384; }
      chain dev_eth0 { ...ban drops...;
        meta mark 0 tcp flags & (ack | rst) == 0 ip saddr . meta l4proto @quiet4 meta mark set MARK
        meta mark 0 meta l4proto udp ip saddr . meta l4proto @quiet4 meta mark set MARK
        (and the same for ip6 and quiet6) }
    }
    table inet portsentinel {
      chain quiet { type filter hook prerouting priority -1000; policy accept;
                    meta mark MARK meta mark set 0 }
    }

The mark lives only between the ingress hook and the first prerouting chain: the ``quiet``
chain clears it before any other rule, routing decision or socket sees the packet, so the
host's own use of marks (policy routing, other firewalls) never meets it. Only a packet that
came with no mark is marked, and only the exact value is cleared: a mark set by someone else
before us (a tc program at ingress) is left alone, and its packet reaches the daemon as before.

Only what the daemon would merely count goes quiet: a protocol's repeats, not the source's
other protocol (a source alerted for TCP with BLOCK_TCP 0 is still banned on its first UDP
probe with BLOCK_UDP 1). A full set adds nothing more: detection goes on in user space.
Pure: scripts and parsing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from portsentinel.model import QUIET_MARK

MARK: Final = QUIET_MARK
SET4, SET6 = "quiet4", "quiet6"
SET_TYPES: Final = {SET4: ["ipv4_addr", "inet_proto"], SET6: ["ipv6_addr", "inet_proto"]}
SIZE: Final = 16384  # elements per set; a full set quiets nothing more
RESET_CHAIN: Final = "quiet"
RESET_PRIORITY: Final = -1000  # before every other prerouting chain (raw is -300)
_TYPE_TEXT: Final = {name: " . ".join(kinds) for name, kinds in SET_TYPES.items()}
_FAMILIES: Final = ((SET4, "ip"), (SET6, "ip6"))
PROTO_NAMES: Final = {6: "tcp", 17: "udp"}
_PROTO_NUMBERS: Final = {name: number for number, name in PROTO_NAMES.items()}

Key = tuple[bytes, int]  # packed address, IP protocol number


def set_lines(table_ref: str) -> list[str]:
    """The two sets (``add`` keeps an existing set and its elements)."""
    return [
        f"add set {table_ref} {name} {{ type {_TYPE_TEXT[name]}; flags timeout; counter; "
        f"size {SIZE}; }}"
        for name, _ in _FAMILIES
    ]


def rule_lines(table_ref: str, chain: str) -> list[str]:
    """The marking rules of one ingress chain, after its ban drops."""
    ref = f"{table_ref} {chain}"
    lines = []
    for name, proto in _FAMILIES:
        match = f"{proto} saddr . meta l4proto @{name} meta mark set {MARK:#x}"
        lines.append(f"add rule {ref} meta mark 0 tcp flags & (ack | rst) == 0 {match}")
        lines.append(f"add rule {ref} meta mark 0 meta l4proto udp {match}")
    return lines


def reset_lines(inet_ref: str) -> list[str]:
    """The inet chain that clears the mark before anything else in prerouting sees it."""
    ref = f"{inet_ref} {RESET_CHAIN}"
    return [
        f"add chain {ref} {{ type filter hook prerouting priority {RESET_PRIORITY}; "
        "policy accept; }",
        f"flush chain {ref}",
        f"add rule {ref} meta mark {MARK:#x} meta mark set 0",
    ]


def set_problem(name: str, spec: Mapping[str, Any]) -> str | None:
    flags = spec.get("flags", [])
    flags = [flags] if isinstance(flags, str) else flags
    if spec.get("type") != SET_TYPES[name]:
        return f"quiet set {name} has type {spec.get('type')!r}"
    if "timeout" not in flags:
        return f"quiet set {name} lacks the timeout flag"
    if not any(isinstance(s, dict) and "counter" in s for s in spec.get("stmt", [])):
        return f"quiet set {name} does not count its elements"
    return None


def chain_problem(chain: str, rules: Sequence[Sequence[Any]]) -> str | None:
    """What an ingress chain lacks of the marking rules (None: all four are there)."""
    marking = sum(1 for expr in rules if _marks(expr))
    if marking < 2 * len(_FAMILIES):
        return f"ingress chain {chain} lacks the rules that mark quiet sources"
    return None


def reset_problem(chains: Mapping[str, Mapping[str, Any]], rules: Sequence[Any]) -> str | None:
    """What is wrong with the inet reset chain (None: in place)."""
    spec = chains.get(RESET_CHAIN)
    if spec is None:
        return f"chain {RESET_CHAIN} is missing"
    if spec.get("hook") != "prerouting" or spec.get("prio") != RESET_PRIORITY:
        return f"chain {RESET_CHAIN} is not on the prerouting hook at {RESET_PRIORITY}"
    if not any(_marks(expr, value=0) for expr in rules):
        return f"chain {RESET_CHAIN} does not clear the quiet mark"
    return None


def _marks(expr: Any, value: int = MARK) -> bool:
    """Does a rule set the packet's mark to ``value``?"""
    if not isinstance(expr, list):
        return False
    for e in expr:
        mangle = e.get("mangle") if isinstance(e, dict) else None
        if (
            isinstance(mangle, dict)
            and mangle.get("key") == {"meta": {"key": "mark"}}
            and mangle.get("value") == value
        ):
            return True
    return False


def element_counts(sets: Mapping[str, Mapping[str, Any]]) -> dict[Key, int]:
    """(packed address, protocol) -> packets its element counted, from the sets' listing."""
    found: dict[Key, int] = {}
    for name, _ in _FAMILIES:
        for raw in sets.get(name, {}).get("elem", []):
            elem = raw.get("elem") if isinstance(raw, dict) else None
            if not isinstance(elem, dict):
                continue
            key = _key(elem.get("val"))
            counter = elem.get("counter")
            if key is not None and isinstance(counter, dict):
                found[key] = int(counter.get("packets", 0))
    return found


def _key(value: Any) -> Key | None:
    try:
        address, proto = value["concat"]
        return ipaddress.ip_address(address).packed, _PROTO_NUMBERS[proto]
    except (TypeError, KeyError, ValueError):
        return None


def element_key(src: bytes, proto: int) -> bytes:
    """The set's key for ``src`` and ``proto`` as the kernel stores it: the address, then the
    protocol number in a field of its own padded to four bytes."""
    return src + bytes((proto, 0, 0, 0))


def set_of(src: bytes) -> str:
    return SET4 if len(src) == 4 else SET6


class QuietTotals:
    """What quiet sources sent, per source and protocol, since the last ``take``.

    An element's counter goes with the element (its quiet time ends) and restarts when it is
    added again, so each reading adds each element's growth since the one before.
    """

    def __init__(self) -> None:
        self._last: dict[Key, int] = {}
        self._pending: dict[Key, int] = {}
        self.packets = 0  # all of them, since the start

    def update(self, counts: Mapping[Key, int]) -> None:
        last, pending = self._last, self._pending
        for key, packets in counts.items():
            before = last.get(key, 0)
            grown = packets - before if packets >= before else packets
            if grown:
                pending[key] = pending.get(key, 0) + grown
                self.packets += grown
        self._last = dict(counts)

    def take(self) -> dict[Key, int]:
        """The growth per (source, protocol) since the last call."""
        pending, self._pending = self._pending, {}
        return pending


def keys_of(sources: Iterable[bytes], protos: Iterable[int] = (6, 17)) -> list[Key]:
    """Every (source, protocol) pair of ``sources``."""
    wanted = tuple(protos)
    return [(src, proto) for src in sources for proto in wanted]
