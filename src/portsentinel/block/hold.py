"""KERNEL_HOLD: the kernel drops a probe's first packet unanswered and holds its source.

A ban that lands in a millisecond still comes after the kernel answered the scanner's first
probes (a real ``nmap -T4`` gets 30-90 answers first). With the hold on, the kernel itself
notices the first probe: a new connection's packet (TCP SYN, or FIN/NULL/XMAS without
ACK/RST; UDP) to a port the daemon watches that no socket uses right now (nft's ``socket``
expression asks the kernel's socket tables for each such packet, so a short-lived listener
such as an FTP client's data port counts from the moment it listens). That packet is dropped
and its source put in ``hold4``/``hold6``; the source's further new connections are dropped
too while it is held, its established ones flow on. The capture sees every packet before
this hook, so detection goes on as before: the daemon confirms the hold with its ban, or
releases it (its source in ``free4``/``free6`` for the hold time: the ban budget refused it,
its evidence is too weak, it is protected) and the hold ends by itself after
KERNEL_HOLD_TIME. The never-block set is kept in ``keep4``/``keep6`` (the response worker
writes them whenever it changes), SSH peers noted by the conntrack chain in ``ssh4``/``ssh6``
(``table.py``): neither is ever held. The hold set is bounded (``SIZE``): when it is full
nothing more is held (the ``add`` fails, the rule does not match) and detection goes on.

Layout, in the table the daemon owns (``inet portsentinel``), after the ban chains (a banned
source is dropped and counted there first)::

    set hold4 { type ipv4_addr; flags dynamic,timeout; timeout 10s; size 65536; }
    set free4 { type ipv4_addr; flags timeout; size 65536; }
    set keep4 { type ipv4_addr; flags interval; auto-merge; }
    set hold_tcp / hold_udp { type inet_service; flags interval; }   the watched ports
    (and the ipv6 sets)
    chain hold { type filter hook input priority filter - 5; policy accept;
        ct state established,related return; iif lo return
        ip saddr @keep4 return; ip saddr @ssh4 return (when that set exists)
        ip saddr @free4 return
        ip saddr @hold4 ct state { new, invalid } drop
        <not a probe's flags> return
        tcp dport @hold_tcp socket transparent 0 return  (a socket uses it; 1 likewise)
        tcp dport @hold_tcp add @hold4 { ip saddr } drop    (udp, ip6 likewise) }

Off by default: a forged probe "from" a real client delays that client's new connections by
up to the hold time (unless the daemon releases it, which it does at once when it decides
not to ban). Needs the kernel's ``nft_socket`` (Linux 4.18+; Debian 12's 6.1 has it).
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from portsentinel.block.libnft import LibnftRunner
from portsentinel.block.nft_state import CHAINS, PRIORITY, TABLE_REF
from portsentinel.block.runner import CommandRunner, RunResult
from portsentinel.block.table import SSH4, SSH6

CHAIN = "hold"
PRIORITY_TEXT = f"filter - {-PRIORITY - 5}"  # after the ban chains (filter - 10)
HOLD4, HOLD6 = "hold4", "hold6"
FREE4, FREE6 = "free4", "free6"
KEEP4, KEEP6 = "keep4", "keep6"
PORTS_TCP, PORTS_UDP = "hold_tcp", "hold_udp"
SIZE = 65_536  # sources held at once; a full set holds nothing more
TIMEOUT = 5.0  # seconds for one nft transaction
_FAMILIES = ((HOLD4, FREE4, KEEP4, SSH4, "ipv4_addr", "ip"),
             (HOLD6, FREE6, KEEP6, SSH6, "ipv6_addr", "ip6"))  # fmt: skip

if CHAIN in CHAINS:  # pragma: no cover - the ban chains are named after their hooks
    raise ImportError(f"chain {CHAIN!r} is a ban chain's name")


@dataclass(frozen=True, slots=True)
class HoldPlan:
    """What the hold watches: per protocol the ports (empty: that protocol is not held),
    the hold time, and whether SSH peers are noted (their sets exist)."""

    tcp: tuple[int, ...]
    udp: tuple[int, ...]
    seconds: float
    ssh: bool = False

    @property
    def active(self) -> bool:
        return bool(self.tcp or self.udp)


def ranges(ports: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted ports as inclusive (first, last) runs (pure)."""
    out: list[tuple[int, int]] = []
    for port in sorted(set(ports)):
        if out and port == out[-1][1] + 1:
            out[-1] = (out[-1][0], port)
        else:
            out.append((port, port))
    return out


