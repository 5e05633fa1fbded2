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

With ``ingress``, every ban set has a copy in ``netdev portsentinel`` whose chains drop at
the ingress hook, before the capture and conntrack see the packet (``ingress.py``); each
write goes to both in one transaction. Where the kernel has no netdev family the bans drop
at the input hook only, and ``ingress_problem`` says why.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable, Sequence

from portsentinel.block import ingress as netdev
from portsentinel.block import quiet
from portsentinel.block.base import (
    ActionDetail,
    BackendBase,
    BanSpec,
    CheckResult,
    ban_fields,
    detail_ban,
    kernel_timeout,
)
from portsentinel.block.libnft import LibnftRunner, select_runner
from portsentinel.block.nft_state import (
    CHAINS,
    FAMILY,
    FIELD,
    MAX_TIMEOUT,
    PRIORITY_TEXT,
    RULE_MATCH,
    SET4,
    SET6,
    SET_TYPES,
    TABLE,
    TABLE_REF,
    TableState,
    chain_problem,
    element_key,
    incompatible_sets,
    parse_table,
    set_elements,
    set_flags,
    structure_problems,
    table_listed,
)
from portsentinel.block.runner import CommandRunner, RunResult
from portsentinel.errors import BackendError

log = logging.getLogger(__name__)

