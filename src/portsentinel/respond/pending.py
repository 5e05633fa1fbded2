"""A ban on its way: the request the decision step makes, and what ``BanManager.ban_many``
keeps of it between its steps (the plan, the length, the record, the outcomes so far).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

from portsentinel.block import BanSpec
from portsentinel.block.base import ActionDetail, kernel_seconds
from portsentinel.block.nft_state import MAX_TIMEOUT
from portsentinel.block.nftables import ban_detail, held_fields
from portsentinel.errors import BackendError
from portsentinel.model import Mode, Proto
from portsentinel.store.held import ActionRow
from portsentinel.store.records import ActionState, BanRecord, to_json

# (protocol, mode) -> their texts in a ban's evidence: an enum's ``value`` is a property that
# costs a call, twice per ban of a burst.
TEXTS: Final[dict[tuple[Proto, Mode | None], tuple[str, str | None]]] = {
    (proto, mode): (proto.key, None if mode is None else mode.value)
    for proto in Proto
    for mode in (None, *Mode)
}


@dataclass(frozen=True)
class BanRequest:
    """What the decision step asks for: a triggered source and its evidence."""

    address: str
    port: int
    proto: Proto
    mode: Mode | None
    level: int  # BLOCK_x: 1 block, 2 command only
    reason: str
    rule: str | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)
    # A manual `portsentinel block --for`: overrides the computed length (None: permanent).
    duration: float | None = None
    manual: bool = False
    # The detection loop already sent the nftables element (``first_ban``), with this kernel
    # timeout in seconds (None: permanent).
    in_kernel: bool = False
    kernel_timeout: int | None = None
    # Admitted while the ban budget was pressed, without a handshake: a first offence's
    # length at most, and never more than ``budget.SHORT_BAN``.
    provisional: bool = False
    # A decoy group's member without proof of its address: DECOY_BAN_DURATION at most.
    decoy: bool = False

    def sent(self, timeout: int | None) -> BanRequest:
        """This request with its element in the kernel (``in_kernel``, ``kernel_timeout``):
        ``dataclasses.replace`` without its cost. Even a plain construction of this frozen
        class sets each field through ``object.__setattr__`` (~2 us, in the detection loop,
        once per ban of a burst); a copy of its field dictionary is a fraction of that."""
        copy = object.__new__(BanRequest)
        fields = copy.__dict__
        fields.update(self.__dict__)
        fields["in_kernel"] = True
        fields["kernel_timeout"] = timeout
        return copy


@dataclass(eq=False, slots=True)
class Pending:
    """One ban on its way through ``ban_many``."""

    index: int
    req: BanRequest | None  # None: a stored ban re-applied at start-up
    names: list[str]
    seconds: float | None
    offence: int
    prefix: int | None
    spec: BanSpec
    record: BanRecord | None = None
    applied: int = 0
    fresh: bool = False  # recorded by this batch (no action rows yet)
    sent: bool = False  # its nftables element is in the kernel as is (recorded with the ban)

    def evidence(self) -> dict[str, Any]:
        """What the store keeps of the request: its evidence, plan and target."""
        req = self.request
        proto, mode = TEXTS[req.proto, req.mode]
        return {**req.evidence, "plan": self.names, "port": req.port, "proto": proto,
                "mode": mode}  # fmt: skip

    @property
    def request(self) -> BanRequest:
        if self.req is None:
            raise ValueError("a re-applied ban has no request")
        return self.req

    @property
    def ban(self) -> BanRecord:
        if self.record is None:
            raise ValueError("the ban was not recorded yet")
        return self.record


HeldRow = tuple[str, str, int]  # backend, its detail's shared text, ban id (``store/held.py``)
# Action rows, whether they are their bans' first, and the actions their bans' rows hold.
Rows = tuple[list[ActionRow], bool, list[HeldRow]]


def action_rows(
    name: str, outcomes: Sequence[tuple[Pending, ActionDetail | BackendError]], *, hold: bool
) -> tuple[list[ActionRow], list[HeldRow]]:
    """The outcomes of backend ``name`` as action rows; with ``hold`` (bans recorded just
    now, no action of theirs held yet), an nftables element applied as ``ban_detail`` says
    is held in the ban's own row instead: one UPDATE of a row the batch writes anyway, not
    an insert into a second indexed table."""
    rows: list[ActionRow] = []
    held: list[HeldRow] = []
    shared: dict[tuple[int, float | None], str] = {}  # per family and length
    hold = hold and name == "nftables"
    for p, outcome in outcomes:
        if isinstance(outcome, BackendError):
            rows.append((p.ban.id, name, None, ActionState.FAILED, str(outcome)))
            continue
        if hold and outcome == ban_detail(p.spec):
            kind = (p.spec.version, p.spec.timeout)
            text = shared.get(kind)
            if text is None:
                text = shared[kind] = to_json(held_fields(p.spec))
            held.append((name, text, p.ban.id))
            continue
        rows.append((p.ban.id, name, outcome, ActionState.APPLIED, None))
    return rows, held


def sent_as_is(p: Pending) -> bool:
    """Did the detection loop send this ban's element with the timeout the ban wants?"""
    req = p.req
    return (
        req is not None and req.in_kernel and req.kernel_timeout == _kernel_timeout(p.spec.timeout)
    )


@lru_cache(maxsize=64)  # a burst's bans have a few lengths: asked once per ban
def _kernel_timeout(seconds: float | None) -> int | None:
    return kernel_seconds(seconds, MAX_TIMEOUT)
