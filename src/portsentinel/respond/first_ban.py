"""A triggered source's ban reaches the kernel from the detection loop itself, at once.

During a real scan every millisecond between the first probe and the ban is ports answered.
The response worker (a thread: it waits for the GIL while the loop decodes the rest of the
batch, then writes the store before it touches the kernel) took 3-9 ms from decision to
element under ``nmap -T4``. So the nftables element goes first, from the loop, by one netlink
message (``block/nfnetlink.py``, ~20 us), and the worker does the rest as before, behind it:
the store, the other backends, the history file, the log lines.

What is applied here is the ban the worker would apply: only for BLOCK_x=1 with the nftables
backend in the plan, a host element in a hash set (with IPV6_PREFIX_AFTER an IPv6 ban may
widen to a prefix, which only the worker can decide: those wait for it), and never when
KILL_RUN_CMD_FIRST asks for the command to run before the block. Its timeout is a first
offence's; the worker gives a repeat offender's element its longer one (``BanRequest``'s
``in_kernel`` and ``kernel_timeout`` say what was applied). When the kernel refuses (the
table was flushed, say), the request goes to the worker unchanged, which applies and repairs
as before.

``kill -9`` between the element and the worker's store write leaves an element the store does
not know: start-up adopts it with the time it has left (``BanManager.restore``).

Several bans in one loop turn: the first goes at once, the others are held and sent in one
netlink transaction when the turn ends (``flush``): a distributed scan's thousands of new
sources cost one message per turn, not one each.

The turn's first ban is the short path of a scan's first probe (``bench/scan_ban.py --trace``
times it): its message was built at start (``ElementWriter.prepare``; only the key and the
sequence numbers are written in), it goes to the inet set alone (a transaction over one table
is the shorter: 142 us against 191 us with the netdev copy, medians after 0.2 s idle on 6.18,
``bench/first_ban_parts.py``), and the request's evidence is gathered after it. Its netdev
copy (``block/ingress.py``) follows when the turn ends, with the copies of the others sent at
once; the held bans write both tables in one transaction as before.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections.abc import Callable, Mapping

from portsentinel.block import BanSpec, ingress, plan_actions
from portsentinel.block.base import kernel_timeout
from portsentinel.block.nfnetlink import ElementWriter
from portsentinel.block.nft_state import MAX_TIMEOUT, SET4, SET6, TABLE
from portsentinel.block.table import ConntrackChain
from portsentinel.config.schema import Settings
from portsentinel.errors import BackendError
from portsentinel.model import UNSOLICITED_GROUP, Proto
from portsentinel.respond.backends import terms_of
from portsentinel.respond.bans import BanRequest

HOLD_MAX = 256  # held bans sent at once, before the turn ends
_FIRST = BanRequest("", 0, Proto.TCP, None, 1, "")  # a first offence, to build its messages


def eligible(settings: Settings) -> bool:
    """Do these settings let a ban go to the kernel before the worker sees it?"""
    if settings.block_backend.value != "nftables" or settings.kill_run_cmd_first:
        return False
    return nftables_planned(settings)


def nftables_planned(settings: Settings) -> bool:
    """Does a ban of these settings (BLOCK_x 1) go to the nftables backend?"""
    s = settings
    plan = plan_actions(
        1,
        backend=s.block_backend.value,
        kill_route=s.kill_route,
        kill_hosts_deny=s.kill_hosts_deny,
        kill_run_cmd=s.kill_run_cmd,
        kill_run_cmd_first=s.kill_run_cmd_first,
    )
    return "nftables" in plan


class FirstBan:
    """See the module docstring. Used from the detection loop's thread only."""

    def __init__(
        self,
        settings: Settings,
        log: Callable[[str], None],
        writer: ElementWriter | None = None,
    ) -> None:
        self._writer = writer if writer is not None else ElementWriter(TABLE, mirror=ingress.TABLE)
        self._log = log
        self.reconfigure(settings)
        self._held: list[tuple[BanRequest, BanSpec, int | None]] = []
        self._copies: list[tuple[str, bytes, int | None]] = []  # sent at once: set, key, ms
        self._sent_this_turn = False
        self.applied = 0
        self.refused = 0

    def reconfigure(self, settings: Settings) -> None:
        self.enabled = eligible(settings)
        terms = terms_of(settings)
        self._seconds = terms.length(0)[0]
        self._short = terms.short()
        self._decoy = terms.decoy
        self._ipv6 = settings.ipv6_prefix_after == 0
        if self.enabled:  # a first offence's messages built, the socket open: before a scan
            timeout = self._timeout(_FIRST)
            millis = None if timeout is None else timeout * 1000
            self._writer.prepare(SET4, 4, millis, mirror=False)
            self._writer.prepare(SET6, 16, millis, mirror=False)
            with contextlib.suppress(BackendError):  # said by the first ban, if it stays so
                self._writer.open()

    def take(
        self,
        request: BanRequest,
        send: Callable[[BanRequest], None],
        evidence: Callable[[], Mapping[str, object]] | None = None,
    ) -> None:
        """Apply ``request``'s element now (the turn's first) or at the turn's end, then hand
        the request on through ``send``; requests this path does not serve go on at once.
        ``evidence`` (when given) is asked after the turn's first element is in the kernel,
        and goes with the request: gathering it does not delay the ban."""
        if not self._sent_this_turn and self._at_once(request, send, evidence):
            return
        if evidence is not None:
            request = _sent(request, request.kernel_timeout, evidence(), request.in_kernel)
        spec = self._spec(request)
        if spec is None:
            send(request)
            return
        timeout = kernel_timeout(spec, MAX_TIMEOUT)
        self._held.append((request, spec, timeout))
        if not self._sent_this_turn or len(self._held) >= HOLD_MAX:
            self._sent_this_turn = True
            self._send(send)

    def _at_once(
        self,
        request: BanRequest,
        send: Callable[[BanRequest], None],
        evidence: Callable[[], Mapping[str, object]] | None,
    ) -> bool:
        """The turn's first ban of a plain host address, the short way: no ban object, the
        element's message built in advance (``ElementWriter.add_one``); False when this
        request needs the general way (``_spec``)."""
        if not self.enabled or request.level != 1 or request.manual or request.in_kernel:
            return False
        key = host_key(request.address)
        if key is None or (len(key) == 16 and not self._ipv6):
            return False
        self._sent_this_turn = True
        timeout = self._timeout(request)
        name, millis = SET6 if len(key) == 16 else SET4, None if timeout is None else timeout * 1000
        try:
            self._writer.add_one(name, key, millis, mirror=False)  # the ban: the inet set
        except BackendError as exc:
            self._refused(1, exc)
            done = False
        else:
            self.applied += 1
            self._copies.append((name, key, millis))  # the ingress copy at the turn's end
            done = True
        found = request.evidence if evidence is None else evidence()
        send(_sent(request, timeout if done else None, found, done))
        return True

    def end_turn(self, send: Callable[[BanRequest], None]) -> None:
        """The loop turn is over: the ingress copies of the bans sent at once, then what was
        held; the next turn's first goes at once."""
        if self._copies:
            self._copy()
        if self._held:
            self._send(send)
        self._sent_this_turn = False

    def _copy(self) -> None:
        """The netdev copies (``block/ingress.py``) of the turn's first bans. Their inet
        elements are the bans; a copy only drops the source earlier and counts what it sent.
        Without the netdev table (not made, no netdev family) there is nothing to copy to."""
        copies, self._copies = self._copies, []
        try:
            for name in (SET4, SET6):
                elements = [(key, millis) for set_name, key, millis in copies if set_name == name]
                if elements:
                    self._writer.copy(name, elements)
        except BackendError as exc:
            self._log(f"adminalert: WARNING: ingress copies of first bans not written ({exc})")

    def _timeout(self, request: BanRequest) -> int | None:
        """The element's timeout in whole seconds (None: permanent), as ``kernel_timeout``
        gives it for ``_spec``'s ban."""
        seconds = self._short if request.provisional else self._seconds
        if request.decoy:
            seconds = self._decoy if seconds is None else min(seconds, self._decoy)
        if seconds is None:
            return None
        return max(1, min(math.ceil(seconds), MAX_TIMEOUT))

    def _spec(self, request: BanRequest) -> BanSpec | None:
        if not self.enabled or request.level != 1 or request.manual or request.in_kernel:
            return None
        try:
            seconds = self._short if request.provisional else self._seconds
            if request.decoy:
                seconds = self._decoy if seconds is None else min(seconds, self._decoy)
            spec = BanSpec.create(request.address, port=request.port, proto=request.proto,
                                  mode=request.mode, timeout=seconds)  # fmt: skip
        except ValueError:
            return None
        if spec.version == 6 and not self._ipv6:
            return None
        return spec

    def _send(self, send: Callable[[BanRequest], None]) -> None:
        held, self._held = self._held, []
        by_set: dict[str, list[tuple[bytes, int | None]]] = {SET4: [], SET6: []}
        for _request, spec, timeout in held:
            v6 = spec.version == 6  # the spec's address is normalised: the C parser takes it
            key = socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, spec.address)
            by_set[SET6 if v6 else SET4].append((key, None if timeout is None else timeout * 1000))
        done = True
        try:
            for name, elements in by_set.items():
                self._writer.add(name, elements)
        except BackendError as exc:
            done = False
            self._refused(len(held), exc)
        if done:
            self.applied += len(held)
        for request, _spec, timeout in held:
            send(_sent(request, timeout) if done else request)

    def _refused(self, count: int, exc: BackendError) -> None:
        self.refused += count
        if self.refused == count or self.refused % 1000 < count:
            self._log(
                f"adminalert: ERROR: first bans not sent to the kernel ({exc}); the "
                "response worker applies them"
            )

    def close(self) -> None:
        self._writer.close()


