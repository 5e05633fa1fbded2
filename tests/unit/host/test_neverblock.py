"""The never-block set on fake live sources: what is in it, the reason given, refresh, and
what happens when a source fails. No root, no kernel."""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from portsentinel import paths
from portsentinel.errors import CaptureError
from portsentinel.host import neverblock
from portsentinel.host.addresses import AddrInfo
from portsentinel.host.neverblock import (
    SPECIAL_RANGES,
    NeverBlock,
    Source,
    SystemSources,
    covering,
    route_reason,
)
from portsentinel.host.resolvconf import Resolvers, parse_resolv_conf
from portsentinel.host.routes import NexthopGateway, NextHops, Route
from portsentinel.networks import AddressSet

V4, V6 = 2, 10


def p(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def route(dst: str, *gateways: str, table: int = 254) -> Route:
    network = net(dst)
    family = V4 if network.version == 4 else V6
    hops = tuple(p(g) for g in gateways)
    return Route(family, network.network_address.packed, network.prefixlen, table, hops)


class FakeSources:
    """Live sources as plain attributes; an exception instance makes that read fail."""

    def __init__(self) -> None:
        self.addrs: list[AddrInfo] | CaptureError = [
            AddrInfo(1, p("127.0.0.1"), 8, 254),
            AddrInfo(1, p("::1"), 128, 254),
            AddrInfo(2, p("198.18.0.1"), 24, 0),
            AddrInfo(2, p("fd00:5e::1"), 64, 0),
            AddrInfo(3, p("198.18.4.1"), 31, 0),
            AddrInfo(4, p("198.18.5.1"), 32, 0),
        ]
        self.hops: NextHops | CaptureError = NextHops(
            routes=(
                route("0.0.0.0/0", "198.18.0.254"),
                route("198.18.9.0/24", "198.18.0.250", "198.18.0.251"),
                route("198.18.12.0/24", "198.18.0.249", table=100),
                route("fd00:5e:9::/64", "fd00:5e::fe"),
                route("198.18.11.0/24", "fd00:5e::fc"),
            ),
            routers=(p("fd00:5e::fd"),),
            objects=(NexthopGateway(7, p("198.18.0.248")),),
        )
        self.resolv: Resolvers = parse_resolv_conf(
            "nameserver 198.18.0.53\nnameserver fd00:5e::53\n", "/test/resolv.conf"
        )
        self.peers: frozenset[bytes] | CaptureError = frozenset({p("198.18.0.2")})
        self.reads = 0
        self.closed = False

    def addresses(self) -> Sequence[AddrInfo]:
        self.reads += 1
        if isinstance(self.addrs, CaptureError):
            raise self.addrs
        return self.addrs

    def next_hops(self) -> NextHops:
        if isinstance(self.hops, CaptureError):
            raise self.hops
        return self.hops

    def resolvers(self) -> Resolvers:
        return self.resolv

    def ssh_peers(self) -> Collection[bytes]:
        if isinstance(self.peers, CaptureError):
            raise self.peers
        return self.peers

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def sources() -> FakeSources:
    return FakeSources()


@pytest.fixture
def warnings() -> list[str]:
    return []


@pytest.fixture
def nb(sources: FakeSources, warnings: list[str]) -> NeverBlock:
    return NeverBlock(
        sources,
        ignore=AddressSet([net("198.18.100.0/24"), net("198.18.0.1/32")]),
        allow=[net("198.18.200.7/32")],
        warn=warnings.append,
    )


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("198.18.200.7", "allowed by operator"),
        ("198.18.100.99", "ignore list"),
        ("198.18.0.1", "ignore list"),  # also a host address: the operator's own word first
        ("fd00:5e::1", "host address"),
        ("198.18.4.1", "host address"),
        ("198.18.5.1", "host address"),
        ("198.18.0.255", "broadcast address of 198.18.0.0/24"),
        ("198.18.0.254", "gateway of the default route"),
        ("198.18.0.250", "gateway of route 198.18.9.0/24"),
        ("198.18.0.251", "gateway of route 198.18.9.0/24"),
        ("198.18.0.249", "gateway of route 198.18.12.0/24 (table 100)"),
        ("fd00:5e::fe", "gateway of route fd00:5e:9::/64"),
        ("fd00:5e::fc", "gateway of route 198.18.11.0/24"),
        ("fd00:5e::fd", "IPv6 router"),
        ("198.18.0.248", "gateway of nexthop object 7"),
        ("198.18.0.53", "DNS resolver in /test/resolv.conf"),
        ("fd00:5e::53", "DNS resolver in /test/resolv.conf"),
        ("198.18.0.2", "SSH peer"),
        ("127.0.0.1", "host address"),
        ("127.1.2.3", "loopback"),
        ("::1", "host address"),
        ("0.1.2.3", "this network (0.0.0.0/8)"),
        ("::", "unspecified address"),
        ("169.254.10.20", "link-local"),
        ("fe80::1234", "link-local"),
        ("224.0.0.251", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
    ],
)
def test_member_with_its_reason(nb: NeverBlock, address: str, reason: str) -> None:
    assert p(address) in nb
    assert nb.contains_text(address)
    assert nb.why(p(address)) == reason


