"""Conntrack lookups and NAT rule reading against the real kernel, in two throwaway namespaces.

"target" (198.18.0.1, fd00:5e::1) asks a UDP echo responder in "peer" (198.18.0.2,
fd00:5e::2, port 53) and then asks ctnetlink about the reply; the peer also plays the
``nmap -g 53`` scanner. Nothing leaves the two namespaces: the veth pair is created inside them,
there is no default route, and both namespaces are deleted at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(
        not (shutil.which("ip") and shutil.which("nft")), reason="needs iproute2 and nft"
    ),
]

TARGET4, PEER4 = "198.18.0.1", "198.18.0.2"
TARGET6, PEER6 = "fd00:5e::1", "fd00:5e::2"
TIMEOUT = 20.0

# The peer: echoes every datagram on port 53; b"poke:N" instead makes it send one datagram
# from port 53 to port N of the asker, as a scanner with a spoofed source port would. It ends
# by itself after a minute should the test die before ending it.
RESPONDER = r"""
import selectors, socket, sys, time
sel = selectors.DefaultSelector()
for family, addr in ((socket.AF_INET, sys.argv[1]), (socket.AF_INET6, sys.argv[2])):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((addr, 53))
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    for key, _ in sel.select(timeout=1):
        data, peer = key.fileobj.recvfrom(2048)
        if data.startswith(b"poke:"):
            key.fileobj.sendto(b"x", (peer[0], int(data[5:])))
        else:
            key.fileobj.sendto(data, peer)
"""

# Runs inside the target namespace; prints one JSON object.
CHECKER = r"""
import json, socket, sys, time
from portsentinel.host.conntrack import CTA_TUPLE_ORIG, Conntrack, IPPROTO_TCP, IPPROTO_UDP

UNUSED_PORT, NEVER_PORT = 9, 1

def query(ct, family, local, peer, bind_port=0):
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(5)
    sock.bind((local, bind_port))
    sock.sendto(b"query", (peer, 53))
    data, _ = sock.recvfrom(100)
    port = sock.getsockname()[1]
    return sock, port, data == b"query"

def wait_for_entry(ct, flow, limit=5.0):
    deadline = time.monotonic() + limit
    for _ in range(5000):
        entry = ct.find(flow)
        if entry is not None or time.monotonic() > deadline:
            return entry
        time.sleep(0.001)
    return None

def family_checks(ct, family, local, peer):
    lb, pb = socket.inet_pton(family, local), socket.inet_pton(family, peer)
    out = {}
    sock, port, out["echoed"] = query(ct, family, local, peer)
    out["reply_open"] = ct.lookup_reply(IPPROTO_UDP, pb, 53, lb, port)
    sock.close()
    out["reply_closed"] = ct.lookup_reply(IPPROTO_UDP, pb, 53, lb, port)
    out["as_original_is_not_reply"] = ct.lookup_reply(IPPROTO_UDP, lb, port, pb, 53)
    poker = socket.socket(family, socket.SOCK_DGRAM)
    poker.sendto(b"poke:%d" % UNUSED_PORT, (peer, 53))
    spoof = (IPPROTO_UDP, pb, 53, lb, UNUSED_PORT)
    entry = wait_for_entry(ct, spoof)
    poker.close()
    out["spoof_tracked_as_original"] = entry is not None and entry.orig == spoof
    out["spoof"] = ct.lookup_reply(*spoof)
    out["never_used"] = ct.lookup_reply(IPPROTO_UDP, pb, 53, lb, NEVER_PORT)
    out["tcp_never"] = ct.lookup_reply(IPPROTO_TCP, pb, 80, lb, 40000)
    rounds = 2000
    start = time.perf_counter()
    for _ in range(rounds):
        ct.lookup_reply(IPPROTO_UDP, pb, 53, lb, port)
    out["lookup_us"] = (time.perf_counter() - start) / rounds * 1e6
    return out

def snat_checks(ct, local, peer):
    lb, pb = socket.inet_aton(local), socket.inet_aton(peer)
    sock, port, echoed = query(ct, socket.AF_INET, local, peer, bind_port=33333)
    sock.close()
    return {
        "echoed": echoed,
        "reply_wire_tuple": ct.lookup_reply(IPPROTO_UDP, pb, 53, lb, 44444),
        "reply_socket_tuple": ct.lookup_reply(IPPROTO_UDP, pb, 53, lb, 33333),
        "reversed_as_orig_found": ct.find(
            (IPPROTO_UDP, lb, 44444, pb, 53), kind=CTA_TUPLE_ORIG
        ) is not None,
    }

args = json.loads(sys.argv[1])
with Conntrack() as ct:
    result = {
        "v4": family_checks(ct, socket.AF_INET, args["t4"], args["p4"]),
        "v6": family_checks(ct, socket.AF_INET6, args["t6"], args["p6"]),
        "snat": snat_checks(ct, args["t4"], args["p4"]),
        "entries": ct.entry_count(),
    }
print(json.dumps(result))
"""

READ_NAT = r"""
import dataclasses, json
from portsentinel.host.natrules import read_nat_rules
got = read_nat_rules(timeout=10)
print(json.dumps({k: sorted(v) if isinstance(v, frozenset) else v
                  for k, v in dataclasses.asdict(got).items()}))
"""

OPEN_ONLY = r"""
import json
from portsentinel.host.conntrack import Conntrack
from portsentinel.errors import CaptureError
try:
    with Conntrack() as ct:
        print(json.dumps({"entries": ct.entry_count()}))
except CaptureError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def run(*argv: str, timeout: float = TIMEOUT) -> str:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, f"{argv}: {done.returncode}: {done.stderr.strip()}"
    return done.stdout


