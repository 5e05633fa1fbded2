"""The response side: backends that apply the bans the decision step has already decided.

Every backend follows one lifecycle (``base.Backend``: start, block, block_many, unblock,
check, repair, stop) and runs its programs through ``runner.Runner``, the one place that
starts processes (argv lists, timeouts, captured output). ``plan.plan_actions`` says which
backends act on a decision and in which order (PortSentry's KILL_* rules).

=============  ==================================================================
nftables       set elements with their lifetime in the kernel (the default)
iptables       ipset sets matched by one rule per chain, or one rule per ban
route          blackhole routes
hosts_deny     KILL_HOSTS_DENY lines in HOSTS_DENY_FILE
run_cmd        KILL_RUN_CMD / UNBLOCK_RUN_CMD
legacy         KILL_ROUTE run as written
=============  ==================================================================
"""

from __future__ import annotations

from portsentinel.block.base import ActionDetail, Backend, BackendBase, BanSpec, CheckResult
from portsentinel.block.command import CommandBackend, CommandTemplate
from portsentinel.block.hostsdeny import HostsDenyBackend
from portsentinel.block.iptables import IptablesBackend
from portsentinel.block.nftables import NftablesBackend
from portsentinel.block.plan import kill_route_replaced, plan_actions
from portsentinel.block.route import RouteBackend
from portsentinel.block.runner import CommandRunner, Runner, RunResult

__all__ = [
    "ActionDetail",
    "Backend",
    "BackendBase",
    "BanSpec",
    "CheckResult",
    "CommandBackend",
    "CommandRunner",
    "CommandTemplate",
    "HostsDenyBackend",
    "IptablesBackend",
    "NftablesBackend",
    "RouteBackend",
    "RunResult",
    "Runner",
    "kill_route_replaced",
    "plan_actions",
]
