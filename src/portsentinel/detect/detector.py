"""The detector: decoded packets in, decisions out. Pure; time is always an argument.

``feed`` runs for every packet the capture's filter lets through, so everything before a
probe is confirmed is a few index and membership tests on plain values: no object is built
until a packet becomes a decision. The steps, in order:

1. TCP with ACK or RST is not a probe; the kind comes from ``TCP_KIND`` (UDP: UDP; an evasive
   IP fragment: FRAGMENT, whatever flags it claims).
2. The port must be watched by the protocol's stealth mode and not in the in-use view (a SYN
   or datagram to a port in use is a success for SCAN_RULE="trw"), nor in use lately.
3. The destination must be this host (when a local view is set); a UDP reply (or a SYN of a
   connection the host accepted) to a flow the host started is not a probe.
4. A muted source (already responded to, its records held back by the record gate: see
   ``mute.py``) is only counted; with rules that keep state of their own, each probe is
   tracked and shown to them at once.
5. The in-use re-check (a port opened since the view was read; may cost a kernel query).
6. Admission: ignore list, own addresses (refused probes are not counted).
7. Track the source, ask every scoring rule.
8. A fired rule goes through the policy checks to the protocol's BLOCK level; an ignored
   probe becomes a decision only if the record gate lets its record through.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from typing import Final

from portsentinel.detect import trw
from portsentinel.detect.budget import BanBudget
from portsentinel.detect.classify import TCP_KIND
from portsentinel.detect.decide import COVERING, Policy
from portsentinel.detect.decoys import MAX_SOURCES as _HEARD_MAX
from portsentinel.detect.decoys import DecoyGroups
from portsentinel.detect.fragments import Fragments
from portsentinel.detect.mute import Mutes
from portsentinel.detect.ports import bound_table, stealth_table
from portsentinel.detect.recent import RecentPorts
from portsentinel.detect.records import Records
from portsentinel.detect.rules import ScoringRule
from portsentinel.detect.screen import ProbeScreen
from portsentinel.detect.settings import DetectorConfig, DetectorStats, budget_config
from portsentinel.detect.track import KIND_BIT, SourceState, Tracker
from portsentinel.detect.unsolicited import Unsolicited
from portsentinel.detect.views import DetectorViews
from portsentinel.model import (
    Action,
    Decision,
    DecoyCut,
    Mode,
    Packet,
    Proto,
    Reason,
    ScanKind,
)
from portsentinel.networks import AddressSet

_TCP: Final = int(Proto.TCP)
_UDP: Final = int(Proto.UDP)
_SYN: Final = ScanKind.SYN
_UDP_KIND: Final = ScanKind.UDP
# Enum members read as module constants: ``Action.IGNORED`` costs a lookup on the enum class
# each time (measured ~10x a global's), and the hot path reads them for every probe.
_IGNORED: Final = Action.IGNORED
_ALREADY_BLOCKED: Final = Reason.ALREADY_BLOCKED
_BELOW_TRIGGER: Final = Reason.BELOW_TRIGGER
_UNPRIVILEGED: Final = 1024  # data ports a client opens lie at or above it
_PROTOS: Final[dict[int, Proto]] = {_TCP: Proto.TCP, _UDP: Proto.UDP}


RecordGate = Callable[[bytes, Reason, float], bool]
"""Asked before an IGNORED decision is built: ``gate(src, reason, now)``; False holds the
record back (it is still counted). The daemon's repeat limiter, so a blocked scanner's or a
forged flood's further probes cost a few counter bumps, not an object each."""