def _elements(runs: Sequence[tuple[int, int]]) -> str:
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def seconds_text(seconds: float) -> str:
    return f"{max(1, math.ceil(seconds))}s"


OWN_SETS = (HOLD4, FREE4, KEEP4, HOLD6, FREE6, KEEP6, PORTS_TCP, PORTS_UDP)


def install_script(plan: HoldPlan, present: Iterable[str] = ()) -> str:
    """One transaction that builds the chain and its sets anew (``present``: the names of the
    chain and sets of ours already in the table, which go first: nft cannot change a set's
    timeout in place). The keep sets start empty: the caller fills them. SSH peers are spared
    when ``plan.ssh`` and the conntrack chain's sets are ``present`` (pure)."""
    t = TABLE_REF
    hold = seconds_text(plan.seconds)
    lines = [f"add table {t}"]
    there = set(present)
    ssh = plan.ssh and {SSH4, SSH6} <= there
    if CHAIN in there:
        lines.append(f"delete chain {t} {CHAIN}")
    lines += [f"delete set {t} {name}" for name in OWN_SETS if name in there]
    for held, free, keep, _, kind, _ in _FAMILIES:
        lines += [
            f"add set {t} {held} {{ type {kind}; flags dynamic,timeout; timeout {hold}; "
            f"size {SIZE}; }}",
            f"add set {t} {free} {{ type {kind}; flags timeout; size {SIZE}; }}",
            f"add set {t} {keep} {{ type {kind}; flags interval; auto-merge; }}",
        ]
    for name, ports in ((PORTS_TCP, plan.tcp), (PORTS_UDP, plan.udp)):
        lines.append(f"add set {t} {name} {{ type inet_service; flags interval; }}")
        if ports:
            lines.append(f"add element {t} {name} {{ {_elements(ranges(ports))} }}")
    lines.append(f"add chain {t} {CHAIN} {{ type filter hook input priority {PRIORITY_TEXT}; "
                 "policy accept; }")  # fmt: skip
    rule = f"add rule {t} {CHAIN}"
    lines += [f"{rule} ct state established,related return", f"{rule} iif lo return"]
    for held, free, keep, peers, _, proto in _FAMILIES:
        lines.append(f"{rule} {proto} saddr @{keep} return")
        if ssh:
            lines.append(f"{rule} {proto} saddr @{peers} return")
        lines.append(f"{rule} {proto} saddr @{free} return")
        lines.append(f"{rule} {proto} saddr @{held} ct state {{ new, invalid }} counter drop")
    # Only a probe's flags: a SYN, or none of SYN, ACK and RST (FIN, NULL, XMAS).
    lines.append(
        f"{rule} tcp flags & (syn | ack | rst) != syn tcp flags & (syn | ack | rst) != 0 return"
    )
    watched = (("tcp", PORTS_TCP), ("udp", PORTS_UDP))
    for proto, port_set in watched:
        for transparent in (0, 1):  # a socket of either kind uses the port: not a probe
            lines.append(
                f"{rule} {proto} dport @{port_set} socket transparent {transparent} return"
            )
    for held, _, _, _, _, family in _FAMILIES:
        nfproto = "ipv4" if family == "ip" else "ipv6"
        for proto, port_set in watched:
            lines.append(f"{rule} meta nfproto {nfproto} {proto} dport @{port_set} "
                         f"add @{held} {{ {family} saddr }} counter drop")  # fmt: skip
    return "\n".join(lines) + "\n"


