"""The operator's ban verbs: list, block, unblock, allow. They work on the state store and the
backends directly, whether or not a daemon runs; a running daemon notices the change within a
second (it follows the store) and updates what its detector remembers.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from portsentinel.alert.events import iso_time
from portsentinel.cli.history import reference_time
from portsentinel.cli.tables import Column, write_rows
from portsentinel.config.setup import Setup
from portsentinel.config.types import ban_duration
from portsentinel.errors import ConfigError, PortSentinelError
from portsentinel.host.neverblock import NeverBlock
from portsentinel.model import Proto
from portsentinel.respond.bans import Backends, BanManager, BanRequest, files_for
from portsentinel.store.records import BanRecord, LiftedBy
from portsentinel.store.sqlite import DB_NAME, Store

EXIT_OK, EXIT_FAILURE = 0, 1


def normalise(address: str, key: str = "ADDR") -> str:
    try:
        parsed = ipaddress.ip_address(address.strip())
    except ValueError:
        raise ConfigError(
            f"not an address: {address!r}", key=key, expected="an IPv4 or IPv6 address"
        ) from None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    return str(parsed)


def _say(stream: TextIO, line: str) -> None:
    stream.write(line + "\n")


@contextmanager
def manager(setup: Setup, state_dir: str, err: TextIO) -> Iterator[BanManager]:
    s = setup.settings
    store = Store.open(state_dir)
    backends = Backends(s)
    files = files_for(s)
    try:
        yield BanManager(s, store, backends, log=lambda line: _say(err, line), files=files)
    finally:
        backends.stop()
        store.close()


def unblock(
    setup: Setup, state_dir: str, addresses: list[str], *, every: bool, out: TextIO, err: TextIO
) -> int:
    now = time.time()
    with manager(setup, state_dir, err) as bans:
        targets = (
            [r.address for r in bans.store.active_bans(now)]
            if every
            else [normalise(a) for a in addresses]
        )
        missing = 0
        for address in targets:
            record = bans.unblock(address, now)
            if record is None:
                err.write(f"portsentinel: {address} is not blocked\n")
                missing += 1
            else:
                out.write(f"unblocked {address} (ban {record.id})\n")
    return EXIT_FAILURE if missing and not every else EXIT_OK


def allow(
    setup: Setup, state_dir: str, address: str, *, comment: str, out: TextIO, err: TextIO
) -> int:
    now = time.time()
    try:
        network = ipaddress.ip_network(address.strip(), strict=False)
    except ValueError:
        raise ConfigError(
            f"not an address or network: {address!r}",
            key="ADDR",
            expected="an address or CIDR range",
        ) from None
    with manager(setup, state_dir, err) as bans:
        # The entry before the lifts: a running daemon that sees a ban lifted must already see
        # the address allowed, or its next probe would be banned again.
        added = bans.store.allow(str(network), now, comment)
        for record in bans.store.active_bans(now):
            if ipaddress.ip_address(record.address) in network:
                bans.lift(record, now, LiftedBy.ALLOW)
                out.write(f"unblocked {record.address} (ban {record.id})\n")
    out.write(f"allowed {added}: it will not be blocked\n")
    return EXIT_OK


def block(
    setup: Setup,
    state_dir: str,
    address: str,
    *,
    duration: float | None,
    out: TextIO,
    err: TextIO,
) -> int:
    """A manual ban; still refused for a protected address (this host, a gateway ...)."""
    now = time.time()
    target = normalise(address)
    protected = NeverBlock.for_host(
        resolv_conf=setup.settings.resolv_conf,
        ssh_ports=setup.settings.ssh_ports if setup.settings.never_block_ssh_peers else (),
        ignore=setup.ignore,
    )
    try:
        protected.refresh()
        reason = protected.why(ipaddress.ip_address(target).packed)
    finally:
        protected.close()
    if reason is not None:
        err.write(f"portsentinel: refusing to block {target}: never-block set ({reason})\n")
        return EXIT_FAILURE
    with manager(setup, state_dir, err) as bans:
        allowed = [
            n
            for n in bans.store.allowed()
            if ipaddress.ip_address(target) in ipaddress.ip_network(n)
        ]
        if allowed:
            why = f"allowed by the operator ({allowed[0]})"
            err.write(f"portsentinel: refusing to block {target}: {why}\n")
            return EXIT_FAILURE
        request = BanRequest(
            target, 0, Proto.TCP, None, 1, "manual block", manual=True, duration=duration
        )
        record = bans.ban(request, now)
    if record is None:
        err.write(
            f"portsentinel: {target} was not blocked (already blocked, or every action failed)\n"
        )
        return EXIT_FAILURE
    until = "permanently" if record.expires is None else f"until {iso_time(record.expires)}"
    out.write(f"blocked {target} {until} (ban {record.id})\n")
    return EXIT_OK


def store_exists(state_dir: str) -> bool:
    """Read-only verbs never create a store where there is none."""
    return os.path.exists(os.path.join(state_dir, DB_NAME))


def list_bans(state_dir: str, as_json: bool, out: TextIO) -> int:
    now = time.time()
    if not store_exists(state_dir):
        if not as_json:
            out.write("no active bans\n")
        return EXIT_OK
    store = Store.open(state_dir, offline=None)
    try:
        # A replay's store answers as of the end of its capture, not as of today.
        records = store.active_bans(reference_time(store, now))
    finally:
        store.close()
    rows = [_ban_dict(r) for r in records]
    write_rows(rows, LIST_COLUMNS, out, as_json=as_json, empty="no active bans")
    return EXIT_OK


def _ban_dict(record: BanRecord) -> dict[str, object]:
    width = 128 if ":" in record.address else 32
    evidence = record.evidence
    return {
        "address": record.address
        if record.prefix == width
        else f"{record.address}/{record.prefix}",
        "since": iso_time(record.created),
        "until": None if record.expires is None else iso_time(record.expires),
        "state": record.state.value,
        "reason": record.reason,
        "rule": record.rule,
        "offence": record.offence,
        "ports": list(evidence.get("ports", [])),
        "hits": evidence.get("hits"),
    }


def _ports(ports: object) -> str:
    items = [str(p) for p in ports] if isinstance(ports, list) else []
    return ", ".join(items[:8]) + (f" (+{len(items) - 8})" if len(items) > 8 else "")


def _time(value: object) -> str:
    return str(value)[:19]


LIST_COLUMNS = (
    Column("ADDRESS", "address"),
    Column("SINCE", "since", _time),
    Column("UNTIL", "until", lambda v: "permanent" if v is None else _time(v)),
    Column("REASON", "reason", shrink=True),
    Column("PORTS SEEN", "ports", _ports, shrink=True),
)


def parse_duration(text: str) -> float | None:
    """``--for 30m``; ``permanent`` gives None (no end)."""
    try:
        return ban_duration(text)
    except ValueError as exc:
        raise ConfigError(str(exc), key="--for", expected="30s, 15m, 1h, 7d or permanent") from None


def status_report(state_dir: str, daemon: object | None) -> dict[str, object]:
    """The daemon's own status (None when it does not run) and the store's active bans."""
    report: dict[str, object] = {"running": daemon is not None, "state_dir": state_dir}
    if isinstance(daemon, dict):
        report.update(daemon)
    if not store_exists(state_dir):
        report["store"] = f"no state store in {state_dir}"
        return report
    try:
        store = Store.open(state_dir, offline=None)
    except PortSentinelError as exc:
        report["store"] = str(exc)
        return report
    try:
        report["active_bans"] = len(store.active_bans(time.time()))
    finally:
        store.close()
    return report


def status_text(report: dict[str, object]) -> str:
    lines = []
    if not report.get("running"):
        lines.append(f"portsentinel is not running on {report['state_dir']}")
    else:
        started = report.get("started")
        since = iso_time(started) if isinstance(started, float) else "?"
        lines.append(
            f"portsentinel {report.get('version')} is running (pid {report.get('pid')}, "
            f"since {since})"
        )
        lines.append(f"configuration: {report.get('config') or 'embedded defaults'}")
        watched = report.get("ports_watched")
        in_use = report.get("ports_in_use")
        if isinstance(watched, dict) and isinstance(in_use, dict):
            for mode, count in watched.items():
                busy = in_use.get("tcp" if mode.endswith("tcp") else "udp", 0)
                lines.append(f"mode {mode}: {count} ports watched, {busy} in use now")
        counters = report.get("counters")
        if isinstance(counters, dict):
            keys = ("packets", "probes", "decisions_alert", "decisions_block",
                    "decisions_command", "kernel_drops", "decode_errors")  # fmt: skip
            shown = ", ".join(
                f"{k.replace('decisions_', '')} {counters[k]}" for k in keys if k in counters
            )
            lines.append(f"counters: {shown}")
        lines.append(f"never-block set: {report.get('never_block_networks')} networks")
    if "active_bans" in report:
        lines.append(f"active bans: {report['active_bans']}")
    elif "store" in report:
        lines.append(f"store: {report['store']}")
    return "\n".join(lines) + "\n"
