"""What every response backend shares: the ban it is asked to apply, the record it returns, the
lifecycle it follows, and the bookkeeping of a backend that has failed.

The lifecycle is fail2ban's (start, ban, unban, check, stop, plus repair). A backend only
executes: who is blocked, for how long, and whether at all was decided before it is called.
``block`` returns an ``ActionDetail``, a JSON-serialisable record of exactly what was applied;
the store keeps it, and ``unblock`` undoes the ban from that record alone, also after a restart
and also when the settings have changed since.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from portsentinel.errors import BackendError
from portsentinel.model import Mode, Proto
from portsentinel.networks import canonical_ipv4, canonical_ipv6

log = logging.getLogger(__name__)

# What was applied, enough to undo it later: plain JSON values only.
ActionDetail = dict[str, object]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class BanSpec:
    """One ban to apply.

    ``address`` is the normalised text of an IPv4 or IPv6 address (an IPv4-mapped IPv6
    address is written as IPv4); with ``prefix`` shorter than the family's width it is the
    network address of a prefix ban. ``timeout`` is the number of seconds the ban has left,
    None for a permanent one. ``mode`` is None for a ban that no scan mode decided (a manual
    ``portsentinel block``).
    """

    address: str
    prefix: int
    port: int
    proto: Proto
    mode: Mode | None = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        if not _canonical_host(self.address, self.prefix):  # else: no need to parse
            self._check_network()
        if not 0 <= self.port <= 65535:
            raise ValueError(f"ban port {self.port} is out of range")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"ban timeout {self.timeout} is not positive (None: permanent)")

    def _check_network(self) -> None:
        try:
            net = ipaddress.ip_network(f"{self.address}/{self.prefix}", strict=True)
        except ValueError as exc:
            raise ValueError(f"bad ban {self.address}/{self.prefix}: {exc}") from None
        if str(net.network_address) != self.address or _mapped(net.network_address):
            raise ValueError(f"ban address {self.address!r} is not in normalised form")

    @classmethod
    def create(
        cls,
        address: str,
        *,
        port: int = 0,
        proto: Proto = Proto.TCP,
        mode: Mode | None = None,
        timeout: float | None = None,
        prefix: int | None = None,
    ) -> BanSpec:
        """A ban from any valid address text; ``prefix`` None means the whole address."""
        if prefix in (None, 32) and canonical_ipv4(address):
            return cls._host(address, 32, port, proto, mode, timeout)
        if prefix in (None, 128) and canonical_ipv6(address):
            return cls._host(address, 128, port, proto, mode, timeout)
        parsed: Address = ipaddress.ip_address(address.strip())
        if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
            parsed = parsed.ipv4_mapped
        width = parsed.max_prefixlen if prefix is None else prefix
        net = ipaddress.ip_network(f"{parsed}/{width}", strict=False)
        return cls(str(net.network_address), width, port, proto, mode, timeout)

    @classmethod
    def _host(  # noqa: PLR0917 - the fields, in their order
        cls,
        address: str,
        prefix: int,
        port: int,
        proto: Proto,
        mode: Mode | None,
        timeout: float | None,
    ) -> BanSpec:
        """A host ban whose address text ``create`` found normalised: ``__post_init__``'s
        checks less the address's, which would tell it a second time (a burst's thousands
        of bans each pay for every check)."""
        if not 0 <= port <= 65535 or (timeout is not None and not timeout > 0):
            return cls(address, prefix, port, proto, mode, timeout)  # says what is wrong
        spec = object.__new__(cls)
        put = object.__setattr__  # what the frozen class's own __init__ does, field by field
        put(spec, "address", address)
        put(spec, "prefix", prefix)
        put(spec, "port", port)
        put(spec, "proto", proto)
        put(spec, "mode", mode)
        put(spec, "timeout", timeout)
        return spec

    @property
    def network(self) -> Network:
        return ipaddress.ip_network(f"{self.address}/{self.prefix}")

    @property
    def version(self) -> int:
        """4 or 6."""
        return 6 if ":" in self.address else 4

    @property
    def is_host(self) -> bool:
        """A single address rather than a prefix."""
        return self.prefix == (128 if self.version == 6 else 32)

    @property
    def key(self) -> str:
        """How ``check`` names the ban: the address, or ``net/len`` for a prefix ban."""
        return self.address if self.is_host else f"{self.address}/{self.prefix}"


def _canonical_host(address: str, prefix: int) -> bool:
    """A host address in its normalised text, told without parsing it."""
    if prefix == 32:
        return canonical_ipv4(address)
    return prefix == 128 and canonical_ipv6(address)


def _mapped(address: Address) -> bool:
    return isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None


def key_of(text: str) -> str:
    """Normalise an address or network as found in the kernel to the form ``BanSpec.key``
    uses; raises ValueError for anything else."""
    net = ipaddress.ip_network(text.strip(), strict=True)
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """A backend's view of itself in the kernel (or file).

    ``intact`` says its own structure (table, sets, chains, rules; or the file's safety) is in
    place; ``problems`` says what is not. ``present`` maps the ``BanSpec.key`` of each ban
    found to the seconds it has left in the kernel (None: no kernel-side expiry).
    """

    intact: bool
    problems: tuple[str, ...] = ()
    present: Mapping[str, float | None] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """The lifecycle every response backend follows (see the module docstring)."""

    name: str
    degraded: str | None

    def start(self) -> None:
        """Create what the backend needs; idempotent. Raises BackendError."""

    def block(self, ban: BanSpec) -> ActionDetail:
        """Apply one ban; blocking what is already blocked succeeds. Raises BackendError."""

    def block_many(self, bans: Sequence[BanSpec]) -> list[ActionDetail | BackendError]:
        """Apply several bans (in one transaction where the tool allows). One entry per ban,
        in order: its detail, or the error that kept it from being applied."""

    def unblock(self, detail: ActionDetail) -> None:
        """Undo exactly what ``block`` recorded in ``detail``; idempotent."""

    def check(self) -> CheckResult:
        """Is the structure in place, and which bans are in the kernel."""

    def repair(self, bans: Sequence[BanSpec]) -> list[ActionDetail | BackendError]:
        """Recreate missing structure and re-apply ``bans`` (with their remaining time);
        raises BackendError when the structure cannot be rebuilt."""

    def stop(self) -> None:
        """Release resources; bans stay in the kernel so they outlive the daemon."""


class BackendBase:
    """Shared bookkeeping: the ``degraded`` reason, and defaults built on ``block``.

    A failure logs, records its reason in ``degraded`` and raises BackendError; the caller
    goes on with the other backends. The next success clears ``degraded``.
    """

    name = "backend"

    def __init__(self) -> None:
        self.degraded: str | None = None

    def _fail(self, what: str, *, degrade: bool = True) -> BackendError:
        """Log a failure and return the error to raise; ``degrade`` marks the backend."""
        message = f"{self.name}: {what}"
        log.error("%s", message)
        if degrade:
            self.degraded = what
        return BackendError(message)

    def _ok(self) -> None:
        if self.degraded is not None:
            log.info("%s: working again (was: %s)", self.name, self.degraded)
        self.degraded = None

    def start(self) -> None:
        self._ok()

    def block(self, ban: BanSpec) -> ActionDetail:  # pragma: no cover - every backend has one
        raise NotImplementedError

    def block_many(self, bans: Sequence[BanSpec]) -> list[ActionDetail | BackendError]:
        results: list[ActionDetail | BackendError] = []
        for ban in bans:
            try:
                results.append(self.block(ban))
            except BackendError as exc:
                results.append(exc)
        return results

    def repair(self, bans: Sequence[BanSpec]) -> list[ActionDetail | BackendError]:
        self.start()
        return self.block_many(bans)

    def stop(self) -> None:
        """Nothing to release by default; bans stay where they are."""


def detail_ban(detail: ActionDetail, backend: str) -> BanSpec:
    """The ban a stored detail describes, re-validated: a detail comes back from disk, so it
    is parsed again, never trusted as text to put on a command line."""
    if detail.get("backend") != backend:
        raise BackendError(f"{backend}: detail belongs to {detail.get('backend')!r}")
    try:
        address = str(detail["address"])
        prefix = _as_int(detail["prefix"])
        port = _as_int(detail.get("port", 0))
        proto = Proto[str(detail.get("proto", "TCP")).upper()]
        raw_mode = detail.get("mode")
        mode = Mode(str(raw_mode)) if raw_mode is not None else None
        return BanSpec(address, prefix, port, proto, mode)
    except (KeyError, ValueError, TypeError) as exc:
        raise BackendError(f"{backend}: unusable detail {detail!r}: {exc}") from None


def ban_fields(ban: BanSpec, backend: str) -> ActionDetail:
    """The part of every detail that names the ban (``detail_ban`` reads it back)."""
    return {
        "backend": backend,
        "address": ban.address,
        "prefix": ban.prefix,
        "port": ban.port,
        "proto": ban.proto.key,
        "mode": ban.mode.value if ban.mode is not None else None,
        "key": ban.key,
    }


def _as_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"{value!r} is not a number")
    return int(value)


def kernel_timeout(ban: BanSpec, cap: int) -> int | None:
    """Whole seconds (rounded up, at least 1) for the kernel, at most ``cap``; None: permanent.

    A ban longer than the tool allows is applied for ``cap`` seconds: it still ends in the
    kernel if the daemon is gone, and a running daemon's check and repair re-add it.
    """
    return kernel_seconds(ban.timeout, cap)


def kernel_seconds(timeout: float | None, cap: int) -> int | None:
    """``kernel_timeout`` of a ban of ``timeout`` seconds (None: permanent)."""
    if timeout is None:
        return None
    return max(1, min(math.ceil(timeout), cap))