@pytest.mark.parametrize(
    "address",
    [
        "198.18.0.7",  # an ordinary neighbour on the local network
        "198.18.0.3",
        "fd00:5e::2",
        "198.18.4.0",  # the other end of the /31: no broadcast address there
        "198.18.5.255",
        "198.18.0.0",
        "203.0.113.9",
        "2001:db8::1",
        "240.0.0.1",
    ],
)
def test_ordinary_addresses_are_not_members(nb: NeverBlock, address: str) -> None:
    assert p(address) not in nb
    assert nb.why(p(address)) is None


def test_ipv4_mapped_form_and_junk(nb: NeverBlock) -> None:
    assert p("::ffff:198.18.0.254") in nb
    assert nb.why(p("::ffff:198.18.0.254")) == "gateway of the default route"
    assert "198.18.0.254" not in nb  # text is not a packed address
    assert b"\xc6\x12" not in nb


def test_every_special_range_is_in_even_without_live_sources() -> None:
    empty = FakeSources()
    empty.addrs, empty.hops, empty.peers = [], NextHops(), frozenset()
    empty.resolv = Resolvers("/none")
    nb = NeverBlock(empty)
    assert {str(n) for n, _reason, _source in nb.entries} == {n for n, _ in SPECIAL_RANGES}
    assert len(nb) == len(SPECIAL_RANGES)


def test_refresh_follows_the_live_sources(sources: FakeSources, nb: NeverBlock) -> None:
    assert nb.refresh() is False  # nothing changed
    assert isinstance(sources.hops, NextHops)
    sources.hops = NextHops(routes=sources.hops.routes[2:])
    sources.peers = frozenset()
    sources.resolv = parse_resolv_conf("nameserver 198.18.0.54\n", "/test/resolv.conf")
    assert nb.refresh() is True
    for gone in ("198.18.0.254", "198.18.0.250", "fd00:5e::fd", "198.18.0.2", "198.18.0.53"):
        assert p(gone) not in nb
        assert nb.why(p(gone)) is None
    assert nb.why(p("198.18.0.54")) == "DNS resolver in /test/resolv.conf"
    assert p("198.18.0.249") in nb
    assert nb.refreshes == 3


def test_a_failed_source_keeps_its_last_answer_and_warns_once(
    sources: FakeSources, nb: NeverBlock, warnings: list[str]
) -> None:
    sources.hops = CaptureError("rtnetlink: the kernel did not finish a dump in time")
    sources.peers = CaptureError("sock_diag exchange failed: timed out")
    assert nb.refresh() is False
    assert nb.refresh() is False
    assert p("198.18.0.254") in nb
    assert p("198.18.0.2") in nb
    assert nb.failures == 4
    assert len(warnings) == 2  # once each, not on every refresh
    assert "cannot read routes (rtnetlink: the kernel did not finish" in warnings[0]
    assert "kept the last ones" in warnings[0]
    assert "cannot read SSH peers" in warnings[1]
    sources.hops = NextHops()
    nb.refresh()
    assert p("198.18.0.254") not in nb
    sources.peers = CaptureError("sock_diag exchange failed: timed out")
    nb.refresh()
    assert len(warnings) == 2  # the SSH warning is still the same one
    sources.peers = frozenset()
    nb.refresh()
    sources.peers = CaptureError("sock_diag exchange failed: timed out")
    nb.refresh()
    assert len(warnings) == 3  # it went away and came back


def test_first_refresh_failing_still_protects_the_special_ranges(warnings: list[str]) -> None:
    broken = FakeSources()
    broken.addrs = CaptureError("rtnetlink unavailable")
    nb = NeverBlock(broken, warn=warnings.append)
    assert p("127.0.0.1") in nb
    assert p("198.18.0.1") not in nb
    assert p("198.18.0.254") in nb
    assert len(warnings) == 1