def _sent(
    r: BanRequest,
    timeout: int | None,
    evidence: Mapping[str, object] | None = None,
    in_kernel: bool = True,
) -> BanRequest:
    """``r`` with its element in the kernel (and ``evidence`` when given): ``dataclasses.
    replace`` without its cost (about ten times a plain construction, in the loop, once per
    ban of a burst)."""
    found = r.evidence if evidence is None else evidence
    return BanRequest(r.address, r.port, r.proto, r.mode, r.level, r.reason, r.rule, found,
                      r.duration, r.manual, in_kernel, timeout, r.provisional, r.decoy)  # fmt: skip


def host_key(address: str) -> bytes | None:
    """The packed address of a plain IPv4 or IPv6 host address text, as the set's key; None
    for anything else (an IPv4-mapped IPv6 address, a network, a name: ``BanSpec`` decides)."""
    try:
        return socket.inet_pton(socket.AF_INET, address)
    except OSError:
        pass
    try:
        key = socket.inet_pton(socket.AF_INET6, address)
    except OSError:
        return None
    return None if key.startswith(_MAPPED) else key


_MAPPED = bytes(10) + b"\xff\xff"


def install_conntrack(settings: Settings, log: Callable[[str], None]) -> ConntrackChain | None:
    """The table's connection-tracking chain (``block/table.py``), installed by the response
    worker at start beside the first bans' sets; None (said) when the kernel refuses it."""
    s = settings
    ssh = s.ssh_ports if s.never_block_ssh_peers else ()
    chain = ConntrackChain(ssh_ports=ssh, ack_group=UNSOLICITED_GROUP if s.ack_probes else None)
    failure = chain.install()
    if failure is None:
        return chain
    chain.close()
    log(
        f"adminalert: WARNING: cannot turn connection tracking on ({failure}); "
        "late UDP replies are recognised only if the firewall tracks them"
    )
    return None
