"""End to end: the never-block set read from a live namespace (root only; see ``netns.py``).

In the lab's target namespace the test adds routes (plain, IPv6, multipath in both families,
an IPv4 route via an IPv6 next hop, one in another table, a nexthop object), an IPv6 router
neighbour entry, a resolv.conf in a temporary file, and two SSH-like sessions: a Python
listener on port 22 in the target, connected to from the scanner over IPv4 and IPv6. Then a
child inside the target (``ip netns exec NS python3 -c CHILD``) builds ``NeverBlock`` and prints
the reason for each address as JSON; the test removes a route, adds another and tells the
child to refresh. Only the lab's two namespaces carry traffic (the two sessions on the veth).
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import netns
import pytest

_REASON = netns.unavailable()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

Lab = netns.Lab
_WAIT = 60.0  # generous: a child that imports the package and dumps sockets, on a loaded machine

SSH6_CLIENT = "fd00:5e::22"  # the scanner's second IPv6 address, used for the IPv6 session
ORDINARY4 = "198.18.0.3"  # a scanner address that talks to nobody: not protected
RESOLVERS = ("198.18.0.53", "fd00:5e::53")

ROUTES: list[tuple[str, ...]] = [
    ("route", "add", "198.18.9.0/24", "via", "198.18.0.254"),
    ("-6", "route", "add", "fd00:5e:9::/64", "via", "fd00:5e::fe"),
    ("route", "add", "198.18.10.0/24", "nexthop", "via", "198.18.0.250",
     "nexthop", "via", "198.18.0.251"),
    ("-6", "route", "add", "fd00:5e:10::/64", "nexthop", "via", "fd00:5e::fa", "dev", "veth-t",
     "nexthop", "via", "fd00:5e::fb", "dev", "veth-t"),
    ("route", "add", "198.18.11.0/24", "via", "inet6", "fd00:5e::fc", "dev", "veth-t"),
    ("route", "add", "198.18.12.0/24", "via", "198.18.0.249", "table", "100"),
    ("-6", "neigh", "add", "fd00:5e::fd", "lladdr", "02:00:00:00:00:fd", "dev", "veth-t",
     "router", "nud", "permanent"),
    ("nexthop", "add", "id", "7", "via", "198.18.0.248", "dev", "veth-t"),
]  # fmt: skip

EXPECTED: dict[str, str | None] = {
    "198.18.0.254": "gateway of route 198.18.9.0/24",
    "fd00:5e::fe": "gateway of route fd00:5e:9::/64",
    "198.18.0.250": "gateway of route 198.18.10.0/24",
    "198.18.0.251": "gateway of route 198.18.10.0/24",
    "fd00:5e::fa": "gateway of route fd00:5e:10::/64",
    "fd00:5e::fb": "gateway of route fd00:5e:10::/64",
    "fd00:5e::fc": "gateway of route 198.18.11.0/24",
    "198.18.0.249": "gateway of route 198.18.12.0/24 (table 100)",
    "fd00:5e::fd": "IPv6 router",
    "198.18.0.248": "gateway of nexthop object 7",
    Lab.TARGET4: "host address",
    Lab.TARGET6: "host address",
    Lab.BROADCAST4: "broadcast address of 198.18.0.0/24",
    Lab.SCANNER4: "SSH peer",
    SSH6_CLIENT: "SSH peer",
    "127.0.0.1": "host address",
    "169.254.1.1": "link-local",
    "fe80::99": "link-local",
    "224.0.0.1": "multicast",
    "ff02::1": "multicast",
    "255.255.255.255": "broadcast",
    "0.0.0.0": "this network (0.0.0.0/8)",
    "::": "unspecified address",
    "198.18.0.247": None,  # the next hop of the route added later
    ORDINARY4: None,
    Lab.SCANNER6: None,
    "198.18.9.1": None,  # inside a routed network, but no next hop
}

# The listener holds every connection it accepts and reports each one.
LISTENER = """
import socket
server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 peers as ::ffff:a.b.c.d
server.bind(("::", 22))
server.listen(8)
print("listening", flush=True)
held = []
while True:
    conn, peer = server.accept()
    held.append(conn)
    print("accepted", peer[0], flush=True)
"""

CLIENT = f"""
import socket, sys
a = socket.create_connection(("{Lab.TARGET4}", 22), 5, ("{Lab.SCANNER4}", 0))
b = socket.create_connection(("{Lab.TARGET6}", 22), 5, ("{SSH6_CLIENT}", 0))
print("connected", flush=True)
sys.stdin.read()
"""

CHILD = """
import json, sys, time, timeit
from portsentinel.host.sshpeers import SshPeers
from portsentinel.host.neverblock import NeverBlock
from portsentinel.model import addr_text
import ipaddress

resolv_conf, addresses = sys.argv[1], json.loads(sys.argv[2])
warnings = []
nb = NeverBlock.for_host(resolv_conf=resolv_conf, ssh_ports=(22,), warn=warnings.append)