class Detector(Records, Unsolicited, Fragments, DetectorViews):
    """Feed it packets (stealth modes; ``feed_unsolicited``: see ``unsolicited``) or connects
    (bound modes); it returns decisions. Views handed in (in-use ports, local addresses) are
    kept by reference, so the caller may mutate or swap them while running. Rules are fixed
    at construction: the tracker keeps as many hit times as they need.
    """

    __slots__ = (
        "_bound",
        "_custom_rules",
        "_cuts",
        "_decoys",
        "_gate",
        "_heard",
        "_in_use_tcp",
        "_in_use_udp",
        "_local",
        "_modes",
        "_muted",
        "_muted_kinds",
        "_mutes",
        "_named_rules",
        "_recent",
        "_recheck_tcp",
        "_recheck_udp",
        "_reply_check",
        "_responded",
        "_stateful_rules",
        "_stats",
        "_stealth",
        "_texts",
        "_tracker",
        "_trw",
        "_watch_tcp",
        "_watch_udp",
        "config",
        "policy",
        "rules",
        "screen",
    )

    def __init__(
        self,
        config: DetectorConfig,
        *,
        ignore: AddressSet | None = None,
        local: Container[bytes] | None = None,
        in_use_tcp: Container[int] = frozenset(),
        in_use_udp: Container[int] = frozenset(),
        rules: Sequence[ScoringRule] | None = None,
        never_block: Container[bytes] | None = None,
    ) -> None:
        self._stats = DetectorStats()
        self._gate: RecordGate | None = None
        self._stateful_rules: tuple[ScoringRule, ...] = ()
        self._in_use_tcp = in_use_tcp
        self._in_use_udp = in_use_udp
        self._recheck_tcp: Callable[[int], bool] | None = None
        self._recheck_udp: Callable[[int], bool] | None = None
        self._local = local
        self._recent = {p: RecentPorts(config.recently_in_use) for p in (_TCP, _UDP)}
        self._trw: trw.SequentialTest | None = None
        self._reply_check: Callable[[Packet], bool] | None = None
        self._texts: dict[bytes, str] = {}
        self._decoys = DecoyGroups()
        self._heard = self._decoys.heard_table
        self._cuts: list[DecoyCut] = []
        self._custom_rules = rules is not None
        self.rules: tuple[ScoringRule, ...] = tuple(rules) if rules is not None else ()
        self._tracker = Tracker(max_sources=1, max_ports=1, max_dsts=1)
        self._mutes = Mutes(self._tracker, (_TCP, _UDP))
        # The hot path's own references to the mutes' tables (one attribute load fewer).
        self._muted = self._mutes.by_proto
        self._muted_kinds = self._mutes.kinds
        self.policy = Policy(
            block_levels={_TCP: config.block_tcp, _UDP: config.block_udp},
            max_responded=config.max_responded,
            ignore=ignore,
            local=local,
            never_block=never_block,
            budget=BanBudget(budget_config(config)),
            min_ports=config.block_min_ports,
        )
        self._responded = self.policy.responses.marks  # read in place on the hot path
        self.config = config
        self._configure(config)

    def _configure(self, config: DetectorConfig) -> None:
        """Everything derived from the configuration; the evidence and responses stay."""
        c = config
        self.config = c
        self._modes: dict[int, Mode | None] = {_TCP: c.tcp_mode, _UDP: c.udp_mode}
        self._watch_tcp = stealth_table(
            c.tcp_mode, c.tcp_ports, c.advanced_tcp_limit, c.advanced_exclude_tcp
        )
        self._watch_udp = stealth_table(
            c.udp_mode, c.udp_ports, c.advanced_udp_limit, c.advanced_exclude_udp
        )
        self._bound = {
            _TCP: bound_table(c.tcp_mode, c.tcp_ports),
            _UDP: bound_table(c.udp_mode, c.udp_ports),
        }
        self._stealth = {
            proto: mode is not None and mode.stealth for proto, mode in self._modes.items()
        }
        stealthy = frozenset(proto for proto, on in self._stealth.items() if on)
        self.screen = ProbeScreen(self._watch_tcp, self._watch_udp, stealthy)  # steps 1-2 alone
        if not self._custom_rules:
            self.rules = (trw.scoring_rule(c),)
        self._trw = next((r for r in self.rules if isinstance(r, trw.SequentialTest)), None)
        self._named_rules = tuple((rule, rule.name) for rule in self.rules)
        for recent in self._recent.values():
            recent.window = c.recently_in_use
        # A muted source's probes go only to rules that keep state of their own.
        self._stateful_rules = tuple(r for r in self.rules if getattr(r, "keeps_state", True))
        self._tracker.resize(
            max_sources=c.max_sources,
            max_ports=c.max_ports_per_source,
            max_dsts=c.max_destinations_per_source,
            keep_times=max((rule.times_needed for rule in self.rules), default=0),
            idle_timeout=c.idle_timeout,
        )
        self.policy.reconfigure(
            block_levels={_TCP: c.block_tcp, _UDP: c.block_udp},
            max_responded=c.max_responded,
            budget=budget_config(c),
            min_ports=c.block_min_ports,
        )

    def reconfigure(self, config: DetectorConfig) -> None:
        """A reloaded configuration: new ports, trigger, levels and caps; the tracked evidence,
        the responses (bans) and the counters are kept."""
        self._configure(config)
        self._mutes.clear()

    # --- the hot path ---------------------------------------------------------------------

    def feed(self, pkt: Packet, now: float) -> list[Decision]:
        """Judge one decoded packet seen by a stealth mode."""
        proto, src, dst, sport, port, flags, ttl, _options, frag = pkt
        stats = self._stats
        stats.packets += 1
        if frag:
            return self._feed_fragment(pkt, now)
        if proto == _TCP:
            kind = TCP_KIND[flags]
            if kind is None:
                stats.not_probe += 1
                return []
            if not self._watch_tcp[port]:
                stats.unwatched += 1
                return []
            in_use, recheck, recent = self._in_use_tcp, self._recheck_tcp, self._recent[_TCP]
        elif proto == _UDP:
            kind = _UDP_KIND
            if not self._watch_udp[port]:
                stats.unwatched += 1
                return []
            in_use, recheck, recent = self._in_use_udp, self._recheck_udp, self._recent[_UDP]
        else:
            stats.unwatched += 1
            return []
        if port in in_use:
            stats.in_use += 1
            heard = self._heard  # earlier traffic, for a later decoy group (decoys.heard)
            if len(heard) >= _HEARD_MAX:
                heard.clear()
            heard[src] = (ttl, now)
            if self._trw is not None and (kind is _SYN or proto == _UDP):
                self._success(pkt)  # a first contact that may succeed: evidence for TRW
            return []
        if port in recent.seen:  # a service restarting: its clients retry, they do not probe
            stats.recently_in_use += 1
            return []
        local = self._local
        if local is not None and dst not in local:
            stats.not_local += 1
            return []
        # UDP may answer a flow the host started. A TCP probe carries no ACK, so it answers
        # nothing, but a SYN may open a connection the host already accepted on a listener
        # closed since (an active-mode FTP client's data port: never a privileged port, so a
        # SYN below 1024 is not worth a kernel round trip).
        reply_check = self._reply_check
        if (
            reply_check is not None
            and (proto == _UDP or (kind is _SYN and port >= _UNPRIVILEGED))
            and reply_check(pkt)
        ):
            stats.replies += 1
            return []
        group = self._decoys.see(src, proto, port, dst, ttl, now, sport)
        if group is not None and group.fresh:  # members joined: see ``Group.changed``
            self._grouped(group, now)
        muted = self._muted[proto]
        if muted:
            mute = muted.get(src)
            if mute is not None:
                if now < mute.until:
                    if self._stateful_rules:
                        return self._held(pkt, kind, now)
                    # Counted here; folded into the source's state when the mute ends.
                    mute.count += 1
                    mute.kinds |= KIND_BIT[kind]
                    mute.last = now
                    self._muted_kinds[kind] += 1
                    return []
                self._mutes.fold(src, mute)
                del muted[src]
        # Last, as it may cost a kernel query: a port opened since the in-use view was read.
        # Not for a source that already got its response: the outcome would not change.
        if (
            recheck is not None
            and not self._responded.get(src, 0) & COVERING[proto]  # ``Responses.covers``
            and recheck(port)
        ):
            stats.in_use += 1
            return []
        return self._probe(pkt, kind, now)

    def feed_connect(
        self, proto: Proto, src: bytes, dst: bytes, port: int, now: float
    ) -> list[Decision]:
        """Judge a full connect (tcp mode) or datagram (udp mode) on one of our listeners.

        No in-use check (the listener is ours) and no destination check (a listener only
        hears this host's traffic).
        """
        stats = self._stats
        stats.connects += 1
        if not self._bound[proto][port]:
            stats.unwatched += 1
            return []
        return self._probe((int(proto), src, dst, 0, port, 0, 0, False, 0), ScanKind.CONNECT, now)

    def _probe(self, pkt: Packet, kind: ScanKind, now: float) -> list[Decision]:
        """Steps 4-6 for a confirmed probe: admission, tracking, rules, policy."""
        proto, src, dst, _sport, port, _flags, _ttl, _options, _frag = pkt
        stats = self._stats
        stats.probes += 1
        stats.probes_by_kind[kind] += 1
        policy = self.policy
        refused = policy.admit(src)
        if refused is not None:
            return self._ignored(pkt, kind, now, refused, None, None)
        state = self._tracker.hit(src, proto, port, kind, dst, now)
        fired: str | None = None
        for rule, name in self._named_rules:
            # Every rule sees every probe, even after another fired, to keep its state whole.
            if rule.observe(state, proto, port, kind, dst, now) and fired is None:
                fired = name
        if fired is None:
            return self._ignored(pkt, kind, now, _BELOW_TRIGGER, state, None)
        action, reason = policy.decide(src, _PROTOS[proto], state, now)
        if action is not _IGNORED:
            stats.decisions_by_action[action] += 1
            return [self._decision(pkt, kind, now, reason, state, fired, action)]
        # ``_ignored`` written out: a forged flood's every probe, refused by the ban budget.
        stats.decisions_by_action[_IGNORED] += 1
        stats.ignored_by_reason[reason] += 1
        gate = self._gate
        if gate is not None and not gate(src, reason, now):
            stats.held += 1
            if reason is _ALREADY_BLOCKED:
                self._mutes.mute(proto, src, now)
            return []
        return [self._decision(pkt, kind, now, reason, state, fired, _IGNORED)]

    def _ignored(  # noqa: PLR0917 - plain positional values: called for every probe
        self,
        pkt: Packet,
        kind: ScanKind,
        now: float,
        reason: Reason,
        state: SourceState | None,
        rule: str | None,
    ) -> list[Decision]:
        """A probe not acted on: counted, then a record unless the gate holds it back."""
        stats = self._stats
        stats.decisions_by_action[_IGNORED] += 1
        stats.ignored_by_reason[reason] += 1
        gate = self._gate
        if gate is not None:
            proto, src, _dst, _sport, _port, _flags, _ttl, _options, _frag = pkt
            if not gate(src, reason, now):
                stats.held += 1
                if reason is _ALREADY_BLOCKED:
                    self._mutes.mute(proto, src, now)
                return []
        return [self._decision(pkt, kind, now, reason, state, rule, _IGNORED)]

    def _held(self, pkt: Packet, kind: ScanKind, now: float) -> list[Decision]:
        """A muted source's probe: what ``_probe`` would count and track, without asking the
        policy (already responded: checked by the caller) or the gate (held: muted)."""
        proto, src, dst, _sport, port, _flags, _ttl, _options, _frag = pkt
        self._muted_kinds[kind] += 1  # added to the counters when they are read
        state = self._tracker.hit(src, proto, port, kind, dst, now)
        for rule in self._stateful_rules:
            rule.observe(state, proto, port, kind, dst, now)
        self._mutes.count_held(src)
        return []

    # --- time and control -------------------------------------------------------------------

    def tick(self, now: float) -> list[Decision]:
        """Expire idle sources. Returns decisions taken on time alone (none yet)."""
        self._tracker.expire(now)
        return []

    def set_record_gate(self, gate: RecordGate | None) -> None:
        """Hold back records of ignored probes the gate refuses (None: build every one)."""
        self._gate = gate
        self._mutes.clear()

    def set_in_use(self, proto: Proto, view: Container[int]) -> None:
        """Ports in use for ``proto``: probes to them are not probes (kept by reference)."""
        if proto == _TCP:
            self._in_use_tcp = view
        elif proto == _UDP:
            self._in_use_udp = view
        else:
            raise ValueError(f"unknown protocol {proto}")

    def set_in_use_recheck(self, proto: Proto, recheck: Callable[[int], bool] | None) -> None:
        """A second opinion on a port the in-use view does not hold (a listener opened since
        the view was read): asked last, only for what would otherwise be a counted probe,
        since it may cost a kernel query. Never asked about a source that already got its
        response for the protocol: its probe is "already blocked" either way."""
        if proto == _TCP:
            self._recheck_tcp = recheck
        elif proto == _UDP:
            self._recheck_udp = recheck
        else:
            raise ValueError(f"unknown protocol {proto}")

    def set_reply_check(self, check: Callable[[Packet], bool] | None) -> None:
        """A test for packets that answer a flow this host started, or SYNs of connections it
        accepted (the kernel's conntrack).

        Asked only for what would otherwise be a probe, last, so its cost (a kernel query)
        is paid rarely: a late DNS or NTP reply to a watched port is then not a probe. It
        must judge the whole flow, never the source port alone (``nmap -g 53`` forges it).
        """
        self._reply_check = check

    def set_protect_check(self, check: Callable[[bytes], bool] | None) -> None:
        """The host's last word before acting against a source: see ``Policy.confirm``."""
        self.policy.confirm = check

    def set_ignore(self, ignore: AddressSet) -> None:
        self.policy.ignore = ignore
        self._mutes.clear()

    def set_local(self, local: Container[bytes] | None) -> None:
        """This host's addresses; None counts every destination as this host (replay)."""
        self._local = local
        self.policy.local = local
        self._mutes.clear()

    def take_muted(self) -> list[tuple[bytes, int]]:
        """(source, protocol) pairs muted since the last call (``mute.py``)."""
        return self._mutes.take_fresh()

    def release(self, src: bytes) -> None:
        """A response for ``src`` ended: its next trigger acts again.

        The source's evidence is kept, so with PortSentry's windowless trigger its next probe
        fires at once; a repeat offender is not a fresh source.
        """
        self.policy.release(src)
        self._mutes.release(src)

    def restore(self, src: bytes, proto: Proto, action: Action, *, strong: bool = True) -> None:
        """At start-up: a response that already exists, so triggers say "already blocked"."""
        self.policy.restore(src, proto, action, strong=strong)

    def set_never_block(self, never_block: Container[bytes] | None) -> None:
        """Addresses no decision may act against (kept by reference: refresh it in place)."""
        self.policy.never_block = never_block
        self._mutes.clear()

    def watched_ports(self, proto: Proto) -> list[int]:
        """The ports the protocol's mode watches, before the in-use check (ascending)."""
        return self.config.watched_ports(proto)

    def source(self, src: bytes) -> SourceState | None:
        """The tracked evidence for ``src`` (for ``why`` and tests); None when not tracked."""
        self._mutes.fold_source(src)
        return self._tracker.get(src)