def test_source_warnings_are_passed_on(sources: FakeSources, warnings: list[str]) -> None:
    sources.resolv = Resolvers("/gone", warnings=("/gone: RESOLV_CONF: file does not exist",))
    sources.hops = NextHops(warnings=("nexthop objects not read: ...",))
    NeverBlock(sources, warn=warnings.append)
    assert warnings == ["nexthop objects not read: ...", "/gone: RESOLV_CONF: file does not exist"]


def test_static_lists_change_without_reading_the_sources(
    sources: FakeSources, nb: NeverBlock
) -> None:
    reads = sources.reads
    assert nb.set_allow([net("203.0.113.0/24")]) is True
    assert nb.why(p("203.0.113.9")) == "allowed by operator"
    assert p("198.18.200.7") not in nb
    assert nb.set_ignore(AddressSet()) is True
    assert nb.why(p("198.18.100.99")) is None
    assert nb.why(p("198.18.0.1")) == "host address"
    assert nb.set_ignore(AddressSet()) is False
    assert sources.reads == reads


def test_counts_by_source(nb: NeverBlock) -> None:
    counts = nb.counts()
    assert counts[Source.ALLOW] == 1
    assert counts[Source.IGNORE] == 2
    assert counts[Source.HOST] == 6
    assert counts[Source.BROADCAST] == 2  # 127.0.0.0/8 and 198.18.0.0/24 (not the /31, /32)
    assert counts[Source.GATEWAY] == 8
    assert counts[Source.RESOLVER] == 2
    assert counts[Source.SSH] == 1
    assert counts[Source.SPECIAL] == len(SPECIAL_RANGES)


def test_route_reasons() -> None:
    assert route_reason(route("::/0", "fe80::1")) == "gateway of the default route"
    assert route_reason(route("0.0.0.0/0", "198.18.0.1", table=7)) == (
        "gateway of the default route (table 7)"
    )
    assert route_reason(route("198.18.9.0/24", "198.18.0.1")) == "gateway of route 198.18.9.0/24"


def test_close_closes_the_sources(sources: FakeSources, nb: NeverBlock) -> None:
    nb.close()
    assert sources.closed


def test_system_sources_read_the_configured_resolv_conf_and_no_ssh_by_default(
    tmp_path: Path,
) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 198.18.0.53\n")
    system = SystemSources(str(path))
    assert system.resolvers().packed == (p("198.18.0.53"),)
    assert system.ssh_peers() == frozenset()
    system.close()


def test_system_sources_default_to_paths_resolv_conf_read_when_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 198.18.0.54\n")
    monkeypatch.setattr(paths, "RESOLV_CONF", str(path))  # after import: still followed
    system = SystemSources()
    assert system.resolv_conf == str(path)
    assert system.resolvers().packed == (p("198.18.0.54"),)
    system.close()


# --- systemd-resolved's upstream resolvers ---------------------------------------------------


def test_a_stubs_upstream_resolvers_are_in_with_their_own_file(sources: FakeSources) -> None:
    stub = parse_resolv_conf("nameserver 127.0.0.53\n", "/test/resolv.conf")
    upstream = parse_resolv_conf("nameserver 198.18.0.60\n", "/test/resolved.conf")
    sources.resolv = replace(stub, upstream=upstream)
    nb = NeverBlock(sources)
    assert nb.why(p("198.18.0.60")) == "DNS resolver in /test/resolved.conf"
    assert nb.why(p("127.0.0.53")) == "DNS resolver in /test/resolv.conf"


def test_system_sources_read_systemd_resolveds_file_behind_the_stub(tmp_path: Path) -> None:
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.53\n")
    (tmp_path / "resolved.conf").write_text("nameserver 198.18.0.61\n")
    system = SystemSources(str(tmp_path / "resolv.conf"), (), str(tmp_path / "resolved.conf"))
    found = system.resolvers()
    assert [r.packed for r in found.files()] == [(p("127.0.0.53"),), (p("198.18.0.61"),)]
    system.close()


def test_system_sources_default_to_paths_resolved_conf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(paths, "RESOLVED_CONF", str(tmp_path / "resolved.conf"))
    assert SystemSources().resolved_conf == str(tmp_path / "resolved.conf")


# --- SSH peers asked at the moment of acting ---------------------------------------------------


def test_confirm_asks_the_kernel_and_the_new_peer_joins_the_set(
    sources: FakeSources, nb: NeverBlock
) -> None:
    version = nb.version
    sources.peers = frozenset({p("198.18.0.2"), p("198.18.0.33")})
    assert p("198.18.0.33") not in nb
    assert nb.confirm(p("198.18.0.33"))
    assert p("198.18.0.33") in nb
    assert nb.why(p("198.18.0.33")) == "SSH peer"
    assert nb.version == version + 1


