"""Which backends act on a triggered source, and in what order: PortSentry's rules as a table.

PortSentry 1.2 (``reference/portsentry.md`` section f), per protocol:

* BLOCK_x = 0: nothing runs (the history line is still written, by the responder).
* BLOCK_x = 1: KILL_RUN_CMD_FIRST set: RUN_CMD, HOSTS_DENY, ROUTE; else HOSTS_DENY, ROUTE,
  RUN_CMD. Each step only when its string is set; KILL_ROUTE and KILL_HOSTS_DENY only when
  they contain ``$TARGET$`` (1.2 skips them otherwise).
* BLOCK_x = 2: RUN_CMD only.

PortSentinel's BLOCK_BACKEND fills the ROUTE step: a native backend (nftables, iptables,
route) replaces KILL_ROUTE, which then does not run; ``legacy`` runs KILL_ROUTE as written.
The names returned are the backends' ``name`` attributes, so the responder looks them up and
runs them in this order, recording each one's detail.
"""

from __future__ import annotations

RUN_CMD = "run_cmd"
HOSTS_DENY = "hosts_deny"
LEGACY = "legacy"
NATIVE = ("nftables", "iptables", "route")
BACKENDS = (*NATIVE, LEGACY)

LOG_ONLY, BLOCK, RUN_CMD_ONLY = 0, 1, 2


def plan_actions(
    level: int,
    *,
    backend: str,
    kill_route: str = "",
    kill_hosts_deny: str = "",
    kill_run_cmd: str = "",
    kill_run_cmd_first: bool = False,
) -> list[str]:
    """The ordered backend names for a decision at BLOCK_x = ``level``.

    ``backend`` is BLOCK_BACKEND's value; the strings are the KILL_* settings as loaded.
    ValueError for a level or backend the configuration cannot produce.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown block backend {backend!r}")
    run_cmd = [RUN_CMD] if kill_run_cmd.strip() else []
    if level == LOG_ONLY:
        return []
    if level == RUN_CMD_ONLY:
        return run_cmd
    if level != BLOCK:
        raise ValueError(f"BLOCK level {level!r} is not 0, 1 or 2")
    hosts_deny = [HOSTS_DENY] if "$TARGET$" in kill_hosts_deny else []
    route = [backend]
    if backend == LEGACY and "$TARGET$" not in kill_route:
        route = []
    if kill_run_cmd_first:
        return [*run_cmd, *hosts_deny, *route]
    return [*hosts_deny, *route, *run_cmd]


def kill_route_replaced(backend: str, kill_route: str) -> bool:
    """True when KILL_ROUTE is set but a native backend takes its place (the start-up log
    says so)."""
    return backend in NATIVE and bool(kill_route.strip())