# Elements per ``add element`` line: keeps a rejected line's error message short.
_CHUNK = 500


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
        ingress: bool = False,
        devices: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        """``in_process``: run nft through libnftables when ``runner`` is a plain local
        ``Runner`` (``libnft.select_runner``); False keeps every command a subprocess.
        ``ingress``: keep the netdev copies (``devices`` lists the interfaces' names)."""
        super().__init__()
        self._runner = select_runner(runner, nft) if in_process else runner
        self._prefix_bans = prefix_bans
        self._nft = nft
        self._ingress = ingress
        self._devices = devices if devices is not None else _interface_names
        self._chains: dict[str, str] = {}  # ingress chain -> its device
        self._seen: frozenset[str] = frozenset()
        self.ingress_problem: str | None = None
        self.drops = netdev.DropTotals()
        self.quiet = quiet.QuietTotals()  # what quiet sources sent (``quiet.py``)

    @property
    def _tables(self) -> tuple[str, ...]:
        return (TABLE_REF, netdev.TABLE_REF) if self._ingress else (TABLE_REF,)

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Create the sets, chains and rules that are missing; existing bans are kept."""
        state = self._inspect()
        for problem in incompatible_sets(state, self._prefix_bans):
            log.warning("nftables: %s; recreating it, its bans return with repair", problem)
        result = self._apply(structure_script(state, self._prefix_bans))
        if not result.ok:
            raise self._fail(f"cannot create the nftables structure: {result.describe()}")
        if self._ingress:
            self._start_ingress(state)
        self._ok()

    def _start_ingress(self, state: TableState) -> None:
        """The netdev copies: structure, chains for today's interfaces, and the bans the inet
        sets hold (a restart, an older table). Refused: bans drop at the input hook only."""
        devices = frozenset(self._devices())
        try:
            now = self._inspect_ingress()
        except BackendError as exc:
            return self._no_ingress(str(exc))
        script = netdev.structure_script(now, self._prefix_bans, devices)
        script += "".join(f"{line}\n" for line in quiet.reset_lines(TABLE_REF))
        copies = [_copy(key, left) for name in (SET4, SET6)
                  for key, left in set_elements(state.sets.get(name, {})).items()]  # fmt: skip
        result = self._apply(script + add_script([c for c in copies if c], (netdev.TABLE_REF,)))
        if not result.ok:
            return self._no_ingress(result.describe())
        self._chains = {netdev.chain_name(dev): dev for dev in netdev.hooked(devices)}
        self._seen = devices
        self.ingress_problem = None
        return None

    def _no_ingress(self, why: str) -> None:
        log.warning("nftables: bans drop at the input hook only, not at ingress: %s", why)
        self.ingress_problem = why
        self._ingress = False

    def follow(self) -> None:
        """Hook interfaces that appeared since the last call, unhook those gone (cheap when
        nothing changed: one interface listing)."""
        if not self._ingress:
            return
        devices = frozenset(self._devices())
        if devices == self._seen:
            return
        script = netdev.follow_script(self._chains, devices)
        if script and not self._apply(script).ok:
            return  # an interface came or went meanwhile: the next call tries again
        self._chains = {netdev.chain_name(dev): dev for dev in netdev.hooked(devices)}
        self._seen = devices

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
        result = self._apply(renew_script(bans, self._tables))
        if not result.ok:
            raise self._fail(f"cannot renew {len(bans)} bans: {result.describe()}", degrade=False)

    def unblock(self, detail: ActionDetail) -> None:
        """Remove the element; an element already gone (expired, flushed) is fine."""
        ban = detail_ban(detail, self.name)
        result = self._apply(delete_script(ban, self._tables))
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
        if self._ingress:
            problems += self._ingress_problems(set(present))
            reset = state.rules.get(quiet.RESET_CHAIN, [])
            if problem := quiet.reset_problem(state.chains, reset):
                problems.append(problem)
        return CheckResult(not problems, tuple(problems), present)

    def _ingress_problems(self, keys: set[str]) -> list[str]:
        """The netdev copies' problems; the elements' counters are read on the way."""
        try:
            state = self._inspect_ingress()
        except BackendError as exc:
            return [str(exc)]
        self._seen = frozenset()  # the next ``follow`` compares the chains afresh
        self._chains = state.devices()
        found = netdev.problems(state, self._prefix_bans, self._devices())
        missing = keys - netdev.element_keys(state)
        if missing:
            found.append(f"{len(missing)} bans are missing from the ingress sets")
        self.drops.update(netdev.element_counts(state, element_key))
        self.quiet.update(quiet.element_counts(state.sets))
        return found

    def read_counters(self) -> None:
        """Read the ingress elements' counters now (the check reads them every 10 s)."""
        if self._ingress:
            state = self._inspect_ingress()
            self.drops.update(netdev.element_counts(state, element_key))
            self.quiet.update(quiet.element_counts(state.sets))

    def ingress_counts(self) -> dict[str, netdev.Counts]:
        """Ban key -> (packets, bytes) dropped at ingress, as the last check read them."""
        return dict(self.drops.last)

    # --- the work ---------------------------------------------------------------------------------
    def _add(
        self,
        batch: list[tuple[int, BanSpec]],
        results: dict[int, ActionDetail | BackendError],
        structure_checked: bool = False,
    ) -> None:
        result = self._apply(add_script([ban for _, ban in batch], self._tables))
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

    def _inspect_ingress(self) -> netdev.IngressState:
        result = self._runner.run([self._nft, "-j", "list", "table", *netdev.TABLE_REF.split()])
        if result.ok:
            try:
                return netdev.parse(result.stdout)
            except ValueError as exc:
                raise BackendError(f"unreadable nft output: {exc}") from None
        tables = self._runner.run([self._nft, "-j", "list", "tables", netdev.FAMILY])
        if tables.ok:
            return netdev.IngressState()  # not there (or nothing listed): made by start
        raise BackendError(f"cannot read table {netdev.TABLE_REF}: {result.describe()}")

    def _inspect(self) -> TableState:
        """The table as JSON; a missing table is an empty state, not an error."""
        result = self._runner.run([self._nft, "-j", "list", "table", FAMILY, TABLE])
        if result.ok:
            try:
                return parse_table(result.stdout)
            except ValueError as exc:
                raise self._fail(f"unreadable nft output: {exc}") from None
        tables = self._runner.run([self._nft, "-j", "list", "tables", FAMILY])
        if tables.ok and not table_listed(tables.stdout):
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
    """What undoing the element needs: the ban's own fields (``ban_fields``; the element is
    its ``key``) and ``held_fields``."""
    detail = ban_fields(ban, NftablesBackend.name)
    detail.update(held_fields(ban))
    return detail