def in_ns(ns: str, script: str, *args: str, prefix: tuple[str, ...] = ()) -> Any:
    out = run("ip", "netns", "exec", ns, *prefix, sys.executable, "-c", script, *args)
    return json.loads(out.strip().splitlines()[-1])


@dataclass(frozen=True)
class Lab:
    target: str
    peer: str


def _build(lab: Lab) -> None:
    t, p = lab.target, lab.peer
    run("ip", "netns", "add", t)
    run("ip", "netns", "add", p)
    run("ip", "-n", t, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", p)
    for ns, dev, four, six in ((t, "veth0", TARGET4, TARGET6), (p, "veth1", PEER4, PEER6)):
        run("ip", "-n", ns, "addr", "add", f"{four}/24", "dev", dev)
        run("ip", "-n", ns, "addr", "add", f"{six}/64", "dev", dev, "nodad")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", ns, "link", "set", dev, "up")
    # Conntrack hooks are registered in a namespace only once some rule needs them.
    nft = ("ip", "netns", "exec", t, "nft")
    run(*nft, "add", "table", "inet", "t")
    run(*nft, "add", "chain", "inet", "t", "c", "{ type filter hook input priority 0; }")
    run(*nft, "add", "rule", "inet", "t", "c", "ct", "state", "established", "accept")
    # Remap the source port of one query, to check lookups under SNAT.
    run(*nft, "add", "table", "ip", "s")
    run(*nft, "add", "chain", "ip", "s", "post", "{ type nat hook postrouting priority 100; }")
    run(
        *nft,
        "add",
        "rule",
        "ip",
        "s",
        "post",
        "udp",
        "sport",
        "33333",
        "snat",
        "to",
        f"{TARGET4}:44444",
    )


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    tag = f"psct{os.getpid()}{secrets.token_hex(3)}"
    made = Lab(f"{tag}t", f"{tag}p")
    responder: subprocess.Popen[str] | None = None
    try:
        _build(made)
        responder = subprocess.Popen(
            ["ip", "netns", "exec", made.peer, sys.executable, "-c", RESPONDER, PEER4, PEER6],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert responder.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(responder.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=TIMEOUT), "responder did not start"
        assert responder.stdout.readline().strip() == "ready"
        yield made
    finally:
        if responder is not None:
            responder.terminate()
            try:
                responder.wait(timeout=5)
            except subprocess.TimeoutExpired:
                responder.kill()
                responder.wait(timeout=5)
        for ns in (made.target, made.peer):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@pytest.fixture(scope="module")
def checks(lab: Lab) -> dict[str, Any]:
    args = json.dumps({"t4": TARGET4, "p4": PEER4, "t6": TARGET6, "p6": PEER6})
    result: dict[str, Any] = in_ns(lab.target, CHECKER, args, prefix=())
    print("lookup_reply cost (us):", result["v4"]["lookup_us"], result["v6"]["lookup_us"])
    return result


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_reply_to_own_query_is_recognised(checks: dict[str, Any], family: str) -> None:
    got = checks[family]
    assert got["echoed"]
    assert got["reply_open"] is True
    assert got["reply_closed"] is True  # the late reply, after the socket is gone
    assert got["as_original_is_not_reply"] is False


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_spoofed_source_port_is_not_a_reply(checks: dict[str, Any], family: str) -> None:
    got = checks[family]
    assert got["spoof_tracked_as_original"] is True  # the kernel saw the probe ...
    assert got["spoof"] is False  # ... and it is not taken for a reply
    assert got["never_used"] is False
    assert got["tcp_never"] is False


def test_reply_found_under_snat_by_its_wire_tuple(checks: dict[str, Any]) -> None:
    got = checks["snat"]
    assert got["echoed"]
    assert got["reply_wire_tuple"] is True
    assert got["reply_socket_tuple"] is False
    assert got["reversed_as_orig_found"] is False


def test_lookup_is_cheap_enough(checks: dict[str, Any]) -> None:
    assert checks["entries"] > 0
    assert checks["v4"]["lookup_us"] < 1000


def test_without_a_ct_rule_nothing_is_tracked(lab: Lab) -> None:
    # The peer answered every query, but no rule there needs conntrack.
    assert in_ns(lab.peer, OPEN_ONLY) == {"entries": 0}


def test_without_cap_net_admin_opening_fails_clearly(lab: Lab) -> None:
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv to drop CAP_NET_ADMIN")
    got = in_ns(lab.target, OPEN_ONLY, prefix=("setpriv", "--bounding-set=-net_admin"))
    assert got == {"error": "ctnetlink: permission denied (CAP_NET_ADMIN is needed)"}


def test_nat_rules_found_inside_the_namespace(lab: Lab) -> None:
    nft = ("ip", "netns", "exec", lab.target, "nft")
    run(*nft, "add", "table", "ip", "n")
    run(*nft, "add", "chain", "ip", "n", "pre", "{ type nat hook prerouting priority -100; }")
    run(
        *nft, "add", "rule", "ip", "n", "pre", "tcp", "dport", "8080", "dnat", "to", f"{TARGET4}:80"
    )
    run(
        *nft,
        "add",
        "rule",
        "ip",
        "n",
        "pre",
        "udp",
        "dport",
        "{ 5353, 5354 }",
        "redirect",
        "to",
        ":53",
    )
    expected_tcp = {8080}
    if shutil.which("iptables"):
        run(
            "ip",
            "netns",
            "exec",
            lab.target,
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "--dport",
            "2222",
            "-j",
            "DNAT",
            "--to-destination",
            f"{TARGET4}:22",
        )
        expected_tcp.add(2222)
    got = in_ns(lab.target, READ_NAT)
    assert got == {
        "tcp": sorted(expected_tcp),
        "udp": [5353, 5354],
        "all_tcp": False,
        "all_udp": False,
        "warnings": [],
    }
