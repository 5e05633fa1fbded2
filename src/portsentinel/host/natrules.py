"""Which destination ports the NAT rules forward: served without a local socket.

Why: Docker, podman, kube-proxy and libvirt publish ports by DNAT or REDIRECT in the nat
table. The capture sees such a packet before netfilter rewrites it, addressed to a port on which
no local socket listens, so the advanced modes would report every client of a published
container as a scanner. The ports found here count as in use.

What is read, and how far it is trusted:

* ``nft -j list ruleset``: base chains of type ``nat`` on the ``prerouting`` and ``output``
  hooks and every chain reachable from them by ``jump``, ``goto`` and verdict maps (anonymous
  or named, keyed by ports, protocols, concatenations or anything else). A ``dnat`` or
  ``redirect`` statement forwards the ports and protocols that the matches on the way to it
  allow: ``tcp``/``udp``/``th dport`` with values, sets, named sets and ranges, ``meta
  l4proto`` and ``ip protocol``/``ip6 nexthdr``. Rules written by iptables-nft appear there with
  ``xt`` targets; they are left to the iptables-save reading, which sees all of their matches.
* ``iptables-save -t nat`` and ``ip6tables-save -t nat`` (several dumps may be concatenated):
  the same walk from ``PREROUTING`` and ``OUTPUT`` through ``-j``/``-g`` to ``DNAT`` and
  ``REDIRECT``, with ``-p`` and ``--dport``/``--dports`` (multiport) as the matches. The walk
  rather than "every DNAT rule" because kube-proxy's DNAT rules (KUBE-SEP-*) carry no port at
  all: their ports are matched two or three jumps earlier, in KUBE-SERVICES and
  KUBE-NODEPORTS, and an unreachable DNAT rule forwards nothing.

Errors lean towards "forwarded": a match this module does not understand (a negation, an
address, an interface, a mark, a source port) is taken as matching everything, so a port is
never reported as probed because of a rule we misread. Destination addresses are ignored too:
a port that kube-proxy forwards for a cluster IP only counts as forwarded on every address.
A rule that forwards without any port match forwards every port of its protocols, which is
said by the ``all_tcp``/``all_udp`` flags instead of a set of 65,536 ports.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from portsentinel.model import Proto

_ANY_PROTO: Final = frozenset({"tcp", "udp"})
_PROTO_NAMES: Final = {"6": "tcp", "17": "udp", "tcp": "tcp", "udp": "udp"}
_PORT_PROTOCOLS: Final = frozenset({"tcp", "udp", "th", "sctp", "dccp", "udplite"})
_NFT_HOOKS: Final = frozenset({"prerouting", "output"})
_IPT_ROOTS: Final = ("PREROUTING", "OUTPUT")
_NAT_ACTIONS: Final = frozenset({"DNAT", "REDIRECT"})
# nftables itself refuses more than 16 nested jumps; this bound is only a guard.
_MAX_DEPTH: Final = 32
_MAX_PORT: Final = 65535

Scope = tuple[frozenset[str] | None, frozenset[int] | None]
"""What a path through the rules matches: (protocol names, destination ports); None = any."""
_EVERYTHING: Final[Scope] = (None, None)

NFT_ARGV: Final = ("nft", "-j", "list", "ruleset")
IPTABLES_ARGVS: Final = (("iptables-save", "-t", "nat"), ("ip6tables-save", "-t", "nat"))


@dataclass(frozen=True, slots=True)
class NatForwarding:
    """Destination ports forwarded by NAT rules, per protocol, and what went wrong reading them.

    ``all_tcp``/``all_udp`` mean that some rule forwards every port of that protocol (a 1:1
    address DNAT); the sets then still list the ports that were named.
    """

    tcp: frozenset[int] = frozenset()
    udp: frozenset[int] = frozenset()
    all_tcp: bool = False
    all_udp: bool = False
    warnings: tuple[str, ...] = ()

    def forwards(self, proto: int, port: int) -> bool:
        """True when ``port`` of ``proto`` (an IP protocol number, e.g. ``Proto.TCP``) is."""
        if proto == Proto.TCP:
            return self.all_tcp or port in self.tcp
        return proto == Proto.UDP and (self.all_udp or port in self.udp)


@dataclass
class _Collector:
    tcp: set[int] = field(default_factory=set)
    udp: set[int] = field(default_factory=set)
    all_tcp: bool = False
    all_udp: bool = False
    warnings: list[str] = field(default_factory=list)

    def add(self, scope: Scope) -> None:
        protos, ports = scope
        for proto in _ANY_PROTO if protos is None else protos & _ANY_PROTO:
            if proto == "tcp":
                self.all_tcp = self.all_tcp or ports is None
                self.tcp.update(ports or ())
            else:
                self.all_udp = self.all_udp or ports is None
                self.udp.update(ports or ())

    def result(self) -> NatForwarding:
        return NatForwarding(
            frozenset(self.tcp),
            frozenset(self.udp),
            self.all_tcp,
            self.all_udp,
            tuple(self.warnings),
        )


def _meet(a: Scope, b: Scope) -> Scope | None:
    """Both scopes at once, or None when no packet can match both."""
    protos = a[0] if b[0] is None else b[0] if a[0] is None else a[0] & b[0]
    ports = a[1] if b[1] is None else b[1] if a[1] is None else a[1] & b[1]
    if (protos is not None and not protos) or (ports is not None and not ports):
        return None
    return protos, ports


def _meet_all(left: Iterable[Scope], right: Iterable[Scope]) -> set[Scope]:
    right = list(right)
    return {m for a in left for b in right if (m := _meet(a, b)) is not None}


def _port_range(low: int, high: int) -> frozenset[int]:
    return frozenset(range(max(low, 0), min(high, _MAX_PORT) + 1))


def forwarded_ports(nft_json: str | None, iptables_save: str | None) -> NatForwarding:
    """Ports forwarded by the rules in an ``nft -j`` dump and/or an ``iptables-save`` dump."""
    out = _Collector()
    if nft_json:
        _NftWalk(out).run(nft_json)
    if iptables_save:
        _read_iptables(iptables_save, out)
    return out.result()


# --- nftables JSON ---------------------------------------------------------------------------

_ChainKey = tuple[str, str, str]


class _NftWalk:
    """Walk an ``nft -j list ruleset`` document from its nat base chains."""

    def __init__(self, out: _Collector) -> None:
        self.out = out
        self.chains: dict[_ChainKey, list[list[Any]]] = {}
        self.roots: list[_ChainKey] = []
        self.sets: dict[_ChainKey, list[Any]] = {}
        self.seen: set[tuple[_ChainKey, Scope]] = set()

    def run(self, text: str) -> None:
        try:
            objects = json.loads(text)["nftables"]
            if not isinstance(objects, list):
                raise TypeError("'nftables' is not a list")
        except (ValueError, KeyError, TypeError) as exc:
            self.out.warnings.append(f"nft: output is not an nftables JSON document ({exc!r})")
            return
        for obj in objects:
            if isinstance(obj, dict):
                self._index(obj)
        for root in self.roots:
            self._walk(root, _EVERYTHING, 0)

    def _index(self, obj: dict[str, Any]) -> None:
        for kind in ("chain", "rule", "set", "map"):
            item = obj.get(kind)
            if not isinstance(item, dict):
                continue
            key = (str(item.get("family")), str(item.get("table")), str(item.get("name")))
            if kind == "chain":
                self.chains.setdefault(key, [])
                if item.get("type") == "nat" and item.get("hook") in _NFT_HOOKS:
                    self.roots.append(key)
            elif kind == "rule":
                chain = (key[0], key[1], str(item.get("chain")))
                self.chains.setdefault(chain, []).append(list(item.get("expr") or ()))
            else:
                self.sets[key] = list(item.get("elem") or ())

    def _walk(self, chain: _ChainKey, scope: Scope, depth: int) -> None:
        if depth > _MAX_DEPTH or (chain, scope) in self.seen:
            return
        self.seen.add((chain, scope))
        for statements in self.chains.get(chain, ()):
            self._rule(chain, statements, scope, depth)

    def _rule(self, chain: _ChainKey, statements: list[Any], scope: Scope, depth: int) -> None:
        scopes = {scope}
        for statement in statements:
            if not scopes or not isinstance(statement, dict):
                return
            if "match" in statement:
                scopes = _meet_all(scopes, self._match(chain, statement["match"]))
            elif "dnat" in statement or "redirect" in statement:
                for reached in scopes:
                    self.out.add(reached)
            elif "jump" in statement or "goto" in statement:
                verdict = statement.get("jump") or statement.get("goto")
                self._follow(chain, verdict, scopes, depth)
            elif "vmap" in statement:
                self._vmap(chain, statement["vmap"], scopes, depth)

    def _follow(self, chain: _ChainKey, verdict: Any, scopes: Iterable[Scope], depth: int) -> None:
        if isinstance(verdict, dict) and isinstance(verdict.get("target"), str):
            target = (chain[0], chain[1], verdict["target"])
            for scope in scopes:
                self._walk(target, scope, depth + 1)

    def _vmap(self, chain: _ChainKey, vmap: Any, scopes: set[Scope], depth: int) -> None:
        if not isinstance(vmap, dict):
            return
        pairs = self._elements(chain, vmap.get("data"))
        for pair in pairs:
            if isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], dict):
                keyed = _meet_all(scopes, self._scopes(chain, vmap.get("key"), [pair[0]]))
                verdict = pair[1].get("jump") or pair[1].get("goto")
                self._follow(chain, verdict, keyed, depth)

    def _elements(self, chain: _ChainKey, right: Any) -> list[Any]:
        """The elements a right-hand side stands for: a value, an anonymous or a named set."""
        if isinstance(right, str) and right.startswith("@"):
            return self.sets.get((chain[0], chain[1], right[1:]), [])
        if isinstance(right, dict) and isinstance(right.get("set"), list):
            return list(right["set"])
        return [right]

    def _match(self, chain: _ChainKey, match: Any) -> list[Scope]:
        if not isinstance(match, dict):
            return [_EVERYTHING]
        if match.get("op", "==") in ("==", "in"):
            right = self._elements(chain, match.get("right"))
            return self._scopes(chain, match.get("left"), right)
        # A negation or comparison still implies its protocol (``udp dport != 53``).
        kind = _key_kind(match.get("left"))
        return [(frozenset({kind}), None) if kind in _PORT_PROTOCOLS - {"th"} else _EVERYTHING]

    def _scopes(self, chain: _ChainKey, left: Any, values: list[Any]) -> list[Scope]:
        """One scope per value that ``left`` may equal (a concatenation is split by parts)."""
        parts = left.get("concat") if isinstance(left, dict) else None
        scopes: list[Scope] = []
        for raw in values:
            value = _unwrap(raw)
            if not isinstance(parts, list):
                pairs = [(left, value)]
            elif isinstance(value, dict) and isinstance(value.get("concat"), list):
                pairs = list(zip(parts, value["concat"], strict=False))
            else:
                pairs = []  # a shape we do not know: it constrains nothing
            scope: Scope | None = _EVERYTHING
            for key, item in pairs:
                if scope is not None:
                    scope = _meet(scope, self._component(key, item))
            if scope is not None:
                scopes.append(scope)
        return scopes

    def _component(self, key: Any, value: Any) -> Scope:
        """What ``key == value`` says about protocol and destination port."""
        kind = _key_kind(key)
        if kind == "proto":
            name = _PROTO_NAMES.get(str(_unwrap(value)))
            return (frozenset({name}) if name else frozenset({"other"}), None)
        if kind is None:
            return _EVERYTHING
        ports = _nft_ports(_unwrap(value))
        if ports is None:
            self.out.warnings.append(f"nft: port value {value!r} not understood; taken as any")
        return (None if kind == "th" else frozenset({kind}), ports)


def _unwrap(value: Any) -> Any:
    """A set element may be wrapped as ``{"elem": {"val": ...}}`` (timeouts, comments)."""
    if isinstance(value, dict) and isinstance(value.get("elem"), dict):
        return value["elem"].get("val")
    return value


def _key_kind(key: Any) -> str | None:
    """``"proto"`` for a protocol selector, a protocol name for a dport, else None."""
    if not isinstance(key, dict):
        return None
    if isinstance(key.get("meta"), dict) and key["meta"].get("key") == "l4proto":
        return "proto"
    payload = key.get("payload")
    if not isinstance(payload, dict):
        return None
    proto, name = payload.get("protocol"), payload.get("field")
    if (proto, name) in (("ip", "protocol"), ("ip6", "nexthdr")):
        return "proto"
    if name == "dport" and proto in _PORT_PROTOCOLS:
        return str(proto)
    return None


def _nft_ports(value: Any) -> frozenset[int] | None:
    if isinstance(value, int):
        return frozenset({value})
    if isinstance(value, str) and value.isdigit():
        return frozenset({int(value)})
    if isinstance(value, dict) and isinstance(value.get("range"), list):
        low, high = (_nft_ports(v) for v in value["range"][:2])
        if low and high:
            return _port_range(min(low), max(high))
    return None


# --- iptables-save ---------------------------------------------------------------------------

_IptRule = tuple[Scope, str]


def _nat_tables(text: str) -> Iterator[dict[str, list[_IptRule]]]:
    """Each ``*nat`` table of the dump, as chain name -> [(scope, target)]."""
    chains: dict[str, list[_IptRule]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            chains = {} if line == "*nat" else None
        elif line == "COMMIT" and chains is not None:
            yield chains
            chains = None
        elif chains is not None and line.startswith("-A "):
            try:
                words = shlex.split(line)
            except ValueError:
                continue
            if len(words) > 1:
                chains.setdefault(words[1], []).append(_ipt_rule(words[2:]))


def _ipt_rule(words: list[str]) -> _IptRule:
    protos: frozenset[str] | None = None
    ports: frozenset[int] | None = None
    target = ""
    negate = False
    for index, word in enumerate(words):
        arg = words[index + 1] if index + 1 < len(words) else ""
        if word in ("-p", "--protocol") and not negate:
            name = _PROTO_NAMES.get(arg.lower())
            protos = None if arg.lower() in ("all", "0") else frozenset({name or "other"})
        elif word in ("--dport", "--destination-port", "--dports", "--destination-ports"):
            ports = None if negate else _ipt_ports(arg)
        elif word in ("-j", "--jump", "-g", "--goto"):
            target = arg
        negate = word == "!"
    return (protos, ports), target


def _ipt_ports(text: str) -> frozenset[int] | None:
    """``80``, ``1000:2000``, ``:1024``, ``1024:`` or a multiport list of those."""
    ports: set[int] = set()
    for item in text.split(","):
        low, sep, high = item.partition(":")
        try:
            if sep:
                ports.update(_port_range(int(low or 0), int(high or _MAX_PORT)))
            else:
                ports.add(int(low))
        except ValueError:
            return None
    return frozenset(ports)


def _read_iptables(text: str, out: _Collector) -> None:
    for chains in _nat_tables(text):
        seen: set[tuple[str, Scope]] = set()
        stack: list[tuple[str, Scope, int]] = [(root, _EVERYTHING, 0) for root in _IPT_ROOTS]
        while stack:
            chain, scope, depth = stack.pop()
            if depth > _MAX_DEPTH or (chain, scope) in seen:
                continue
            seen.add((chain, scope))
            for rule_scope, target in chains.get(chain, ()):
                reached = _meet(scope, rule_scope)
                if reached is None:
                    continue
                if target in _NAT_ACTIONS:
                    out.add(reached)
                elif target in chains:
                    stack.append((target, reached, depth + 1))


# --- running the tools -----------------------------------------------------------------------


def read_nat_rules(timeout: float = 5.0, path: str | None = None) -> NatForwarding:
    """Run nft and iptables-save/ip6tables-save (those found on ``path``) and read their rules.

    A missing tool is skipped; a tool that fails, hangs past ``timeout`` seconds or cannot be
    run becomes a warning in the result, never an exception.
    """
    warnings: list[str] = []
    nft_text = _run(NFT_ARGV, timeout, path, warnings)
    dumps = [_run(argv, timeout, path, warnings) for argv in IPTABLES_ARGVS]
    found = [text for text in (nft_text, *dumps) if text is not None]
    if not found and not warnings:
        warnings.append("no NAT rule tool found (nft, iptables-save, ip6tables-save)")
    iptables_text = "\n".join(text for text in dumps if text is not None) or None
    result = forwarded_ports(nft_text, iptables_text)
    return NatForwarding(
        result.tcp,
        result.udp,
        result.all_tcp,
        result.all_udp,
        (*warnings, *result.warnings),
    )


def _run(
    argv: tuple[str, ...], timeout: float, path: str | None, warnings: list[str]
) -> str | None:
    """The tool's standard output, or None when it is absent (silently) or failed (warned)."""
    executable = shutil.which(argv[0], path=path)
    if executable is None:
        return None
    try:
        done = subprocess.run(
            [executable, *argv[1:]],
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        warnings.append(f"{' '.join(argv)}: no answer within {timeout:g} s")
        return None
    except OSError as exc:
        warnings.append(f"{' '.join(argv)}: cannot run ({exc})")
        return None
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no message"])[0]
        warnings.append(f"{' '.join(argv)}: exit status {done.returncode}: {reason}")
        return None
    return done.stdout
