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
import socket
from collections.abc import Callable, Mapping

from portsentinel.block import BanSpec, ingress, plan_actions
from portsentinel.block.base import kernel_seconds
from portsentinel.block.nfnetlink import ElementWriter
from portsentinel.block.nft_state import MAX_TIMEOUT, SET4, SET6, TABLE
from portsentinel.block.table import ConntrackChain
from portsentinel.config.schema import Settings
from portsentinel.errors import BackendError
from portsentinel.model import UNSOLICITED_GROUP, Proto
from portsentinel.networks import canonical_ipv4, canonical_ipv6
from portsentinel.respond.backends import terms_of
from portsentinel.respond.bans import BanRequest

HOLD_MAX = 256  # held bans sent at once, before the turn ends
_FIRST = BanRequest("", 0, Proto.TCP, None, 1, "")  # a first offence, to build its messages

Send = Callable[[list[BanRequest]], None]  # hands requests on to the worker, a list at a time
Evidence = Callable[[], Mapping[str, object]]  # a request's evidence, asked for when needed


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
        self._held: list[tuple[BanRequest, bool, bytes, int | None]] = []
        self._copies: list[tuple[str, bytes, int | None]] = []  # sent at once: set, key, ms
        self._sent_this_turn = False
        self.applied = 0
        self.refused = 0

    def reconfigure(self, settings: Settings) -> None:
        self.enabled = eligible(settings)
        terms = terms_of(settings)
        seconds, short, decoy = terms.length(0)[0], terms.short(), terms.decoy
        # (provisional, decoy) -> (seconds, kernel timeout): worked out once, not per ban
        self._timeouts: dict[tuple[bool, bool], tuple[float | None, int | None]] = {}
        for provisional in (False, True):
            for as_decoy in (False, True):
                length = short if provisional else seconds
                if as_decoy:
                    length = decoy if length is None else min(length, decoy)
                # -1: a length BanSpec refuses (not positive), which the worker says
                bad = length is not None and not length > 0
                timeout = -1 if bad else kernel_seconds(length, MAX_TIMEOUT)
                self._timeouts[provisional, as_decoy] = (length, timeout)
        self._ipv6 = settings.ipv6_prefix_after == 0
        timeout = self._timeout(_FIRST)
        if self.enabled and timeout != -1:  # a first offence's messages built, the socket open
            millis = None if timeout is None else timeout * 1000
            self._writer.prepare(SET4, 4, millis, mirror=False)
            self._writer.prepare(SET6, 16, millis, mirror=False)
            with contextlib.suppress(BackendError):  # said by the first ban, if it stays so
                self._writer.open()

    def take(
        self,
        request: BanRequest,
        send: Send,
        evidence: Evidence | None = None,
    ) -> None:
        """Apply ``request``'s element now (the turn's first) or at the turn's end, then hand
        the request on through ``send``; requests this path does not serve go on at once.
        ``evidence`` (when given) is asked after the turn's first element is in the kernel,
        and goes with the request: gathering it does not delay the ban."""
        if not self._sent_this_turn and self._at_once(request, send, evidence):
            return
        if evidence is not None:
            request = _sent(request, request.kernel_timeout, evidence(), request.in_kernel)
        element = self._element(request)
        if element is None:
            send([request])
            return
        self._held.append((request, *element))
        if not self._sent_this_turn or len(self._held) >= HOLD_MAX:
            self._sent_this_turn = True
            self._send(send)

    def _at_once(
        self,
        request: BanRequest,
        send: Send,
        evidence: Evidence | None,
    ) -> bool:
        """The turn's first ban of a plain host address, the short way: no ban object, the
        element's message built in advance (``ElementWriter.add_one``); False when this
        request needs the general way (``_element``)."""
        if not self.enabled or request.level != 1 or request.manual or request.in_kernel:
            return False
        timeout = self._timeout(request)
        if timeout == -1 or not 0 <= request.port <= 65535:
            return False  # what BanSpec refuses: the worker says why
        key = host_key(request.address)
        if key is None or (len(key) == 16 and not self._ipv6):
            return False
        self._sent_this_turn = True
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
        send([_sent(request, timeout if done else None, found, done)])
        return True

    def end_turn(self, send: Send) -> None:
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
        """The element's timeout in whole seconds (None: permanent; -1: a length BanSpec
        refuses), as ``kernel_timeout`` gives it for the worker's ban."""
        return self._timeouts[request.provisional, request.decoy][1]

    def _element(self, request: BanRequest) -> tuple[bool, bytes, int | None] | None:
        """(IPv6, packed address, kernel timeout) of the request's element; None when this
        path does not serve it. The ``BanSpec`` the worker makes is not needed here: a host
        address in its normalised text is told and packed without one (``BanSpec.create``
        for any other text)."""
        if not self.enabled or request.level != 1 or request.manual or request.in_kernel:
            return None
        timeout = self._timeout(request)
        if timeout == -1 or not 0 <= request.port <= 65535:
            return None  # what BanSpec refuses: the worker says why
        address = request.address
        if canonical_ipv4(address):
            return False, socket.inet_aton(address), timeout
        if not canonical_ipv6(address):
            try:
                spec = BanSpec.create(address, port=request.port, proto=request.proto)
            except ValueError:
                return None
            address = spec.address
            if spec.version == 4:
                return False, socket.inet_aton(address), timeout
        if not self._ipv6:
            return None
        return True, socket.inet_pton(socket.AF_INET6, address), timeout

    def _send(self, send: Send) -> None:
        held, self._held = self._held, []
        by_set: dict[str, list[tuple[bytes, int | None]]] = {SET4: [], SET6: []}
        v4, v6 = by_set[SET4].append, by_set[SET6].append
        for _request, is_v6, key, timeout in held:
            (v6 if is_v6 else v4)((key, None if timeout is None else timeout * 1000))
        done = True
        try:
            for name, elements in by_set.items():
                self._writer.add(name, elements)
        except BackendError as exc:
            done = False
            self._refused(len(held), exc)
        if done:
            self.applied += len(held)
            send([request.sent(timeout) for request, _v6, _key, timeout in held])
        else:
            send([request for request, *_rest in held])

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
    """``r`` with its element in the kernel or not, and ``evidence`` when given: a copy of
    its field dictionary (``BanRequest.sent``'s way), not ``dataclasses.replace``."""
    copy = object.__new__(BanRequest)
    fields = copy.__dict__
    fields.update(r.__dict__)
    fields["in_kernel"] = in_kernel
    fields["kernel_timeout"] = timeout
    if evidence is not None:
        fields["evidence"] = evidence
    return copy


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
