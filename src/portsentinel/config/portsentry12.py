"""PortSentry 1.2's own settings, the base of ``schema.Settings`` (declared as ``schema``
says; split out only to keep each module short). Its fields come first in every listing.
"""

from __future__ import annotations

from dataclasses import dataclass

from portsentinel.config import types as t
from portsentinel.config.declaration import Origin, setting
from portsentinel.config.types import BlockLevel

# Debian 1.2's "aware" lists (the file spells the ranges out port by port).
DEBIAN_TCP_PORTS = (
    "1,11,15,79,111,119,143,540,635,1080,1524,2000,5742,6667,12345,12346,20034,27665,"
    "31337,32771-32774,40421,49724,54320"
)
DEBIAN_UDP_PORTS = "1,7,9,69,161,162,513,635,640,641,700,37444,34555,31335,32770-32774,31337,54321"


def _needs_target(raw: str) -> str | None:
    if raw and "$TARGET$" not in raw:
        return "has no $TARGET$ macro; PortSentry 1.2 skips such an action"
    return None


def _zero_or_one(raw: str) -> str | None:
    if raw.strip() not in ("0", "1"):
        return f"{raw.strip()!r} is read as {'0' if int(raw) == 0 else '1'} (expected 0 or 1)"
    return None


_P12: Origin = "portsentry-1.2"


@dataclass(frozen=True, slots=True, kw_only=True)
class PortSentry12Settings:
    """The settings PortSentry 1.2 knows, with its defaults (Debian's for the port lists)."""

    # --- PortSentry 1.2 -----------------------------------------------------------------
    tcp_ports: frozenset[int] = setting(
        key="TCP_PORTS", parse=t.port_list, default=DEBIAN_TCP_PORTS, unit="ports",
        help="TCP ports watched in the tcp and stcp modes", origin=_P12,
    )  # fmt: skip
    udp_ports: frozenset[int] = setting(
        key="UDP_PORTS", parse=t.port_list, default=DEBIAN_UDP_PORTS, unit="ports",
        help="UDP ports watched in the udp and sudp modes", origin=_P12,
    )  # fmt: skip
    advanced_ports_tcp: int = setting(
        key="ADVANCED_PORTS_TCP", parse=t.port_limit, default="1024", unit="port number",
        help="atcp mode watches every TCP port below this number", origin=_P12,
    )  # fmt: skip
    advanced_ports_udp: int = setting(
        key="ADVANCED_PORTS_UDP", parse=t.port_limit, default="1024", unit="port number",
        help="audp mode watches every UDP port below this number", origin=_P12,
    )  # fmt: skip
    advanced_exclude_tcp: frozenset[int] = setting(
        key="ADVANCED_EXCLUDE_TCP", parse=t.port_list, default="113,139", unit="ports",
        help="TCP ports atcp mode never watches (besides ports in use)", origin=_P12,
    )  # fmt: skip
    advanced_exclude_udp: frozenset[int] = setting(
        key="ADVANCED_EXCLUDE_UDP", parse=t.port_list, default="520,138,137,67", unit="ports",
        help="UDP ports audp mode never watches (besides ports in use)", origin=_P12,
    )  # fmt: skip
    ignore_file: str = setting(
        key="IGNORE_FILE", parse=t.path, default="", unit="path",
        help="addresses and CIDR ranges never acted against, one per line; a regular file of "
        "at most 16 MiB, else the start stops (missing: a warning, nothing ignored)",
        origin=_P12,
    )  # fmt: skip
    history_file: str = setting(
        key="HISTORY_FILE", parse=t.path, default="", unit="path",
        help="PortSentry-format history lines are appended here (fail2ban reads it)",
        origin=_P12,
    )  # fmt: skip
    blocked_file: str = setting(
        key="BLOCKED_FILE", parse=t.path, default="", unit="path",
        help="PortSentry-format blocked list; the mode name is appended (.atcp)", origin=_P12,
    )  # fmt: skip
    resolve_host: bool = setting(
        key="RESOLVE_HOST", parse=t.flag, default="0", unit="0/1",
        help="put the name of each scanner (reverse DNS) in its history and blocked lines, "
        "and log it. A ban never waits for it: its lines wait at most 2 s for the name, then "
        "say the address; at most 256 lookups wait, more are not made", origin=_P12,
    )  # fmt: skip
    block_tcp: BlockLevel = setting(  # noqa: RUF009 - a dataclasses.field
        key="BLOCK_TCP", parse=t.block_level, default="1", unit="level",
        help="response to TCP scans: 0 log only, 1 block, 2 run KILL_RUN_CMD only",
        origin=_P12,
    )  # fmt: skip
    block_udp: BlockLevel = setting(  # noqa: RUF009 - a dataclasses.field
        key="BLOCK_UDP", parse=t.block_level, default="1", unit="level",
        help="response to UDP scans: 0 log only, 1 block, 2 run KILL_RUN_CMD only",
        origin=_P12,
    )  # fmt: skip
    kill_route: str = setting(
        key="KILL_ROUTE", parse=t.command, default="", unit="command",
        help="blocking command for BLOCK_BACKEND=legacy; a native backend replaces it",
        origin=_P12, lint=_needs_target,
    )  # fmt: skip
    kill_hosts_deny: str = setting(
        key="KILL_HOSTS_DENY", parse=t.text, default="", unit="text",
        help="line appended to HOSTS_DENY_FILE when blocking", origin=_P12,
        lint=_needs_target,
    )  # fmt: skip
    kill_run_cmd_first: bool = setting(
        key="KILL_RUN_CMD_FIRST", parse=t.nonzero_flag, default="0", unit="0/1",
        help="1 runs KILL_RUN_CMD before blocking, 0 after it", origin=_P12,
        lint=_zero_or_one,
    )  # fmt: skip
    kill_run_cmd: str = setting(
        key="KILL_RUN_CMD", parse=t.command, default="", unit="command",
        help="command run for every triggered source; $TARGET$ $PORT$ $MODE$ are validated "
        "values, passed as separate arguments (shell syntax gets them as quoted $1 $2 $3)",
        origin=_P12,
    )  # fmt: skip
    scan_trigger: int = setting(
        key="SCAN_TRIGGER", parse=t.int_range(0, 65535), default="0", unit="count",
        help="hits from one source before responding; 0 and 1 both act on the first",
        origin=_P12,
    )  # fmt: skip
    port_banner: str = setting(
        key="PORT_BANNER", parse=t.text, default="", unit="text",
        help="text sent to a peer that triggered a bound-port (tcp/udp) mode", origin=_P12,
    )  # fmt: skip
