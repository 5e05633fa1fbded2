"""End to end: the response backends against the real kernel, inside a two-namespace lab.

Every command a backend runs goes through a ``Runner`` whose prefix is ``ip netns exec
TARGET``, so the firewall, the routes and the sets changed here are the lab target's own; the
root namespace is never touched. The scanner namespace gets a second address (198.18.0.3,
fd00:5e::3), so a test can show that the banned source is dropped while the other one
(198.18.0.2, fd00:5e::2) still gets through: a server in the target accepts TCP connections
and echoes UDP datagrams on every address, and a probe in the scanner connects from each
source in turn.

Measurements (bans per second for a batched nft add, block() latency) are printed; run with
``-s`` to see them.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import statistics
import sys
import time
from collections.abc import Iterator, Sequence

import netns
import pytest

from portsentinel.block import table as tracking
from portsentinel.block.base import BanSpec
from portsentinel.block.command import CommandBackend
from portsentinel.block.iptables import IptablesBackend
from portsentinel.block.nftables import NftablesBackend
from portsentinel.block.route import RouteBackend
from portsentinel.block.runner import Runner
from portsentinel.errors import BackendError

_REASON = netns.unavailable()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]
needs_nft = pytest.mark.skipif(shutil.which("nft") is None, reason="needs the nft command")
needs_iptables = pytest.mark.skipif(
    shutil.which("iptables") is None or shutil.which("ip6tables") is None,
    reason="needs iptables and ip6tables",
)
needs_ipset = pytest.mark.skipif(shutil.which("ipset") is None, reason="needs ipset")

Lab = netns.Lab
BANNED4, BANNED6 = "198.18.0.3", "fd00:5e::3"
OTHER4, OTHER6 = Lab.SCANNER4, Lab.SCANNER6
TCP_PORT, UDP_PORT = 8080, 8081
OPEN, DROPPED = "open", "timeout"
_PROBE_TIMEOUT = 1.0

# The target's server: TCP accept-and-close and UDP echo on every address, both families.
# It prints "ready" once listening and ends by itself after two minutes.
SERVER = f"""
import selectors, socket, sys, time
sel = selectors.DefaultSelector()
tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for s, port in ((tcp, {TCP_PORT}), (udp, {UDP_PORT})):
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    sel.register(s, selectors.EVENT_READ)
tcp.listen(64)
print("ready", flush=True)
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    for key, _ in sel.select(1.0):
        if key.fileobj is tcp:
            tcp.accept()[0].close()
        else:
            data, peer = udp.recvfrom(2048)
            try:
                udp.sendto(data, peer)
            except OSError:  # a blackholed peer: EINVAL
                pass
