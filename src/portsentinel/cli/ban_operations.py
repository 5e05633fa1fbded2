"""The work of the ban verbs (``cli/bans.py``): list, block, unblock, allow. They work on the
state store and the backends directly, whether or not a daemon runs; a running daemon notices
the change within a second (it follows the store) and updates what its detector remembers.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from portsentinel import paths
from portsentinel.alert.events import iso_time
from portsentinel.cli.history_views import reference_time, say_damaged
from portsentinel.cli.tables import Column, write_rows
from portsentinel.config.setup import Setup
from portsentinel.config.types import ban_duration
from portsentinel.errors import ConfigError
from portsentinel.fleet import withdraw
from portsentinel.host.neverblock import NeverBlock
from portsentinel.model import Proto
from portsentinel.respond.backends import Backends, files_for
from portsentinel.respond.bans import BanManager, BanRequest
from portsentinel.store.fleet import FleetDecision
from portsentinel.store.records import BanRecord, LiftedBy
from portsentinel.store.sqlite import Store


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
    setup: Setup,
    state_dir: str,
    addresses: list[str],
    *,
    every: bool,
    out: TextIO,
    err: TextIO,
    local: bool = False,
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
            withdraw.before_lift(bans.store, address, now, local=local)
            record = bans.unblock(address, now)
            fleet = None if local else withdraw.everywhere(setup.settings, bans.store, address, now)
            if fleet is not None:
                out.write(fleet + "\n")
            if local and bans.store.fleet_decisions(address=address):
                out.write(f"fleet: the fleet's decisions on {address} are no longer applied here\n")
            if record is None and fleet is None:
                err.write(f"portsentinel: {address} is not blocked\n")
                missing += 1
            elif record is not None:
                out.write(f"unblocked {address} (ban {record.id})\n")
    return paths.EXIT_FAILURE if missing and not every else paths.EXIT_OK


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
    return paths.EXIT_OK


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
        return paths.EXIT_FAILURE
    with manager(setup, state_dir, err) as bans:
        allowed = [
            n
            for n in bans.store.allowed()
            if ipaddress.ip_address(target) in ipaddress.ip_network(n)
        ]
        if allowed:
            why = f"allowed by the operator ({allowed[0]})"
            err.write(f"portsentinel: refusing to block {target}: {why}\n")
            return paths.EXIT_FAILURE
        request = BanRequest(
            target, 0, Proto.TCP, None, 1, "manual block", manual=True, duration=duration
        )
        record = bans.ban(request, now)
    if record is None:
        err.write(
            f"portsentinel: {target} was not blocked (already blocked, or every action failed)\n"
        )
        return paths.EXIT_FAILURE
    until = "permanently" if record.expires is None else f"until {iso_time(record.expires)}"
    out.write(f"blocked {target} {until} (ban {record.id})\n")
    return paths.EXIT_OK


def store_exists(state_dir: str) -> bool:
    """Read-only verbs never create a store where there is none."""
    return os.path.exists(os.path.join(state_dir, paths.STORE_NAME))


def list_bans(state_dir: str, as_json: bool, out: TextIO, err: TextIO | None = None) -> int:
    now = time.time()
    if not store_exists(state_dir):
        if not as_json:
            out.write("no active bans\n")
        return paths.EXIT_OK
    store = Store.open(state_dir, offline=None)
    try:
        # A replay's store answers as of the end of its capture, not as of today.
        records = store.active_bans(reference_time(store, now))
        offline = store.offline
        fleet = [d for d in store.fleet_decisions() if d.until > now and d.state == "applied"]
        if err is not None:
            say_damaged(store, err)
    finally:
        store.close()
    rows = [_ban_dict(r) for r in records] + [_fleet_dict(d) for d in fleet]
    if offline:  # a dry run's or a replay's: what would have been banned
        for row in rows:
            row["applied"] = False
        if not as_json:
            out.write("would-be bans (an offline store: a dry run's or a replay's), never "
                      "applied:\n")  # fmt: skip
    write_rows(rows, LIST_COLUMNS, out, as_json=as_json, empty="no active bans")
    return paths.EXIT_OK


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
        "origin": "local",
    }


def _fleet_dict(decision: FleetDecision) -> dict[str, object]:
    """A fleet decision this host applies, marked with its origin."""
    return {
        "address": decision.address,
        "since": None,
        "until": iso_time(decision.until),
        "state": "fleet",
        "reason": f"fleet: {decision.origin} {decision.scenario}",
        "rule": None,
        "offence": None,
        "ports": [],
        "hits": None,
        "origin": decision.origin,
        "decision": decision.id,
    }


def _ports(ports: object) -> str:
    items = [str(p) for p in ports] if isinstance(ports, list) else []
    return ", ".join(items[:8]) + (f" (+{len(items) - 8})" if len(items) > 8 else "")


def _time(value: object) -> str:
    return str(value)[:19]


LIST_COLUMNS = (
    Column("ADDRESS", "address"),
    Column("SINCE", "since", lambda v: "(fleet)" if v is None else _time(v)),
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
