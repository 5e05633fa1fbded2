"""End-to-end: ``SocketTable`` and ``InUseView`` against a real kernel, in a throwaway netns.

The test creates a network namespace with a name unique to the run (only its loopback is
up: no link to the root namespace, no route out), runs a child Python inside it with
``ip netns exec`` that opens sockets and asks the kernel, and removes the namespace at the
end. The child prints one JSON object; the tests below judge it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

# Ports inside the fresh namespace, where nothing else is bound.
TCP4, TCP6, UDP4, UDP6 = 2201, 2202, 2203, 2204
SERVER, CLIENT = 2205, 2206  # the two ends of an ESTABLISHED connection, no listener left
LATE_TCP, LATE_TCP6, LATE_UDP, NEVER = 2207, 2208, 2209, 2210
ASKED = [TCP4, TCP6, UDP4, UDP6, SERVER, CLIENT, NEVER]

CHILD = f"""
import dataclasses, json, socket
from portsentinel.host.inuse import InUseView, SocketTable
from portsentinel.model import Proto

ASKED = {ASKED!r}

def snapshot(table):
    return {{
        "tcp": sorted(table.ports_in_use(Proto.TCP)),
        "udp": sorted(table.ports_in_use(Proto.UDP)),
        "tcp_ports": [p for p in ASKED if table.port_in_use(Proto.TCP, p)],
        "udp_ports": [p for p in ASKED if table.port_in_use(Proto.UDP, p)],
    }}

def tcp_listener(family, address, port):
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((address, port))
    sock.listen()
    return sock

def udp_socket(family, address, port):
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((address, port))
    return sock

out = {{}}
t4 = tcp_listener(socket.AF_INET, "127.0.0.1", {TCP4})  # bound to one address
t6 = tcp_listener(socket.AF_INET6, "::", {TCP6})
u4 = udp_socket(socket.AF_INET, "0.0.0.0", {UDP4})
u6 = udp_socket(socket.AF_INET6, "::1", {UDP6})
server = tcp_listener(socket.AF_INET, "127.0.0.1", {SERVER})
client = socket.socket()
client.bind(("127.0.0.1", {CLIENT}))
client.connect(("127.0.0.1", {SERVER}))
accepted, _ = server.accept()
server.close()  # both ends ESTABLISHED, nobody listening on either port

netlink, proc, auto = SocketTable("netlink"), SocketTable("proc"), SocketTable()
out["before"] = {{"netlink": snapshot(netlink), "proc": snapshot(proc)}}
out["port_filter"] = netlink.port_filter
out["range_filter"] = snapshot(SocketTable("netlink", exact_filter=False))
auto.ports_in_use(Proto.TCP)
auto.ports_in_use(Proto.UDP)
out["auto"] = [auto.backend_for(Proto.TCP), auto.backend_for(Proto.UDP), auto.fallbacks]

t4.close()
out["after_close"] = {{"netlink": snapshot(netlink), "proc": snapshot(proc)}}

tcp_view = InUseView(SocketTable(), Proto.TCP)
udp_view = InUseView(SocketTable(), Proto.UDP)
tcp_view.refresh()
udp_view.refresh()
out["never"] = [{NEVER} in tcp_view, {NEVER} in udp_view]
late = [
    tcp_listener(socket.AF_INET, "0.0.0.0", {LATE_TCP}),
    tcp_listener(socket.AF_INET6, "::1", {LATE_TCP6}),
    udp_socket(socket.AF_INET, "127.0.0.1", {LATE_UDP}),
]
out["late"] = [{LATE_TCP} in tcp_view, {LATE_TCP6} in tcp_view, {LATE_UDP} in udp_view]
out["late_again"] = [{LATE_TCP} in tcp_view, {LATE_UDP} in udp_view]
out["stats"] = [dataclasses.asdict(tcp_view.stats), dataclasses.asdict(udp_view.stats)]
print(json.dumps(out))
"""


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: creates a network namespace with `ip netns add`"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` command"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    name = f"ps-inuse-{os.getpid()}-{secrets.token_hex(4)}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


@pytest.fixture(scope="module")
def result(netns: str) -> dict[str, Any]:
    child = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    answer: dict[str, Any] = json.loads(child.stdout.splitlines()[-1])
    return answer


def test_listeners_and_bound_udp_sockets_are_in_use(result: dict[str, Any]) -> None:
    state = result["before"]["netlink"]
    assert state["tcp"] == [TCP4, TCP6]
    assert state["udp"] == [UDP4, UDP6]
    assert state["tcp_ports"] == [TCP4, TCP6]
    assert state["udp_ports"] == [UDP4, UDP6]


def test_established_ports_are_not_tcp_in_use(result: dict[str, Any]) -> None:
    for backend in ("netlink", "proc"):
        state = result["before"][backend]
        assert SERVER not in state["tcp"]
        assert CLIENT not in state["tcp"]
        assert SERVER not in state["tcp_ports"]
        assert CLIENT not in state["tcp_ports"]


def test_closed_listener_is_gone(result: dict[str, Any]) -> None:
    state = result["after_close"]["netlink"]
    assert state["tcp"] == [TCP6]
    assert state["tcp_ports"] == [TCP6]
    assert state["udp"] == [UDP4, UDP6]


def test_netlink_and_proc_agree(result: dict[str, Any]) -> None:
    for moment in ("before", "after_close"):
        assert result[moment]["netlink"] == result[moment]["proc"], moment


def test_auto_uses_netlink_with_a_port_filter(result: dict[str, Any]) -> None:
    assert result["auto"] == ["netlink", "netlink", {}]
    assert result["port_filter"] in ("S_EQ", "S_GE/S_LE")


def test_range_filter_for_old_kernels_gives_the_same_answers(result: dict[str, Any]) -> None:
    assert result["range_filter"] == result["before"]["netlink"]


def test_view_sees_a_listener_opened_after_its_refresh(result: dict[str, Any]) -> None:
    assert result["never"] == [False, False]
    assert result["late"] == [True, True, True]
    assert result["late_again"] == [True, True]
    tcp, udp = result["stats"]
    assert (tcp["rechecks"], tcp["recheck_found"], tcp["hits"]) == (3, 2, 1)
    assert (udp["rechecks"], udp["recheck_found"], udp["hits"]) == (2, 1, 1)