"""

# The scanner's probe: from each source address, one TCP connect and one UDP exchange.
PROBE = """
import json, socket, sys
dst, tcp_port, udp_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
timeout = float(sys.argv[4])
out = {}
for src in sys.argv[5:]:
    family = socket.AF_INET6 if ":" in src else socket.AF_INET
    for kind, port in (("tcp", tcp_port), ("udp", udp_port)):
        s = socket.socket(family, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
        s.settimeout(timeout)
        try:
            s.bind((src, 0))
            if kind == "tcp":
                s.connect((dst, port))
            else:
                s.sendto(b"ping", (dst, port))
                s.recvfrom(64)
            out[f"{kind} {src}"] = "open"
        except socket.timeout:
            out[f"{kind} {src}"] = "timeout"
        except OSError as exc:
            out[f"{kind} {src}"] = f"error {exc.errno}"
        finally:
            s.close()
print(json.dumps(out))
"""


@contextlib.contextmanager
def banning_lab(prefix: str) -> Iterator[netns.Lab]:
    """A lab whose scanner has a second address (the one to ban) and whose target runs SERVER,
    so a test can show traffic from the banned address dropped while the other passes."""
    with Lab.create(prefix) as lab:
        scanner_mac = lab.link_address(lab.scanner, Lab.SCANNER_IF)
        lab.run(lab.scanner, ["ip", "addr", "add", f"{BANNED4}/24", "dev", Lab.SCANNER_IF])
        lab.run(
            lab.scanner,
            ["ip", "-6", "addr", "add", f"{BANNED6}/64", "dev", Lab.SCANNER_IF, "nodad"],
        )
        lab.set_neighbour(lab.target, Lab.TARGET_IF, BANNED4, scanner_mac)
        lab.set_neighbour(lab.target, Lab.TARGET_IF, BANNED6, scanner_mac)
        lab.check_closed()
        server = lab.start(lab.target, [sys.executable, "-c", SERVER], stdout=-1, text=True)
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        yield lab


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    with banning_lab("psb") as lab:
        yield lab


@pytest.fixture
def runner(lab: netns.Lab) -> Runner:
    """Every backend command runs inside the lab's target namespace."""
    return Runner(prefix=["ip", "netns", "exec", lab.target])


def reach(lab: netns.Lab, *sources: str) -> dict[str, str]:
    """``{"tcp SRC": "open"|"timeout"|..., "udp SRC": ...}`` for each source address."""
    results: dict[str, str] = {}
    for family in (4, 6):
        chosen = [s for s in sources if (":" in s) == (family == 6)]
        if not chosen:
            continue
        dst = Lab.TARGET6 if family == 6 else Lab.TARGET4
        argv = [sys.executable, "-c", PROBE, dst, str(TCP_PORT), str(UDP_PORT)]
        done = lab.run(lab.scanner, [*argv, str(_PROBE_TIMEOUT), *chosen])
        results.update(json.loads(done.stdout))
    return results


def expect(lab: netns.Lab, dropped: Sequence[str], passing: Sequence[str]) -> None:
    found = reach(lab, *dropped, *passing)
    wanted = {f"{kind} {src}": DROPPED for src in dropped for kind in ("tcp", "udp")}
    wanted |= {f"{kind} {src}": OPEN for src in passing for kind in ("tcp", "udp")}
    assert found == wanted


def nft(runner: Runner, *args: str) -> str:
    result = runner.run(["nft", *args])
    assert result.ok, result.describe()
    return result.stdout


# --- nftables -------------------------------------------------------------------------------
@needs_nft
def test_nftables_drops_the_banned_source_only(lab: netns.Lab, runner: Runner) -> None:
    assert runner.run(["nft", "-f", "-"], input=tracking.script((22,))).ok  # the daemon's chain
    backend = NftablesBackend(runner)
    backend.start()
    expect(lab, dropped=[], passing=[BANNED4, OTHER4, BANNED6, OTHER6])

    started = time.monotonic()
    details = [backend.block(BanSpec.create(a, timeout=3600)) for a in (BANNED4, BANNED6)]
    print(f"\nnftables: two block() calls took {time.monotonic() - started:.4f}s")
    expect(lab, dropped=[BANNED4, BANNED6], passing=[OTHER4, OTHER6])

    listing = nft(runner, "list", "table", "inet", "portsentinel")
    print(listing)
    assert "chain conntrack" in listing  # the daemon's chain is left alone
    # The input chain counted the drops (TCP SYN and UDP datagram, both families).
    assert re.search(r"chain input \{[^}]*ip saddr @ban4 counter packets [1-9]", listing)
    assert re.search(r"chain input \{[^}]*ip6 saddr @ban6 counter packets [1-9]", listing)
    result = backend.check()
    assert result.intact, result.problems
    assert set(result.present) == {BANNED4, BANNED6}
    assert all(3500 < (left or 0) <= 3600 for left in result.present.values())

    for detail in details:
        backend.unblock(detail)
        backend.unblock(detail)  # idempotent
    expect(lab, dropped=[], passing=[BANNED4, OTHER4, BANNED6, OTHER6])
    assert dict(backend.check().present) == {}


@needs_nft
def test_nftables_start_is_idempotent_and_keeps_bans(runner: Runner) -> None:
    backend = NftablesBackend(runner)
    backend.start()
    backend.block(BanSpec.create(BANNED4))
    backend.start()
    backend.start()
    listing = nft(runner, "list", "table", "inet", "portsentinel")
    assert listing.count("ip saddr @ban4 counter") == 2  # input and forward, once each
    assert listing.count("ip6 saddr @ban6 counter") == 2
    assert set(backend.check().present) == {BANNED4}
    backend.block(BanSpec.create(BANNED4))  # already blocked: a no-op success
    assert set(backend.check().present) == {BANNED4}


@needs_nft
def test_nftables_bans_expire_in_the_kernel(lab: netns.Lab, runner: Runner) -> None:
    backend = NftablesBackend(runner)
    backend.start()
    backend.block(BanSpec.create(BANNED4, timeout=2))
    expect(lab, dropped=[BANNED4], passing=[OTHER4])
    time.sleep(2.5)  # nobody unblocks: the kernel ends the ban itself
    assert dict(backend.check().present) == {}
    expect(lab, dropped=[], passing=[BANNED4, OTHER4])


@needs_nft
def test_nftables_repair_after_the_ruleset_was_flushed(lab: netns.Lab, runner: Runner) -> None:
    backend = NftablesBackend(runner)
    backend.start()
    bans = [BanSpec.create(BANNED4, timeout=600), BanSpec.create(BANNED6)]
    backend.block_many(bans)
    nft(runner, "flush", "ruleset")  # another tool wipes everything
    expect(lab, dropped=[], passing=[BANNED4, BANNED6])
    broken = backend.check()
    assert not broken.intact
    assert broken.problems == ("table inet portsentinel is missing",)

    with pytest.raises(BackendError):  # a block now fails and marks the backend
        backend.block(BanSpec.create("198.18.0.99"))
    assert backend.degraded is not None

    results = backend.repair(bans)
    assert all(isinstance(r, dict) for r in results)
    assert backend.degraded is None
    fixed = backend.check()
    assert fixed.intact
    assert set(fixed.present) == {BANNED4, BANNED6}
    expect(lab, dropped=[BANNED4, BANNED6], passing=[OTHER4, OTHER6])


@needs_nft
def test_nftables_prefix_bans(lab: netns.Lab, runner: Runner) -> None:
    backend = NftablesBackend(runner, prefix_bans=True)
    backend.start()
    detail = backend.block(BanSpec.create("fd00:5e::", prefix=64, timeout=300))
    expect(lab, dropped=[BANNED6, OTHER6], passing=[BANNED4, OTHER4])
    assert set(backend.check().present) == {"fd00:5e::/64"}
    outcome = backend.block_many([BanSpec.create(BANNED6), BanSpec.create(BANNED4)])
    assert isinstance(outcome[0], BackendError)  # inside the /64 already banned
    assert isinstance(outcome[1], dict)  # the rest of the batch still applied
    assert backend.degraded is None
    backend.unblock(detail)
    expect(lab, dropped=[BANNED4], passing=[BANNED6, OTHER6, OTHER4])


@needs_nft
def test_nftables_batch_rate(runner: Runner) -> None:
    backend = NftablesBackend(runner)
    backend.start()
    count = 10_000
    bans = [
        BanSpec.create(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", timeout=3600)
        for i in range(count)
    ]
    started = time.monotonic()
    results = backend.block_many(bans)
    elapsed = time.monotonic() - started
    assert all(isinstance(r, dict) for r in results)
    assert len(backend.check().present) == count
    rate = count / elapsed
    print(f"\nnftables: {count} bans in one batch: {elapsed:.3f}s, {rate:.0f} bans/s")
    assert rate > 1000

    latencies = []
    for i in range(20):
        started = time.monotonic()
        backend.block(BanSpec.create(f"198.18.1.{i}", timeout=60))
        latencies.append(time.monotonic() - started)
    print(
        f"nftables: block() with {count} bans present: median "
        f"{statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
    )
    check_started = time.monotonic()
    backend.check()
    print(f"nftables: check() of {count + 20} elements: {time.monotonic() - check_started:.3f}s")


# --- iptables -------------------------------------------------------------------------------
@needs_iptables
@pytest.mark.parametrize(
    "use_ipset",
    [pytest.param(True, marks=needs_ipset, id="ipset"), pytest.param(False, id="rules")],
)
def test_iptables_drops_the_banned_source_only(
    lab: netns.Lab, runner: Runner, use_ipset: bool
) -> None:
    backend = IptablesBackend(runner, use_ipset=use_ipset)
    backend.start()
    backend.start()
    details = [
        backend.block(BanSpec.create(BANNED4, timeout=600)),
        backend.block(BanSpec.create(BANNED6)),
    ]
    backend.block(BanSpec.create(BANNED4, timeout=600))  # idempotent
    expect(lab, dropped=[BANNED4, BANNED6], passing=[OTHER4, OTHER6])
    result = backend.check()
    assert result.intact, result.problems
    assert set(result.present) == {BANNED4, BANNED6}
    rules4 = runner.run(["iptables", "-S"]).stdout
    rules6 = runner.run(["ip6tables", "-S"]).stdout
    print(f"\n{rules4}{rules6}")
    ours = [line for line in (rules4 + rules6).splitlines() if "portsentinel" in line]
    # ipset: one rule per chain and family; rules: one per chain and ban.
    assert len(ours) == 4

    for detail in details:
        backend.unblock(detail)
        backend.unblock(detail)
    expect(lab, dropped=[], passing=[BANNED4, OTHER4, BANNED6, OTHER6])
    assert dict(backend.check().present) == {}


# --- route ----------------------------------------------------------------------------------
def test_route_blackholes_the_banned_source_only(lab: netns.Lab, runner: Runner) -> None:
    backend = RouteBackend(runner)
    backend.start()
    details = [backend.block(BanSpec.create(a)) for a in (BANNED4, BANNED6)]
    backend.block(BanSpec.create(BANNED4))  # replace: idempotent
    routes = runner.run(["ip", "route", "show", "type", "blackhole"]).stdout
    assert routes.split() == ["blackhole", BANNED4, "proto", "245"]
    # The replies are blackholed: neither the handshake nor the echo completes.
    expect(lab, dropped=[BANNED4, BANNED6], passing=[OTHER4, OTHER6])
    assert set(backend.check().present) == {BANNED4, BANNED6}
    for detail in details:
        backend.unblock(detail)
        backend.unblock(detail)
    expect(lab, dropped=[], passing=[BANNED4, OTHER4, BANNED6, OTHER6])
    assert dict(backend.check().present) == {}


# --- legacy KILL_ROUTE / KILL_RUN_CMD ---------------------------------------------------------
@needs_iptables
def test_legacy_kill_route_and_unblock_command(lab: netns.Lab, runner: Runner) -> None:
    backend = CommandBackend(
        runner,
        "iptables -w 5 -I INPUT -s $TARGET$ -j DROP",
        "iptables -w 5 -D INPUT -s $TARGET$ -j DROP",
        name="legacy",
    )
    detail = backend.block(BanSpec.create(BANNED4))
    skipped = backend.block(BanSpec.create(BANNED6))  # an IPv4-only command
    assert "skipped" in skipped
    expect(lab, dropped=[BANNED4], passing=[OTHER4, BANNED6])
    backend.unblock(detail)
    expect(lab, dropped=[], passing=[BANNED4, OTHER4])
    with pytest.raises(BackendError, match="exit"):  # the rule is gone: -D fails, and says so
        backend.unblock(detail)
