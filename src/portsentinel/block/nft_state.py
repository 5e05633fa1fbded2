"""The inet table as nft lists it (pure): the backend's constants, and its sets, chains and
rules read from ``nft -j list table inet portsentinel`` (the layout is in ``nftables.py``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from portsentinel.block.base import key_of
from portsentinel.block.quiet import RESET_CHAIN as QUIET_CHAIN  # read with the ban chains

log = logging.getLogger(__name__)

T = TypeVar("T", bound="TableState")

FAMILY = "inet"
TABLE = "portsentinel"
TABLE_REF = f"{FAMILY} {TABLE}"
SET4 = "ban4"
SET6 = "ban6"
CHAINS = ("input", "forward", "output")  # each named after its hook
# The address a chain's rule matches: the source coming in, the destination going out (after a
# ban nothing leaves the host for the banned address either).
FIELD = {"input": "saddr", "forward": "saddr", "output": "daddr"}
# Before the usual filter chains (priority 0), so an accept there cannot let a banned source in.
PRIORITY = -10
PRIORITY_TEXT = "filter - 10"
# nft 1.0 refuses timeouts of 10^8 s and more; longer bans are applied for this long (1000
# days) and re-added by repair while the daemon runs.
MAX_TIMEOUT = 86_400_000

SET_TYPES = {SET4: "ipv4_addr", SET6: "ipv6_addr"}
RULE_MATCH = ((SET4, "ip"), (SET6, "ip6"))


@dataclass
class TableState:
    """What ``nft -j list table`` showed of this backend's own objects."""

    exists: bool = False
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> JSON "set" object
    chains: dict[str, dict[str, Any]] = field(default_factory=dict)
    rules: dict[str, list[list[Any]]] = field(default_factory=dict)  # chain -> rule exprs


def set_flags(prefix_bans: bool) -> tuple[str, ...]:
    return ("interval", "timeout") if prefix_bans else ("timeout",)


# --- reading the table (pure) -------------------------------------------------------------
def parse_table(text: str) -> TableState:
    """Our sets, chains and rules from ``nft -j list table inet portsentinel``."""
    return read_listing(text, TableState(), lambda name: name in CHAINS or name == QUIET_CHAIN)


def read_listing(
    text: str, state: T, ours: Callable[[str], bool], sets: Collection[str] = SET_TYPES.keys()
) -> T:
    """Fill ``state`` from a table's JSON listing: whether the table is there, the ``sets``
    (the ban sets), and the chains ``ours`` accepts with their rules (ValueError when it is
    not nft JSON)."""
    try:
        items = json.loads(text)["nftables"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not nft JSON: {exc}") from None
    for item in items:
        if not isinstance(item, dict):
            continue
        if "table" in item:
            state.exists = True
        elif "set" in item and item["set"].get("name") in sets:
            state.sets[item["set"]["name"]] = item["set"]
        elif "chain" in item and ours(str(item["chain"].get("name", ""))):
            state.chains[item["chain"]["name"]] = item["chain"]
        elif "rule" in item and ours(str(item["rule"].get("chain", ""))):
            state.rules.setdefault(item["rule"]["chain"], []).append(item["rule"].get("expr", []))
    return state


def structure_problems(state: TableState, prefix_bans: bool) -> list[str]:
    """What is missing or wrong in our structure; empty when all is in place."""
    if not state.exists:
        return [f"table {TABLE_REF} is missing"]
    problems = [problem for _, problem in incompatible_sets(state, prefix_bans)]
    problems += [f"set {name} is missing" for name in (SET4, SET6) if name not in state.sets]
    for chain in CHAINS:
        spec = state.chains.get(chain)
        if spec is None:
            problems.append(f"chain {chain} is missing")
            continue
        if problem := chain_problem(chain, spec):
            problems.append(problem)
        rules = state.rules.get(chain, [])
        field = FIELD[chain]
        for name, proto in RULE_MATCH:
            if not any(_is_drop_rule(expr, proto, name, field) for expr in rules):
                problems.append(f"chain {chain} has no '{proto} {field} @{name} drop' rule")
    return problems


def incompatible_sets(state: TableState, prefix_bans: bool) -> Iterator[tuple[str, str]]:
    for name, spec in state.sets.items():
        flags = spec.get("flags", [])
        flags = [flags] if isinstance(flags, str) else flags
        missing = [flag for flag in set_flags(prefix_bans) if flag not in flags]
        if spec.get("type") != SET_TYPES[name]:
            yield name, f"set {name} has type {spec.get('type')!r}, not {SET_TYPES[name]}"
        elif missing:
            yield name, f"set {name} lacks the flags {', '.join(missing)}"


def chain_problem(chain: str, spec: Mapping[str, Any]) -> str | None:
    wanted = {"type": "filter", "hook": chain, "prio": PRIORITY, "policy": "accept"}
    found = {key: spec.get(key) for key in wanted}
    if found != wanted:
        return f"chain {chain} is {found}, not {wanted}"
    return None


def _is_drop_rule(expr: Sequence[Any], proto: str, set_ref: str, field: str = "saddr") -> bool:
    wanted = {
        "op": "==",
        "left": {"payload": {"protocol": proto, "field": field}},
        "right": f"@{set_ref}",
    }
    matches = [e["match"] for e in expr if isinstance(e, dict) and "match" in e]
    verdict = any(isinstance(e, dict) and "drop" in e for e in expr)
    return verdict and matches == [wanted]


def set_elements(spec: Mapping[str, Any]) -> dict[str, float | None]:
    """Element key -> seconds left (None: permanent), from a JSON ``set`` object."""
    found: dict[str, float | None] = {}
    for raw in spec.get("elem", []):
        value, expires = raw, None
        if isinstance(raw, dict) and "elem" in raw:
            value = raw["elem"].get("val")
            expires = raw["elem"].get("expires", raw["elem"].get("timeout"))
        key = element_key(value)
        if key is not None:
            found[key] = float(expires) if expires is not None else None
    return found


def element_key(value: Any) -> str | None:
    try:
        if isinstance(value, str):
            return key_of(value)
        if isinstance(value, dict) and "prefix" in value:
            return key_of(f"{value['prefix']['addr']}/{value['prefix']['len']}")
        if isinstance(value, dict) and "range" in value:  # not ours; shown as it is
            low, high = value["range"]
            return f"{low}-{high}"
    except (ValueError, KeyError, TypeError):
        pass
    log.warning("nftables: unrecognised set element %r", value)
    return None


def table_listed(text: str) -> bool:
    try:
        items = json.loads(text)["nftables"]
    except (ValueError, KeyError, TypeError):
        return True  # unreadable: do not claim the table is missing
    return any(
        isinstance(item, dict)
        and item.get("table", {}).get("name") == TABLE
        and item["table"].get("family") == FAMILY
        for item in items
    )
