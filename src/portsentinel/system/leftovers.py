"""What PortSentry's KILL_ROUTE left in the kernel: found, listed, and removed only when asked.

PortSentry never undid a ban: every ``route add -host $TARGET$ reject`` (Debian's default) or
``iptables -I INPUT -s $TARGET$ -j DROP`` stays until a reboot or a hand removes it. Only
what PortSentry itself made is touched: the addresses it recorded (its history and blocked
files, ``Host: ADDR/...``) in the shape of its own KILL_ROUTE:

- a ``route`` command (``route add ...``): a host route to the address (``ip route show
  exact ADDR/32``, any type: ``reject`` makes an ``unreachable`` route, a gateway a unicast
  one), removed with ``ip route del`` of that very route;
- an ``iptables``/``ip6tables`` command that inserts or appends (``-I``/``-A CHAIN [n]``): the
  same rule, checked with ``-C``, removed with ``-D`` until none is left (PortSentry added it
  again after each restart);
- anything else (ipfwadm, ipchains, a script): reported, left to the administrator.

Commands run through ``block.runner`` (argv lists, a timeout); under ``ip netns exec NS`` in
the tests, never in this machine's own namespace.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from portsentinel.block.runner import CommandRunner, Runner

_HOST = re.compile(r"Host: [^/\s]*/([0-9A-Fa-f:.]+)")  # Host: NAME/ADDRESS (1.2 and 2.0)
MAX_DUPLICATES = 64  # one rule inserted again at each PortSentry restart, removed this often


@dataclass(frozen=True, slots=True)
class Leftover:
    """One thing in the kernel, how it reads, and the argv that removes it."""

    address: str
    what: str
    remove: tuple[str, ...]


def recorded_addresses(texts: Iterable[str]) -> list[str]:
    """The addresses in PortSentry's history and blocked files, in first-seen order."""
    found: dict[str, None] = {}
    for text in texts:
        for match in _HOST.finditer(text):
            try:
                found.setdefault(str(ipaddress.ip_address(match.group(1))), None)
            except ValueError:
                continue
    return list(found)


def kind_of(kill_route: str) -> str:
    """``route``, ``iptables`` or "" (a command this module does not know how to undo)."""
    try:
        argv = shlex.split(kill_route)
    except ValueError:
        return ""
    if not argv or "$TARGET$" not in kill_route:
        return ""
    program = os.path.basename(argv[0])
    if program == "route" and "add" in argv:
        return "route"
    if program in ("iptables", "ip6tables") and {"-I", "-A"} & set(argv):
        return "iptables"
    return ""


class Finder:
    """Finds (``find``) and removes (``clean``) what one KILL_ROUTE left behind."""

    def __init__(self, kill_route: str, runner: CommandRunner | None = None) -> None:
        self.kill_route = kill_route
        self.kind = kind_of(kill_route)
        self._runner = runner if runner is not None else Runner()

    def find(self, addresses: Iterable[str]) -> list[Leftover]:
        if self.kind == "route":
            return [found for a in addresses for found in self._routes(a)]
        if self.kind == "iptables":
            return [found for a in addresses for found in self._rules(a)]
        return []

    def clean(self, leftovers: Iterable[Leftover]) -> list[str]:
        """Remove each leftover; one line per removal ("removed ..." or why not)."""
        lines = []
        for leftover in leftovers:
            done = self._runner.run(leftover.remove)
            count = 1
            # the same rule inserted again after each restart: remove until none is left
            while done.ok and self.kind == "iptables" and count < MAX_DUPLICATES:
                if not self._runner.run(_check_argv(leftover.remove)).ok:
                    break
                done = self._runner.run(leftover.remove)
                count += 1
            if done.ok:
                times = f" ({count} copies)" if count > 1 else ""
                lines.append(f"removed {leftover.what}{times}")
            else:
                lines.append(f"could not remove {leftover.what}: {done.describe()}")
        return lines

    def _routes(self, address: str) -> list[Leftover]:
        family = "-6" if ":" in address else "-4"
        width = 128 if ":" in address else 32
        # the main table only: PortSentry's `route add` went there (the local table holds
        # this host's own addresses, never to be touched)
        done = self._runner.run(
            ["ip", family, "-j", "route", "show", "exact", f"{address}/{width}"]
        )
        if not done.ok or not done.stdout.strip():
            return []
        try:
            routes = json.loads(done.stdout)
        except ValueError:
            return []
        found = []
        for route in routes if isinstance(routes, list) else []:
            spec = [str(route.get("type", "unicast")), address]
            for key, word in (("gateway", "via"), ("dev", "dev")):
                if route.get(key):
                    spec += [word, str(route[key])]
            found.append(
                Leftover(address, f"route {' '.join(spec)}", ("ip", family, "route", "del", *spec))
            )
        return found

    def _rules(self, address: str) -> list[Leftover]:
        argv = shlex.split(self.kill_route.replace("$TARGET$", address))
        delete = _delete_argv(argv)
        if delete is None or not self._runner.run(_check_argv(delete)).ok:
            return []
        return [Leftover(address, f"rule {shlex.join(argv[1:])}", delete)]


def _delete_argv(argv: list[str]) -> tuple[str, ...] | None:
    """``iptables -I CHAIN [n] rule...`` as ``iptables -D CHAIN rule...``."""
    for flag in ("-I", "-A"):
        if flag in argv:
            at = argv.index(flag)
            if at + 1 >= len(argv):
                return None
            rest = argv[at + 2 :]
            if rest and rest[0].isdigit():  # -I CHAIN 1: a position, not part of the rule
                rest = rest[1:]
            return (os.path.basename(argv[0]), *argv[1:at], "-D", argv[at + 1], *rest)
    return None


def _check_argv(delete: tuple[str, ...]) -> tuple[str, ...]:
    return tuple("-C" if word == "-D" else word for word in delete)
