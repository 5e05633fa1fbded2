"""The default backend: bans as elements of two nftables sets, with their lifetime in the kernel.

Layout, inside the table the daemon already owns (``inet portsentinel``; its ``conntrack``
chain is none of this module's business, and the table is never flushed or deleted here)::

    set ban4 { type ipv4_addr; flags timeout; }              (+ interval with prefix bans)
    set ban6 { type ipv6_addr; flags timeout; }
    chain input   { type filter hook input priority filter - 10; policy accept;
                    ip saddr @ban4 counter drop; ip6 saddr @ban6 counter drop }
    chain forward { the same, hook forward }
    chain output  { type filter hook output ...; ip daddr @ban4 counter drop; ... }

A ban is ``add element inet portsentinel ban4 { 198.18.0.2 timeout 3600s }`` (no timeout:
permanent), so it ends in the kernel even when the daemon is down. Several bans go in one
``nft -f -`` transaction, run in-process through libnftables when it loads (``libnft.py``),
else one process per batch; never one per packet. ``check`` reads the whole table once as
JSON; ``repair`` rebuilds what another tool removed (``nft flush ruleset``, say) and re-adds
the bans it is given.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from portsentinel.block.base import (
    ActionDetail,
    BackendBase,
    BanSpec,
    CheckResult,
    ban_fields,
    detail_ban,
    kernel_timeout,
    key_of,
)
from portsentinel.block.libnft import LibnftRunner, select_runner
from portsentinel.block.runner import CommandRunner, RunResult
from portsentinel.errors import BackendError

log = logging.getLogger(__name__)

FAMILY = "inet"
TABLE = "portsentinel"
TABLE_REF = f"{FAMILY} {TABLE}"
SET4 = "ban4"
SET6 = "ban6"
CHAINS = ("input", "forward", "output")  # each named after its hook
# The address a chain's rule matches: the source coming in, the destination going out (after a
# ban nothing leaves the host for the banned address either).
_FIELD = {"input": "saddr", "forward": "saddr", "output": "daddr"}
# Before the usual filter chains (priority 0), so an accept there cannot let a banned source in.
PRIORITY = -10
PRIORITY_TEXT = "filter - 10"
# nft 1.0 refuses timeouts of 10^8 s and more; longer bans are applied for this long (1000
# days) and re-added by repair while the daemon runs.
MAX_TIMEOUT = 86_400_000
# Elements per ``add element`` line: keeps a rejected line's error message short.
_CHUNK = 500

_SET_TYPES = {SET4: "ipv4_addr", SET6: "ipv6_addr"}
_RULE_MATCH = ((SET4, "ip"), (SET6, "ip6"))


@dataclass
class TableState:
    """What ``nft -j list table`` showed of this backend's own objects."""

    exists: bool = False
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> JSON "set" object
    chains: dict[str, dict[str, Any]] = field(default_factory=dict)
    rules: dict[str, list[list[Any]]] = field(default_factory=dict)  # chain -> rule exprs


