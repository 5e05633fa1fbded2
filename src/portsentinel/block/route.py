"""Bans as blackhole routes: ``ip route replace blackhole 198.18.0.3/32 proto 245``.

The modern form of PortSentry's ``route add -host $TARGET$ reject``. A blackhole route does not
stop packets from arriving; it stops the replies (and, with strict reverse-path filtering, the
packets too), so a TCP handshake or a UDP exchange with a banned address never completes.

``replace`` makes a block idempotent (and takes over any route to exactly that prefix, as
PortSentry's did). Our routes carry routing protocol number 245 so that ``check`` lists them
apart from any blackhole an administrator set. They never expire by themselves: the daemon
removes them when a ban ends. ``unblock`` deletes only a blackhole route with our protocol; one
already gone counts as removed.
"""

from __future__ import annotations

import json

from portsentinel.block.base import (
    ActionDetail,
    BackendBase,
    BanSpec,
    CheckResult,
    ban_fields,
    detail_ban,
    key_of,
)
from portsentinel.block.runner import CommandRunner, RunResult

# A routing protocol number no routing daemon claims (iproute2's rt_protos lists none there).
PROTOCOL = "245"


class RouteBackend(BackendBase):
    """See the module docstring."""

    name = "route"

    def __init__(self, runner: CommandRunner, *, ip: str = "ip") -> None:
        super().__init__()
        self._runner = runner
        self._ip = ip

    def start(self) -> None:
        """Nothing to create; make sure ``ip`` can list routes."""
        for family in ("-4", "-6"):
            result = self._run([family, "route", "show", "type", "blackhole"])
            if not result.ok:
                raise self._fail(f"cannot list routes: {result.describe()}")
        self._ok()

    def block(self, ban: BanSpec) -> ActionDetail:
        dst = f"{ban.address}/{ban.prefix}"
        family = _family(ban)
        result = self._run([family, "route", "replace", "blackhole", dst, "proto", PROTOCOL])
        if not result.ok:
            raise self._fail(f"cannot add a blackhole route to {dst}: {result.describe()}")
        self._ok()
        detail = ban_fields(ban, self.name)
        detail.update(route=f"blackhole {dst} proto {PROTOCOL}", timeout=None)
        return detail

    def unblock(self, detail: ActionDetail) -> None:
        ban = detail_ban(detail, self.name)
        dst = f"{ban.address}/{ban.prefix}"
        family = _family(ban)
        result = self._run([family, "route", "del", "blackhole", dst, "proto", PROTOCOL])
        if result.ok or not self._listed(family, dst):
            return
        raise self._fail(f"cannot remove the route to {dst}: {result.describe()}", degrade=False)

    def check(self) -> CheckResult:
        problems: list[str] = []
        present: dict[str, float | None] = {}
        for family in ("-4", "-6"):
            result = self._run(
                ["-j", family, "route", "show", "type", "blackhole", "proto", PROTOCOL]
            )
            if not result.ok:
                problems.append(f"cannot list {family} routes: {result.describe()}")
                continue
            present.update(dict.fromkeys(parse_routes(result.stdout)))
        return CheckResult(not problems, tuple(problems), present)

    def _listed(self, family: str, dst: str) -> bool:
        """Is our blackhole route to ``dst`` there? (True when unsure.)"""
        result = self._run(
            ["-j", family, "route", "show", "exact", dst, "type", "blackhole", "proto", PROTOCOL]
        )
        return not result.ok or bool(parse_routes(result.stdout))

    def _run(self, args: list[str]) -> RunResult:
        return self._runner.run([self._ip, *args])


def _family(ban: BanSpec) -> str:
    return "-6" if ban.version == 6 else "-4"


def parse_routes(text: str) -> list[str]:
    """Ban keys of the blackhole routes in ``ip -j route show`` output."""
    try:
        routes = json.loads(text or "[]")
    except ValueError:
        return []
    keys = []
    for route in routes if isinstance(routes, list) else []:
        if not isinstance(route, dict) or route.get("type", "blackhole") != "blackhole":
            continue
        try:
            keys.append(key_of(str(route.get("dst", ""))))
        except ValueError:
            continue
    return keys
