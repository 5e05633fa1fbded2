"""Make sure the kernel tracks connections in this network namespace.

Conntrack is what tells a late DNS or NTP reply (its client socket already closed) from a UDP
probe. The kernel only tracks connections in a namespace where some netfilter rule needs it,
so the daemon keeps one harmless rule that does: a counter on established flows in its own
chain of the table the nftables ban sets live in (``nftables.TABLE_REF``). Without ``nft``,
or with ``--dry-run``, the daemon relies on whatever the host's own firewall already tracks.

The chain is part of the state the daemon repairs (``ConntrackChain``): another tool may
flush the ruleset, and late replies would then count as probes again.

The same chain notes the peers of SSH sessions (when SSH peers are protected): a packet of an
established connection to a local SSH port puts its source in the set ``ssh4`` or ``ssh6``
(``update``: kept while the session sends, for ``SSH_IDLE`` after). Only a completed handshake
makes a connection established, so no forged packet puts an address there. The never-block
set asks the set for one address before a ban (``nfnetlink.SetReader``, ~20 us) instead of
dumping every TCP socket of the host through sock_diag (~5 ms: the kernel walks its whole
established-socket table, however few sockets the namespace has).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from typing import Any

from portsentinel.block.libnft import LibnftRunner, select_runner
from portsentinel.block.nft_state import FAMILY, TABLE, TABLE_REF
from portsentinel.block.runner import CommandRunner, Runner

CHAIN = "conntrack"
# ACK-bearing segments that open no connection, handed to the daemon (``capture/nflog.py``) at
# most this many a second (the rest wait for the next second's budget: an ACK flood costs the
# daemon nothing more).
UNSOLICITED_RATE = 2000
# A segment with ACK and no connection is ``new`` to conntrack when it may open one (a bare
# ACK: loose pick-up), ``invalid`` otherwise (FIN+ACK, and a late or out-of-window segment of a
# connection conntrack knows: the daemon asks conntrack about those).
NEW_PREFIX, INVALID_PREFIX = "psn-new", "psn-invalid"
UNSOLICITED_CHAIN = "unsolicited"
UNSOLICITED_PRIORITY = -140  # after conntrack (-200), so that ``ct state`` is known
SSH4, SSH6 = "ssh4", "ssh6"
SSH_IDLE = "15m"  # an SSH peer stays in its set this long after the session's last packet
TIMEOUT = 5.0  # seconds for the one nft transaction


def script(ssh_ports: Iterable[int] = (), ack_group: int | None = None) -> str:
    """One transaction: create what is missing, then replace the chain's rules, so running it
    twice leaves one of each (pure). ``ack_group``: also log the TCP segments with ACK (no
    SYN, no RST) that conntrack sees as new, to this host, to that NFLOG group."""
    lines = [
        f"add table {TABLE_REF}",
        f"add chain {TABLE_REF} {CHAIN} {{ type filter hook prerouting priority -150; "
        "policy accept; }",
        f"flush chain {TABLE_REF} {CHAIN}",
        f"add rule {TABLE_REF} {CHAIN} ct state established,related counter",
    ]
    ports = sorted(set(ssh_ports))
    if ports:
        listed = ", ".join(str(port) for port in ports)
        for name, kind, proto in ((SSH4, "ipv4_addr", "ip"), (SSH6, "ipv6_addr", "ip6")):
            lines.append(
                f"add set {TABLE_REF} {name} {{ type {kind}; flags dynamic, timeout; "
                f"timeout {SSH_IDLE}; }}"
            )
            lines.append(
                f"add rule {TABLE_REF} {CHAIN} tcp dport {{ {listed} }} ct state established "
                f"fib daddr type local update @{name} {{ {proto} saddr }}"
            )
    lines += unsolicited_lines(ack_group)
    return "\n".join(lines) + "\n"


def unsolicited_lines(ack_group: int | None) -> list[str]:
    """The chain that logs TCP segments with ACK (no SYN, no RST) of no connection, to this
    host, to a port no socket uses, to ``ack_group``; with None, no such chain (pure).

    Each ``return`` sends most packets away after a test or two: established traffic at the
    conntrack test, a segment to a port in use (a listener, a connection: the kernel's socket
    lookup, as for KERNEL_HOLD) at the socket tests. The log prefix tells the daemon which
    state conntrack saw."""
    ref = f"{TABLE_REF} {UNSOLICITED_CHAIN}"
    lines = [f"add chain {ref} {{ type filter hook prerouting priority {UNSOLICITED_PRIORITY}; "
             "policy accept; }"]  # fmt: skip
    if ack_group is None:
        return [*lines, f"delete chain {ref}"]
    lines += [
        f"flush chain {ref}",
        # Not TCP: away first (a ``tcp flags`` test does not match, and so does not return, it).
        f"add rule {ref} meta l4proto != tcp return",
        f"add rule {ref} tcp flags & (syn | rst | ack) != ack return",
        f"add rule {ref} ct state != {{ new, invalid }} return",
        f"add rule {ref} iif lo return",
        f"add rule {ref} fib daddr type != local return",
        f"add rule {ref} socket transparent 0 return",
        f"add rule {ref} socket transparent 1 return",
    ]
    for state, prefix in (("new", NEW_PREFIX), ("invalid", INVALID_PREFIX)):
        lines.append(
            f"add rule {ref} ct state {state} limit rate {UNSOLICITED_RATE}/second burst "
            f'{UNSOLICITED_RATE} packets counter log prefix "{prefix}" group {ack_group} '
            "snaplen 128"
        )
    return lines


def ensure_conntrack(
    runner: CommandRunner | None = None,
    ssh_ports: Iterable[int] = (),
    ack_group: int | None = None,
) -> str | None:
    """Install the tracking rule (and the SSH peers' sets and rules when ``ssh_ports``, the
    unsolicited segments' log rule with ``ack_group``) through ``runner`` (a plain ``Runner``
    when None); None on success, else why it could not be done."""
    nft = shutil.which("nft")
    if nft is None:
        return "the nft command is not installed"
    done = (runner if runner is not None else Runner()).run(
        [nft, "-f", "-"], input=script(ssh_ports, ack_group), timeout=TIMEOUT
    )
    if done.ok:
        return None
    if done.returncode is None:  # it could not start, or timed out (and was killed)
        return f"nft failed: {done.error}"
    return f"nft exited with {done.returncode}: {done.stderr.strip()}"


def conntrack_problem(
    runner: CommandRunner, ssh_ports: Iterable[int] = (), ack_group: int | None = None
) -> str | None:
    """What is wrong with the tracking chain (gone, hooked elsewhere, without its rules), or
    None when it is in place or nft cannot be run at all (start-up said so)."""
    done = runner.run(["nft", "-j", "list", "chain", FAMILY, TABLE, CHAIN], timeout=TIMEOUT)
    if done.returncode is None:
        return None
    if not done.ok:
        if "No such file or directory" in done.stderr:
            return f"chain {CHAIN} is missing"
        return f"cannot list chain {CHAIN}: {done.describe()}"
    try:
        items = [i for i in json.loads(done.stdout)["nftables"] if isinstance(i, dict)]
    except (ValueError, KeyError, TypeError) as exc:
        return f"unreadable nft output: {exc}"
    chains = [i["chain"] for i in items if isinstance(i.get("chain"), dict)]
    if not any(c.get("hook") == "prerouting" and c.get("type") == "filter" for c in chains):
        return f"chain {CHAIN} is not a filter chain on the prerouting hook"
    rules = [i["rule"].get("expr", []) for i in items if isinstance(i.get("rule"), dict)]
    if not any(_tracks(expr) for expr in rules):
        return f"chain {CHAIN} has no 'ct state' rule"
    if tuple(ssh_ports):
        noted = {_updated(expr) for expr in rules} - {None}
        if noted != {f"@{SSH4}", f"@{SSH6}"}:
            return f"chain {CHAIN} lacks the rules that note SSH peers"
    if ack_group is not None:
        return _unsolicited_problem(runner, ack_group)
    return None


def _unsolicited_problem(runner: CommandRunner, ack_group: int) -> str | None:
    done = runner.run(["nft", "-j", "list", "chain", FAMILY, TABLE, UNSOLICITED_CHAIN],
                      timeout=TIMEOUT)  # fmt: skip
    if not done.ok:
        return f"chain {UNSOLICITED_CHAIN} is missing"
    try:
        items = [i for i in json.loads(done.stdout)["nftables"] if isinstance(i, dict)]
    except (ValueError, KeyError, TypeError) as exc:
        return f"unreadable nft output: {exc}"
    rules = [i["rule"].get("expr", []) for i in items if isinstance(i.get("rule"), dict)]
    if sum(1 for expr in rules if _logged(expr) == ack_group) != 2:
        return f"chain {UNSOLICITED_CHAIN} lacks the rules that log unsolicited segments"
    return None


def _logged(expr: Any) -> int | None:
    """The NFLOG group a rule's ``log`` statement sends to, if it has one."""
    if not isinstance(expr, list):
        return None
    for e in expr:
        statement = e.get("log") if isinstance(e, dict) else None
        if isinstance(statement, dict) and isinstance(statement.get("group"), int):
            return int(statement["group"])
    return None