def remove_script(present: Iterable[str]) -> str:
    """The chain and its sets gone (nothing held is left behind): ``present`` names those of
    ours in the table (pure)."""
    t = TABLE_REF
    there = set(present)
    lines = [f"delete chain {t} {CHAIN}"] if CHAIN in there else []
    lines += [f"delete set {t} {name}" for name in OWN_SETS if name in there]
    return "".join(f"{line}\n" for line in lines)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def keep_script(networks: Iterable[Network]) -> str:
    """The never-block networks as the keep sets' whole content, in one transaction (pure)."""
    t = TABLE_REF
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    for net in networks:
        if isinstance(net, ipaddress.IPv4Network):
            v4.append(net)
        else:
            v6.append(net)
    lines = []
    collapsed: tuple[list[Network], list[Network]] = (
        list(ipaddress.collapse_addresses(v4)),
        list(ipaddress.collapse_addresses(v6)),
    )
    for name, nets in zip((KEEP4, KEEP6), collapsed, strict=True):
        lines.append(f"flush set {t} {name}")
        if nets:
            lines.append(f"add element {t} {name} {{ {', '.join(str(n) for n in nets)} }}")
    return "\n".join(lines) + "\n"


class HoldTable:
    """The hold chain kept in place by the response worker: ``install``, ``keep``,
    ``problem`` (for repair) and ``remove``, through ``runner`` (libnftables when it loads)."""

    def __init__(self, runner: CommandRunner, plan: HoldPlan) -> None:
        self._runner = runner
        self.plan = plan

    def install(self) -> str | None:
        """None on success, else why the kernel refused (no ``nft_socket``, say)."""
        return _why(self._run(install_script(self.plan, self.present())))

    def keep(self, networks: Iterable[Network]) -> str | None:
        return _why(self._run(keep_script(networks)))

    def remove(self) -> str | None:
        script = remove_script(self.present())
        return _why(self._run(script)) if script else None

    def present(self) -> set[str]:
        """The names of our chain and sets in the table now (none when it cannot be read)."""
        done = self._runner.run(["nft", "-j", "list", "table", *TABLE_REF.split()],
                                timeout=TIMEOUT)  # fmt: skip
        if not done.ok:
            return set()
        return present_in(done.stdout)

    def problem(self) -> str | None:
        """What is missing (another tool flushed the ruleset), or None."""
        done = self._runner.run(["nft", "list", "chain", *TABLE_REF.split(), CHAIN],
                                timeout=TIMEOUT)  # fmt: skip
        if done.returncode is None:
            return None  # nft cannot run at all: start-up said so
        if not done.ok:
            return f"chain {CHAIN} is missing"
        if f"@{HOLD4}" not in done.stdout or "socket transparent" not in done.stdout:
            return f"chain {CHAIN} lacks its rules"
        return None

    def close(self) -> None:
        if isinstance(self._runner, LibnftRunner):
            self._runner.close()

    def _run(self, script: str) -> RunResult:
        return self._runner.run(["nft", "-f", "-"], input=script, timeout=TIMEOUT)


def present_in(listing: str) -> set[str]:
    """Our chain and sets (and the SSH peers' sets) named in ``nft -j list table``'s output
    (pure)."""
    try:
        items = json.loads(listing)["nftables"]
    except (ValueError, KeyError, TypeError):
        return set()
    names = set()
    for item in items if isinstance(items, list) else []:
        for kind in ("chain", "set"):
            found = item.get(kind) if isinstance(item, dict) else None
            if isinstance(found, dict) and found.get("name") in (CHAIN, SSH4, SSH6, *OWN_SETS):
                names.add(str(found["name"]))
    return names


def _why(done: RunResult) -> str | None:
    if done.ok:
        return None
    if done.returncode is None:
        return f"nft failed: {done.error}"
    return f"nft exited with {done.returncode}: {done.stderr.strip()}"