class NftablesBackend(BackendBase):
    """Bans as set elements; see the module docstring."""

    name = "nftables"

    def __init__(
        self,
        runner: CommandRunner,
        *,
        prefix_bans: bool = False,
        nft: str = "nft",
        in_process: bool = True,
    ) -> None:
        """``in_process``: run nft through libnftables when ``runner`` is a plain local
        ``Runner`` (``libnft.select_runner``); False keeps every command a subprocess."""
        super().__init__()
        self._runner = select_runner(runner, nft) if in_process else runner
        self._prefix_bans = prefix_bans
        self._nft = nft

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Create the sets, chains and rules that are missing; existing bans are kept."""
        state = self._inspect()
        for problem in _incompatible_sets(state, self._prefix_bans):
            log.warning("nftables: %s; recreating it, its bans return with repair", problem)
        result = self._apply(structure_script(state, self._prefix_bans))
        if not result.ok:
            raise self._fail(f"cannot create the nftables structure: {result.describe()}")
        self._ok()

    def block(self, ban: BanSpec) -> ActionDetail:
        outcome = self.block_many([ban])[0]
        if isinstance(outcome, BackendError):
            raise outcome
        return outcome

    def block_many(self, bans: Sequence[BanSpec]) -> list[ActionDetail | BackendError]:
        """All bans in one transaction; when it is refused, find the culprits by halving."""
        results: dict[int, ActionDetail | BackendError] = {}
        allowed = []
        for index, ban in enumerate(bans):
            if ban.is_host or self._prefix_bans:
                allowed.append((index, ban))
            else:
                results[index] = self._fail(
                    f"{ban.key}: prefix bans need sets with the interval flag", degrade=False
                )
        if allowed:
            self._add(allowed, results)
        return [results[i] for i in range(len(bans))]

    def renew(self, bans: Sequence[BanSpec]) -> None:
        """Give elements that are already in the kernel (added by the detection loop's first
        ban, ``nfnetlink``) their final timeout, in one transaction; a missing one is added."""
        result = self._apply(renew_script(bans))
        if not result.ok:
            raise self._fail(f"cannot renew {len(bans)} bans: {result.describe()}", degrade=False)

    def unblock(self, detail: ActionDetail) -> None:
        """Remove the element; an element already gone (expired, flushed) is fine."""
        ban = detail_ban(detail, self.name)
        result = self._apply(delete_script(ban))
        if not result.ok:
            raise self._fail(f"cannot remove {ban.key}: {result.describe()}", degrade=False)

    def stop(self) -> None:
        """Free the in-process nft context, if any; the bans stay in the kernel."""
        if isinstance(self._runner, LibnftRunner):
            self._runner.close()

    def check(self) -> CheckResult:
        state = self._inspect()
        problems = structure_problems(state, self._prefix_bans)
        present: dict[str, float | None] = {}
        for name in (SET4, SET6):
            present.update(set_elements(state.sets.get(name, {})))
        return CheckResult(not problems, tuple(problems), present)

    # --- the work ---------------------------------------------------------------------------------
    def _add(
        self,
        batch: list[tuple[int, BanSpec]],
        results: dict[int, ActionDetail | BackendError],
        structure_checked: bool = False,
    ) -> None:
        result = self._apply(add_script([ban for _, ban in batch]))
        if result.ok:
            for index, ban in batch:
                results[index] = ban_detail(ban)
            self._ok()
            return
        problems = [] if structure_checked else self._current_problems()
        if problems or len(batch) == 1:
            why = f" ({'; '.join(problems)})" if problems else ""
            error = self._fail(
                f"cannot add {_describe_batch(batch)}: {result.describe()}{why}",
                degrade=bool(problems),
            )
            for index, _ in batch:
                results[index] = error
            return
        middle = len(batch) // 2  # the structure is fine: some bans are refused; find them
        self._add(batch[:middle], results, structure_checked=True)
        self._add(batch[middle:], results, structure_checked=True)

    def _current_problems(self) -> list[str]:
        """After a refused transaction: is our structure to blame?"""
        try:
            return structure_problems(self._inspect(), self._prefix_bans)
        except BackendError as exc:
            return [str(exc)]

    def _apply(self, script: str) -> RunResult:
        return self._runner.run([self._nft, "-f", "-"], input=script)

    def _inspect(self) -> TableState:
        """The table as JSON; a missing table is an empty state, not an error."""
        result = self._runner.run([self._nft, "-j", "list", "table", FAMILY, TABLE])
        if result.ok:
            try:
                return parse_table(result.stdout)
            except ValueError as exc:
                raise self._fail(f"unreadable nft output: {exc}") from None
        tables = self._runner.run([self._nft, "-j", "list", "tables", FAMILY])
        if tables.ok and not _table_listed(tables.stdout):
            return TableState()
        raise self._fail(f"cannot read table {TABLE_REF}: {result.describe()}")


# --- scripts (pure) ---------------------------------------------------------------------------
def set_name(ban: BanSpec) -> str:
    return SET6 if ban.version == 6 else SET4


def element(ban: BanSpec) -> str:
    """The element as nft writes it: ``198.18.0.2 timeout 3600s``, ``fd00:5e::/64``."""
    seconds = kernel_timeout(ban, MAX_TIMEOUT)
    return ban.key if seconds is None else f"{ban.key} timeout {seconds}s"


def ban_detail(ban: BanSpec) -> ActionDetail:
    detail = ban_fields(ban, NftablesBackend.name)
    detail.update(
        table=TABLE_REF,
        set=set_name(ban),
        element=ban.key,
        timeout=kernel_timeout(ban, MAX_TIMEOUT),
    )
    return detail


def add_script(bans: Sequence[BanSpec]) -> str:
    """``add element`` lines, grouped by set; adding an element already there succeeds."""
    lines = []
    for name in (SET4, SET6):
        elements = [element(ban) for ban in bans if set_name(ban) == name]
        for start in range(0, len(elements), _CHUNK):
            chunk = ", ".join(elements[start : start + _CHUNK])
            lines.append(f"add element {TABLE_REF} {name} {{ {chunk} }}\n")
    return "".join(lines)


def renew_script(bans: Sequence[BanSpec]) -> str:
    """Add, delete, add again with the new timeout: the kernel keeps an existing element's
    timeout on a plain add, and the delete can never meet a missing element."""
    lines = []
    for ban in bans:
        ref = f"{TABLE_REF} {set_name(ban)}"
        lines.append(f"add element {ref} {{ {ban.key} }}\ndelete element {ref} {{ {ban.key} }}\n")
    return "".join(lines) + add_script(bans)


def delete_script(ban: BanSpec) -> str:
    """Add then delete in one transaction: the delete can never meet a missing element, so
    unblocking an expired ban succeeds without reading nft's error messages."""
    ref = f"{TABLE_REF} {set_name(ban)} {{ {ban.key} }}"
    return f"add element {ref}\ndelete element {ref}\n"


