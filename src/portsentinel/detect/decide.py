"""The decision step: policy checks that may refuse to act, then BLOCK_TCP/BLOCK_UDP's action.

Two ordered lists of checks, each returning the Reason to refuse or None to pass:
``admission`` runs before a probe is counted (ignore list, own addresses: such probes must not
build up evidence), ``checks`` runs after a rule fired and before the response (already
responded, the never-block set). An action that bans or runs a command must then pass the
evidence floor and the ban budget, and last the host's own word (``confirm``: a question to
the kernel, such as "is this the peer of an SSH session opened a moment ago?", asked only for
what would otherwise act, so the budget bounds how often). Backends only execute what comes
out of here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Container, Mapping
from typing import Final, Protocol

from portsentinel.detect.budget import BanBudget, BudgetConfig
from portsentinel.detect.track import KIND_BIT, SourceState
from portsentinel.model import Action, Proto, Reason, ScanKind
from portsentinel.networks import AddressSet

BLOCK_ACTIONS: Final[dict[int, Action]] = {0: Action.ALERT, 1: Action.BLOCK, 2: Action.COMMAND}
"""PortSentry's BLOCK_TCP/BLOCK_UDP levels: 0 alert only, 1 block, 2 run KILL_RUN_CMD only."""

_ACTING: Final = frozenset({Action.BLOCK, Action.COMMAND})
_CONNECT_BIT: Final = KIND_BIT[ScanKind.CONNECT]
_PROTO_MARK: Final[dict[int, int]] = {Proto.TCP: 1, Proto.UDP: 2}
BLOCKED_MARK: Final = 4
"""The mark of a source banned (a BLOCK covers both protocols)."""
COVERING: Final[dict[int, int]] = {p: mark | BLOCKED_MARK for p, mark in _PROTO_MARK.items()}
"""Per protocol, the marks of which any covers it (``Responses.covers`` written out)."""
_ALREADY_BLOCKED: Final = (Action.IGNORED, Reason.ALREADY_BLOCKED)
_NEVER_BLOCK: Final = (Action.IGNORED, Reason.NEVER_BLOCK)
_BAN_BUDGET: Final = (Action.IGNORED, Reason.BAN_BUDGET)
_WEAK_EVIDENCE: Final = (Action.IGNORED, Reason.WEAK_EVIDENCE)

AdmissionCheck = Callable[[bytes], Reason | None]
"""A check on the source address alone, before the probe is counted."""


class PolicyCheck(Protocol):
    """A check between a fired rule and the response; a Reason refuses to act."""

    def __call__(
        self, src: bytes, proto: Proto, state: SourceState, now: float
    ) -> Reason | None: ...


class Responses:
    """Sources that already got a response, per protocol; bounded, the oldest forgotten first.

    Like 1.2's blocked file: once a source got a response for a protocol, later triggers for
    it are "already blocked". A BLOCK covers both protocols (the firewall drops everything
    from the source); an alert or a command covers only its own protocol.
    """

    __slots__ = ("marks", "max_entries")

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        # Source -> marks (``BLOCKED_MARK``, a bit per protocol); read it in place on a hot
        # path (``blocked`` and ``covers`` written out), change it only through the methods.
        self.marks: OrderedDict[bytes, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self.marks)

    def __contains__(self, src: object) -> bool:
        return src in self.marks

    def covers(self, src: bytes, proto: int) -> bool:
        """True when ``src`` got a response for ``proto`` or a block for either protocol."""
        return bool(self.marks.get(src, 0) & COVERING[proto])

    def blocked(self, src: bytes) -> bool:
        """True when ``src`` got a block (a ban), for either protocol."""
        return bool(self.marks.get(src, 0) & BLOCKED_MARK)

    def remember(self, src: bytes, proto: int, action: Action) -> None:
        """Note a response; refusals (IGNORED) are not responses."""
        if action is Action.IGNORED:
            raise ValueError("an ignored decision is not a response")
        mark = _PROTO_MARK[proto] | (BLOCKED_MARK if action is Action.BLOCK else 0)
        marks = self.marks
        old = marks.pop(src, 0)
        marks[src] = old | mark
        if len(marks) > self.max_entries:
            marks.popitem(last=False)

    def forget(self, src: bytes) -> None:
        self.marks.pop(src, None)


