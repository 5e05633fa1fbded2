"""rtnetlink address and link dumps and change notifications against a real kernel.

Each test creates its own network namespace (a name unique to the run), builds interfaces in
it, and removes it at the end. The checks run inside the namespace: this file is started again
there as a script (``ip netns exec NS python3 THIS_FILE SCENARIO``), which prints its findings
as JSON for the test to assert on. Only addresses from 198.18.0.0/15 and fd00::/8 are used;
nothing is linked to the root namespace.

A kernel without the ``dummy`` driver (some CI and container kernels) gets a veth pair with
both ends inside the namespace instead.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from portsentinel.host.addresses import (
    ARPHRD_LOOPBACK,
    AddressWatcher,
    RouteNetlink,
    dump_addresses,
    dump_links,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="rtnetlink is Linux only"),
    pytest.mark.skipif(
        sys.platform.startswith("linux") and os.geteuid() != 0,
        reason="needs root to create a network namespace (run the e2e tests with sudo)",
    ),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's ip command"),
]

V4 = "198.18.5.1"
V6 = "fd00:5e:5::1"
V4_LATER = "198.18.5.9"
DEADLINE_S = 10.0


# --- the test side (root namespace) ---------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"ps-hostaddr-{os.getpid()}-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", name], check=False, capture_output=True, text=True)
    if made.returncode != 0:
        # root and ip are there (the module's marks): a failure here is a broken lab, not a
        # missing tool, and must not pass for a skip.
        pytest.fail(f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def run_scenario(ns: str, scenario: str) -> dict[str, Any]:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, __file__, scenario],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_dump_addresses_sees_configured_loopback_and_link_local(netns: str) -> None:
    got = run_scenario(netns, "addresses")
    addresses = set(got["addresses"])
    assert {V4, V6, "127.0.0.1", "::1"} <= addresses
    # IPv6 link-local addresses of the test link are local too (veth without carrier has none).
    assert got["link_local_expected"] <= sum(a.startswith("fe80:") for a in addresses)
    assert {a for a in addresses if not a.startswith("fe80:")} == {V4, V6, "127.0.0.1", "::1"}
    assert got["lo"] == {"up": True, "loopback": True, "type": ARPHRD_LOOPBACK}
    print(f"\none dump in a namespace: {got['timing_us']}")


def test_bridge_port_has_a_master(netns: str) -> None:
    got = run_scenario(netns, "bridge")
    assert got["br0"] == {"kind": "bridge", "master": None, "type": 1}
    assert got["port"]["master"] == got["br0_index"]
    assert got["lone"]["master"] is None


def test_watcher_reports_address_and_link_changes(netns: str) -> None:
    got = run_scenario(netns, "watch")
    assert got["added_seen_after_s"] is not None, "no notification for an added address"
    assert V4_LATER in got["after_add"]
    assert got["removed_seen_after_s"] is not None, "no notification for a removed address"
    assert V4_LATER not in got["after_del"]
    assert V4 in got["after_del"]
    assert got["down_seen_after_s"] is not None, "no notification for a link going down"
    assert got["up_after_down"] is False
    assert got["malformed"] == 0
    print(f"\nnotified after (s): {got['added_seen_after_s']}, {got['removed_seen_after_s']}")


# --- the namespace side (run as a script inside the test's namespace) -----------------------


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def add_test_link(name: str) -> bool:
    """A dummy interface, or one end of a namespace-internal veth pair; True for dummy."""
    made = subprocess.run(
        ["ip", "link", "add", name, "type", "dummy"], check=False, capture_output=True
    )
    if made.returncode != 0:
        ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p")
    return made.returncode == 0


def text(addresses: frozenset[bytes]) -> list[str]:
    return sorted(str(ipaddress.ip_address(a)) for a in addresses)


def best_us(fn: Callable[[], object], rounds: int = 300) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return round(best * 1e6, 1)


def scenario_addresses() -> dict[str, Any]:
    ip("link", "set", "lo", "up")
    is_dummy = add_test_link("d0")
    ip("link", "set", "d0", "up")
    ip("addr", "add", f"{V4}/24", "dev", "d0")
    ip("addr", "add", f"{V6}/64", "dev", "d0", "nodad")
    lo = next(link for link in dump_links().values() if link.name == "lo")
    with RouteNetlink() as rtnl:
        timing = {
            "dump_addresses()": best_us(dump_addresses),
            "dump_links()": best_us(dump_links),
            "RouteNetlink.local_addresses() (socket reused)": best_us(rtnl.local_addresses),
            "RouteNetlink.links() (socket reused)": best_us(rtnl.links),
        }
    return {
        "addresses": text(dump_addresses()),
        "link_local_expected": 1 if is_dummy else 0,
        "lo": {"up": lo.is_up, "loopback": lo.is_loopback, "type": lo.link_type},
        "timing_us": timing,
    }


def scenario_bridge() -> dict[str, Any]:
    ip("link", "add", "br0", "type", "bridge")
    add_test_link("d1")
    add_test_link("d2")
    ip("link", "set", "d1", "master", "br0")
    links = {link.name: link for link in dump_links().values()}
    br0 = links["br0"]
    return {
        "br0_index": br0.ifindex,
        "br0": {"kind": br0.kind, "master": br0.master, "type": br0.link_type},
        "port": {"master": links["d1"].master},
        "lone": {"master": links["d2"].master},
    }


def wait_for_change(watcher: AddressWatcher) -> float | None:
    """Seconds until ``poll()`` reports a change, or None at the deadline."""
    start = time.monotonic()
    while (left := DEADLINE_S - (time.monotonic() - start)) > 0:
        readable, _, _ = select.select([watcher], [], [], left)
        if readable and watcher.poll():
            return round(time.monotonic() - start, 4)
    return None


def scenario_watch() -> dict[str, Any]:
    ip("link", "set", "lo", "up")
    add_test_link("d0")
    ip("link", "set", "d0", "up")
    ip("addr", "add", f"{V4}/24", "dev", "d0")
    with AddressWatcher() as watcher:
        watcher.poll()  # whatever the set-up left pending
        ip("addr", "add", f"{V4_LATER}/24", "dev", "d0")
        added = wait_for_change(watcher)
        after_add = text(dump_addresses())
        ip("addr", "del", f"{V4_LATER}/24", "dev", "d0")
        removed = wait_for_change(watcher)
        after_del = text(dump_addresses())
        ip("link", "set", "d0", "down")
        down = wait_for_change(watcher)
        d0 = next(link for link in dump_links().values() if link.name == "d0")
        malformed = watcher.malformed
    return {
        "added_seen_after_s": added,
        "after_add": after_add,
        "removed_seen_after_s": removed,
        "after_del": after_del,
        "down_seen_after_s": down,
        "up_after_down": d0.is_up,
        "malformed": malformed,
    }


SCENARIOS: dict[str, Callable[[], dict[str, Any]]] = {
    "addresses": scenario_addresses,
    "bridge": scenario_bridge,
    "watch": scenario_watch,
}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]]()))