def set_flags(prefix_bans: bool) -> tuple[str, ...]:
    return ("interval", "timeout") if prefix_bans else ("timeout",)


def structure_script(state: TableState, prefix_bans: bool) -> str:
    """One transaction that leaves exactly our structure in place, existing elements kept.

    Our chains are flushed and refilled (never the table); a set whose type or flags do not
    fit is deleted first (after the flush that drops the rules referring to it).
    """
    lines = [f"add table {TABLE_REF}"]
    lines += [f"flush chain {TABLE_REF} {chain}" for chain in CHAINS if chain in state.chains]
    lines += [
        f"delete chain {TABLE_REF} {chain}"
        for chain in CHAINS
        if chain in state.chains and _chain_problem(chain, state.chains[chain])
    ]
    stale = {name for name, _ in _incompatible_sets(state, prefix_bans)}
    lines += [f"delete set {TABLE_REF} {name}" for name in (SET4, SET6) if name in stale]
    flags = ", ".join(set_flags(prefix_bans))
    for name in (SET4, SET6):
        lines.append(f"add set {TABLE_REF} {name} {{ type {_SET_TYPES[name]}; flags {flags}; }}")
    for chain in CHAINS:
        lines.append(
            f"add chain {TABLE_REF} {chain} "
            f"{{ type filter hook {chain} priority {PRIORITY_TEXT}; policy accept; }}"
        )
        for name, proto in _RULE_MATCH:
            lines.append(
                f"add rule {TABLE_REF} {chain} {proto} {_FIELD[chain]} @{name} counter drop"
            )
    return "".join(f"{line}\n" for line in lines)


# --- reading the table (pure) -------------------------------------------------------------
def parse_table(text: str) -> TableState:
    """Our sets, chains and rules from ``nft -j list table inet portsentinel``."""
    try:
        items = json.loads(text)["nftables"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not nft JSON: {exc}") from None
    state = TableState()
    for item in items:
        if not isinstance(item, dict):
            continue
        if "table" in item:
            state.exists = True
        elif "set" in item and item["set"].get("name") in _SET_TYPES:
            state.sets[item["set"]["name"]] = item["set"]
        elif "chain" in item and item["chain"].get("name") in CHAINS:
            state.chains[item["chain"]["name"]] = item["chain"]
        elif "rule" in item and item["rule"].get("chain") in CHAINS:
            state.rules.setdefault(item["rule"]["chain"], []).append(item["rule"].get("expr", []))
    return state


def structure_problems(state: TableState, prefix_bans: bool) -> list[str]:
    """What is missing or wrong in our structure; empty when all is in place."""
    if not state.exists:
        return [f"table {TABLE_REF} is missing"]
    problems = [problem for _, problem in _incompatible_sets(state, prefix_bans)]
    problems += [f"set {name} is missing" for name in (SET4, SET6) if name not in state.sets]
    for chain in CHAINS:
        spec = state.chains.get(chain)
        if spec is None:
            problems.append(f"chain {chain} is missing")
            continue
        if problem := _chain_problem(chain, spec):
            problems.append(problem)
        rules = state.rules.get(chain, [])
        field = _FIELD[chain]
        for name, proto in _RULE_MATCH:
            if not any(_is_drop_rule(expr, proto, name, field) for expr in rules):
                problems.append(f"chain {chain} has no '{proto} {field} @{name} drop' rule")
    return problems


def _incompatible_sets(state: TableState, prefix_bans: bool) -> Iterator[tuple[str, str]]:
    for name, spec in state.sets.items():
        flags = spec.get("flags", [])
        flags = [flags] if isinstance(flags, str) else flags
        missing = [flag for flag in set_flags(prefix_bans) if flag not in flags]
        if spec.get("type") != _SET_TYPES[name]:
            yield name, f"set {name} has type {spec.get('type')!r}, not {_SET_TYPES[name]}"
        elif missing:
            yield name, f"set {name} lacks the flags {', '.join(missing)}"


def _chain_problem(chain: str, spec: Mapping[str, Any]) -> str | None:
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
        key = _element_key(value)
        if key is not None:
            found[key] = float(expires) if expires is not None else None
    return found


def _element_key(value: Any) -> str | None:
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


def _table_listed(text: str) -> bool:
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


def _describe_batch(batch: Sequence[tuple[int, BanSpec]]) -> str:
    if len(batch) == 1:
        return batch[0][1].key
    return f"{len(batch)} bans ({batch[0][1].key} ...)"