def held_fields(ban: BanSpec) -> ActionDetail:
    """The part of ``ban_detail`` that is not the ban's own (``ban_fields``): the same for a
    burst's every ban of one family and timeout, which a ban's row keeps as one shared text
    (``store/held.py``)."""
    return {
        "backend": NftablesBackend.name,
        "table": TABLE_REF,
        "set": set_name(ban),
        "timeout": kernel_timeout(ban, MAX_TIMEOUT),
    }


def add_script(bans: Sequence[BanSpec], tables: Sequence[str] = (TABLE_REF,)) -> str:
    """``add element`` lines, grouped by set, for each of ``tables`` (the inet table and its
    ingress copies); adding an element already there succeeds."""
    lines = []
    for table in tables:
        for name in (SET4, SET6):
            elements = [element(ban) for ban in bans if set_name(ban) == name]
            for start in range(0, len(elements), _CHUNK):
                chunk = ", ".join(elements[start : start + _CHUNK])
                lines.append(f"add element {table} {name} {{ {chunk} }}\n")
    return "".join(lines)


def renew_script(bans: Sequence[BanSpec], tables: Sequence[str] = (TABLE_REF,)) -> str:
    """Add, delete, add again with the new timeout: the kernel keeps an existing element's
    timeout on a plain add, and the delete can never meet a missing element."""
    lines = []
    for table in tables:
        for ban in bans:
            ref = f"{table} {set_name(ban)}"
            lines.append(
                f"add element {ref} {{ {ban.key} }}\ndelete element {ref} {{ {ban.key} }}\n"
            )
    return "".join(lines) + add_script(bans, tables)


def delete_script(ban: BanSpec, tables: Sequence[str] = (TABLE_REF,)) -> str:
    """Add then delete in one transaction: the delete can never meet a missing element, so
    unblocking an expired ban succeeds without reading nft's error messages."""
    lines = []
    for table in tables:
        ref = f"{table} {set_name(ban)} {{ {ban.key} }}"
        lines.append(f"add element {ref}\ndelete element {ref}\n")
    return "".join(lines)


def _copy(key: str, left: float | None) -> BanSpec | None:
    """A ban found in the inet sets, as a spec to copy to the ingress sets."""
    if left is not None and left < 1:
        return None
    address, _, prefix = key.partition("/")
    try:
        return BanSpec.create(
            address, prefix=int(prefix) if prefix else None,
            timeout=None if left is None else int(left),
        )  # fmt: skip
    except (ValueError, TypeError):
        return None


def ingress_counts(runner: CommandRunner, nft: str = "nft") -> dict[str, netdev.Counts] | None:
    """Ban key -> (packets, bytes) its ingress copy dropped, read from the kernel now; None
    when the copies cannot be read (no table, no nft, no privilege)."""
    result = runner.run([nft, "-j", "list", "table", *netdev.TABLE_REF.split()])
    if not result.ok:
        return None
    try:
        return netdev.element_counts(netdev.parse(result.stdout), element_key)
    except ValueError:
        return None


def _interface_names() -> list[str]:
    """This network namespace's interfaces, as the kernel lists them."""
    try:
        return [name for _, name in socket.if_nameindex()]
    except OSError:
        return []


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
        if chain in state.chains and chain_problem(chain, state.chains[chain])
    ]
    stale = {name for name, _ in incompatible_sets(state, prefix_bans)}
    lines += [f"delete set {TABLE_REF} {name}" for name in (SET4, SET6) if name in stale]
    flags = ", ".join(set_flags(prefix_bans))
    for name in (SET4, SET6):
        lines.append(f"add set {TABLE_REF} {name} {{ type {SET_TYPES[name]}; flags {flags}; }}")
    for chain in CHAINS:
        lines.append(
            f"add chain {TABLE_REF} {chain} "
            f"{{ type filter hook {chain} priority {PRIORITY_TEXT}; policy accept; }}"
        )
        for name, proto in RULE_MATCH:
            lines.append(
                f"add rule {TABLE_REF} {chain} {proto} {FIELD[chain]} @{name} counter drop"
            )
    return "".join(f"{line}\n" for line in lines)


def _describe_batch(batch: Sequence[tuple[int, BanSpec]]) -> str:
    if len(batch) == 1:
        return batch[0][1].key
    return f"{len(batch)} bans ({batch[0][1].key} ...)"