def report(**extra):
    why = {a: nb.why(ipaddress.ip_address(a).packed) for a in addresses}
    member = {a: ipaddress.ip_address(a).packed in nb for a in addresses}
    print(json.dumps({"why": why, "member": member, "warnings": warnings, **extra}), flush=True)

def timing():
    t0 = time.perf_counter()
    for _ in range(50):
        nb.refresh()
    refresh_us = (time.perf_counter() - t0) / 50 * 1e6
    env = {
        "nb": nb,
        "direct": nb.addresses,
        "hit": ipaddress.ip_address("198.18.0.254").packed,
        "miss": ipaddress.ip_address("198.18.0.3").packed,
        "miss6": ipaddress.ip_address("fd00:5e::2").packed,
    }
    n = 200000
    def per(stmt):
        return round(timeit.timeit(stmt, globals=env, number=n) / n * 1e9)
    return {
        "refresh_us": round(refresh_us, 1),
        "networks": len(nb),
        "hit_ns": per("hit in nb"),
        "miss_ns": per("miss in nb"),
        "miss6_ns": per("miss6 in nb"),
        "direct_miss_ns": per("miss in direct"),
    }

ssh = {
    b: sorted(addr_text(x) for x in SshPeers(backend=b).peers()) for b in ("netlink", "proc")
}
report(ssh=ssh, timing=timing())
sys.stdin.readline()
changed = nb.refresh()
report(changed=changed)
"""


class Lines:
    """A started process's output, line by line, each wait bounded (a reader thread)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.strip())

    def next(self, what: str) -> str:
        try:
            return self._queue.get(timeout=_WAIT)
        except queue.Empty:
            pytest.fail(f"no {what} within {_WAIT}s (exit status {self.proc.poll()})")


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    with netns.Lab.create(prefix="pnb") as built:
        yield built


def _build(lab: netns.Lab, tmp_path: Path) -> str:
    for args in ROUTES:
        lab.run(lab.target, ["ip", *args])
    lab.run(lab.scanner, ["ip", "addr", "add", f"{ORDINARY4}/24", "dev", lab.SCANNER_IF])
    lab.run(lab.scanner, ["ip", "-6", "addr", "add", f"{SSH6_CLIENT}/64", "dev",
                          lab.SCANNER_IF, "nodad"])  # fmt: skip
    scanner_mac = lab.link_address(lab.scanner, lab.SCANNER_IF)
    lab.set_neighbour(lab.target, lab.TARGET_IF, SSH6_CLIENT, scanner_mac)
    lab.check_closed()
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(
        "# test resolvers\nsearch lab.test\n"
        + "".join(f"nameserver {address}\n" for address in RESOLVERS)
    )
    return str(resolv)


def _open_sessions(lab: netns.Lab) -> None:
    pipes: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    listener = Lines(lab.start(lab.target, [sys.executable, "-c", LISTENER], **pipes))
    assert listener.next("listening line") == "listening"
    client = Lines(lab.start(lab.scanner, [sys.executable, "-c", CLIENT], **pipes))
    assert client.next("connected line") == "connected"
    peers = {listener.next("accepted line").split()[1] for _ in range(2)}
    assert peers == {f"::ffff:{Lab.SCANNER4}", SSH6_CLIENT}


def test_never_block_set_in_a_live_namespace(lab: netns.Lab, tmp_path: Path) -> None:
    resolv_conf = _build(lab, tmp_path)
    _open_sessions(lab)
    expected = dict(EXPECTED)
    for address in RESOLVERS:
        expected[address] = f"DNS resolver in {resolv_conf}"
    proc = lab.start(
        lab.target,
        [sys.executable, "-c", CHILD, resolv_conf, json.dumps(sorted(expected))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    child = Lines(proc)
    first = json.loads(child.next("first report"))
    assert first["why"] == expected
    assert first["member"] == {address: why is not None for address, why in expected.items()}
    assert first["ssh"]["netlink"] == sorted([Lab.SCANNER4, SSH6_CLIENT])
    assert first["ssh"]["proc"] == first["ssh"]["netlink"]
    assert first["warnings"] == []
    print(f"\nnever-block set in the lab: {first['timing']}")

    lab.run(lab.target, ["ip", "route", "del", "198.18.9.0/24"])
    lab.run(lab.target, ["ip", "route", "add", "198.18.13.0/24", "via", "198.18.0.247"])
    assert proc.stdin is not None
    proc.stdin.write("refresh\n")
    proc.stdin.flush()
    second = json.loads(child.next("second report"))
    assert second["changed"] is True
    expected["198.18.0.254"] = None
    expected["198.18.0.247"] = "gateway of route 198.18.13.0/24"
    assert second["why"] == expected
    assert second["member"]["198.18.0.254"] is False
    assert proc.wait(_WAIT) == 0