class Policy:
    """Ignore list, own addresses, already-responded, never-block, then the BLOCK level, with
    the evidence floor and the ban budget for actions that touch the firewall or run commands.
    """

    __slots__ = (
        "_actions",
        "_admission",
        "_checks",
        "_standard",
        "budget",
        "confirm",
        "ignore",
        "local",
        "min_ports",
        "never_block",
        "provisional",
        "responses",
    )

    def __init__(
        self,
        *,
        block_levels: Mapping[int, int],
        max_responded: int,
        ignore: AddressSet | None = None,
        local: Container[bytes] | None = None,
        never_block: Container[bytes] | None = None,
        budget: BanBudget | None = None,
        min_ports: int = 1,
    ) -> None:
        """``block_levels`` maps a protocol number to its BLOCK_x level (0, 1 or 2).

        ``min_ports`` (BLOCK_MIN_PORTS): a block or command needs this many distinct ports of
        stealth evidence; a completed handshake (CONNECT) acts at once. 1 is PortSentry.
        """
        self._actions: dict[int, Action] = {}
        for proto, level in block_levels.items():
            if level not in BLOCK_ACTIONS:
                raise ValueError(f"block level {level} is not 0, 1 or 2")
            self._actions[proto] = BLOCK_ACTIONS[level]
        if min_ports < 1:
            raise ValueError("min_ports must be at least 1")
        self.ignore = ignore
        self.local = local
        self.never_block = never_block
        self.budget = budget
        self.min_ports = min_ports
        self.responses = Responses(max_responded)
        self.provisional = False
        """Of the last acting decision: admitted while the budget was pressed, without a
        handshake, so its ban is short (``budget.SHORT_BAN``)."""
        self.confirm: Callable[[bytes], bool] | None = None
        """Asked last before acting: True refuses as the never-block set (the host protects
        ``src``, though the set did not hold it yet)."""
        self._admission: list[AdmissionCheck] = [self.ignore_list, self.own_address]
        self._checks: list[PolicyCheck] = [self.already_responded, self.protected]
        # While both lists hold only these standard checks, ``admit`` and ``decide`` run them
        # written out (no call per check: each probe of a forged flood passes them all).
        self._standard = True

    @property
    def admission(self) -> list[AdmissionCheck]:
        """The admission checks in order (ignore list, own addresses), for a caller to extend;
        reading the list for that hands the checks to it (the standard ones are then called
        one by one, as the list says)."""
        self._standard = False
        return self._admission

    @property
    def checks(self) -> list[PolicyCheck]:
        """The checks between a fired rule and the response (already responded, never-block),
        for a caller to extend: see ``admission``."""
        self._standard = False
        return self._checks

    def reconfigure(
        self,
        *,
        block_levels: Mapping[int, int],
        max_responded: int,
        budget: BudgetConfig,
        min_ports: int,
    ) -> None:
        """A reloaded configuration; the remembered responses and bans in force are kept."""
        actions = {}
        for proto, level in block_levels.items():
            if level not in BLOCK_ACTIONS:
                raise ValueError(f"block level {level} is not 0, 1 or 2")
            actions[proto] = BLOCK_ACTIONS[level]
        if min_ports < 1:
            raise ValueError("min_ports must be at least 1")
        self._actions = actions
        self.min_ports = min_ports
        self.responses.max_entries = max_responded
        if self.budget is not None:
            self.budget.reconfigure(budget)

    def ignore_list(self, src: bytes) -> Reason | None:
        ignore = self.ignore
        return Reason.IGNORE_LIST if ignore and src in ignore else None

    def own_address(self, src: bytes) -> Reason | None:
        # A probe "from" this host is either local traffic or forged to make us block
        # ourselves; both must stay without consequence.
        local = self.local
        return Reason.OWN_ADDRESS if local is not None and src in local else None

    def already_responded(
        self, src: bytes, proto: Proto, state: SourceState, now: float
    ) -> Reason | None:
        return Reason.ALREADY_BLOCKED if self.responses.covers(src, proto) else None

    def protected(self, src: bytes, proto: Proto, state: SourceState, now: float) -> Reason | None:
        # Gateways, resolvers, this host's addresses...: a forged probe "from" one of them must
        # not make us act against it -- not even write the history line fail2ban bans from.
        never = self.never_block
        return Reason.NEVER_BLOCK if never is not None and src in never else None

    def admit(self, src: bytes) -> Reason | None:
        """The first admission check that refuses ``src``, or None to count the probe."""
        if self._standard:  # ``ignore_list`` then ``own_address``, inline
            ignore = self.ignore
            if ignore is not None and src in ignore:  # (an empty set holds nothing)
                return Reason.IGNORE_LIST
            local = self.local
            return Reason.OWN_ADDRESS if local is not None and src in local else None
        for check in self._admission:
            reason = check(src)
            if reason is not None:
                return reason
        return None

    def decide(
        self, src: bytes, proto: Proto, state: SourceState, now: float
    ) -> tuple[Action, Reason]:
        """A fired rule's outcome: refused by a check, or the protocol's action (remembered)."""
        if self._standard:  # ``already_responded`` then ``protected``, inline
            if self.responses.marks.get(src, 0) & COVERING[proto]:
                return _ALREADY_BLOCKED
            never = self.never_block
            if never is not None and src in never:
                return _NEVER_BLOCK
        else:
            for check in self._checks:
                reason = check(src, proto, state, now)
                if reason is not None:
                    return Action.IGNORED, reason
        action = self._actions[proto]
        self.provisional = False
        if action in _ACTING:
            # The evidence floor, then the budget. Refusals are not remembered: the next
            # probe, with more evidence, is judged again.
            min_ports = self.min_ports
            if (
                min_ports > 1
                and state.ports_seen < min_ports
                and not state.kinds & _CONNECT_BIT  # a completed handshake acts at once
            ):
                return _WEAK_EVIDENCE
            budget = self.budget
            if budget is not None and not budget.admit(src, state, now):
                return _BAN_BUDGET  # a forged flood's every probe, once the budget is spent
            confirm = self.confirm
            if confirm is not None and confirm(src):
                if budget is not None:
                    budget.release(src)  # the slot it took goes back
                return _NEVER_BLOCK
            self.provisional = budget is not None and budget.provisional(state, now)
        self.responses.remember(src, proto, action)
        return action, Reason.TRIGGERED

    def restore(self, src: bytes, proto: Proto, action: Action, *, strong: bool = True) -> None:
        """A response that already exists (a ban restored at start-up)."""
        self.responses.remember(src, proto, action)
        if action is Action.BLOCK and self.budget is not None:
            self.budget.restore(src, strong)

    def release(self, src: bytes) -> None:
        """A response ended (ban expired or lifted): the next trigger acts again."""
        self.responses.forget(src)
        if self.budget is not None:
            self.budget.release(src)