def test_confirm_refuses_an_ordinary_source_and_changes_nothing(
    sources: FakeSources, nb: NeverBlock
) -> None:
    version = nb.version
    assert not nb.confirm(p("198.18.0.34"))
    assert nb.version == version
    sources.peers = CaptureError("sock_diag: timed out")
    assert not nb.confirm(p("198.18.0.34"))  # a failed read protects nothing new
    assert nb.failures == 1


def test_confirm_of_a_member_reads_nothing(sources: FakeSources, nb: NeverBlock) -> None:
    sources.peers = CaptureError("must not be read")
    assert nb.confirm(p("198.18.0.254"))


def test_confirm_takes_the_kernels_set_of_peers_when_it_can_answer(
    sources: FakeSources, nb: NeverBlock
) -> None:
    """The daemon's nftables set of SSH peers answers in ~20 us; the sock_diag dump (~5 ms)
    is made only when it cannot tell."""
    sources.peers = CaptureError("sock_diag must not be asked")
    asked: list[bytes] = []

    def peer(packed: bytes) -> bool | None:
        asked.append(packed)
        return {p("198.18.0.40"): True, p("198.18.0.41"): False}.get(packed)

    assert nb.confirm(p("198.18.0.40"), peer)
    assert nb.why(p("198.18.0.40")) == "SSH peer"  # joins the set, as a dumped peer does
    assert not nb.confirm(p("198.18.0.41"), peer)
    assert nb.failures == 0
    assert not nb.confirm(p("198.18.0.42"), peer)  # the set cannot tell: the dump is asked
    assert nb.failures == 1
    sources.peers = frozenset({p("198.18.0.42")})
    assert nb.confirm(p("198.18.0.42"), peer)
    assert asked == [p("198.18.0.40"), p("198.18.0.41"), p("198.18.0.42"), p("198.18.0.42")]


# --- routes followed by events -------------------------------------------------------------


class FakeWatcher:
    def __init__(self) -> None:
        self.changed = False
        self.closed = False

    def fileno(self) -> int:
        return 42

    def poll(self) -> bool:
        return self.changed

    def close(self) -> None:
        self.closed = True


def test_a_route_event_refreshes_the_set(sources: FakeSources) -> None:
    watcher = FakeWatcher()
    nb = NeverBlock(sources, watcher=watcher)  # type: ignore[arg-type]
    assert nb.fileno() == 42
    assert not nb.on_event()  # nothing changed
    sources.hops = NextHops(routes=(route("198.18.4.0/24", "198.18.0.7"),))
    assert not nb.on_event()  # the watcher said nothing: not read
    watcher.changed = True
    assert nb.on_event()
    assert nb.why(p("198.18.0.7")) == "gateway of route 198.18.4.0/24"
    nb.close()
    assert watcher.closed


def test_without_a_watcher_there_is_nothing_to_select(nb: NeverBlock) -> None:
    assert nb.fileno() is None
    assert not nb.on_event()


def test_for_host_watches_routes_when_asked_and_warns_when_it_cannot(
    monkeypatch: pytest.MonkeyPatch, sources: FakeSources
) -> None:
    monkeypatch.setattr(neverblock, "SystemSources", lambda *args: sources)
    monkeypatch.setattr(neverblock, "RouteWatcher", FakeWatcher)
    assert NeverBlock.for_host(watch=True).fileno() == 42
    assert NeverBlock.for_host().fileno() is None

    def refused() -> FakeWatcher:
        raise CaptureError("rtnetlink: no groups")

    monkeypatch.setattr(neverblock, "RouteWatcher", refused)
    said: list[str] = []
    assert NeverBlock.for_host(watch=True, warn=said.append).fileno() is None
    assert said == [
        "cannot follow route changes (rtnetlink: no groups); re-reading them periodically"
    ]


# --- which bans hold a protected address ---------------------------------------------------


def test_covering_finds_address_and_prefix_bans_with_the_reason(nb: NeverBlock) -> None:
    targets = [
        ("gateway", net("198.18.0.254/32")),
        ("ordinary", net("198.18.0.77/32")),
        ("prefix holding a gateway", net("fd00:5e::/64")),
        ("prefix elsewhere", net("fd00:77::/64")),
        ("ignored", net("198.18.100.5/32")),
    ]
    found = dict(covering(nb.entries, targets))
    assert found == {
        "gateway": "gateway of the default route",
        "prefix holding a gateway": "host address",
        "ignored": "ignore list",
    }
    assert list(covering((), targets)) == []