def _updated(expr: Any) -> str | None:
    """The set a rule's ``update`` statement adds to, if it has one."""
    if not isinstance(expr, list):
        return None
    for e in expr:
        statement = e.get("set") if isinstance(e, dict) else None
        if isinstance(statement, dict) and statement.get("op") == "update":
            name = statement.get("set")
            return name if isinstance(name, str) else None
    return None


def _tracks(expr: Any) -> bool:
    """Does a rule's expression match on the connection's state (so the kernel tracks)?"""
    return isinstance(expr, list) and any(
        isinstance(e, dict)
        and isinstance(e.get("match"), dict)
        and e["match"].get("left") == {"ct": {"key": "state"}}
        for e in expr
    )


class ConntrackChain:
    """The tracking chain kept in place: ``install`` at start, then ``problem`` and
    ``install`` again while the daemon runs. The check goes in-process through libnftables
    when it loads (``libnft.select_runner``); ``close`` frees its context."""

    def __init__(
        self,
        runner: CommandRunner | None = None,
        ssh_ports: Iterable[int] = (),
        ack_group: int | None = None,
    ) -> None:
        self._runner = runner if runner is not None else select_runner(Runner())
        self.ssh_ports = tuple(sorted(set(ssh_ports)))
        self.ack_group = ack_group

    def install(self) -> str | None:
        """``ensure_conntrack``: None on success, else why it could not be done."""
        return ensure_conntrack(self._runner, self.ssh_ports, self.ack_group)

    def problem(self) -> str | None:
        """``conntrack_problem``: None while the chain is in place."""
        return conntrack_problem(self._runner, self.ssh_ports, self.ack_group)

    def close(self) -> None:
        if isinstance(self._runner, LibnftRunner):
            self._runner.close()
