"""The host view on stand-in kernel sources: addresses kept in one set the detector holds,
ports in use with NAT-forwarded ones added, the reply check and its failures. No root."""

from __future__ import annotations

import pytest

from portsentinel.errors import CaptureError
from portsentinel.host import view as view_module
from portsentinel.host.natrules import NatForwarding
from portsentinel.host.view import HostView
from portsentinel.model import Packet, Proto

HOST = bytes([198, 18, 0, 1])
OTHER = bytes([198, 18, 0, 9])
PEER = bytes([198, 18, 0, 2])


class FakeWatcher:
    changed = False
    closed = False

    def fileno(self) -> int:
        return 7

    def poll(self) -> bool:
        return self.changed

    def close(self) -> None:
        self.closed = True


class FakeTable:
    def __init__(self) -> None:
        self.ports = {Proto.TCP: frozenset({22}), Proto.UDP: frozenset({53})}
        self.fail = False
        self.closed = False

    def ports_in_use(self, proto: Proto) -> frozenset[int]:
        if self.fail:
            raise CaptureError("sock_diag: gone")
        return self.ports[proto]

    def port_in_use(self, proto: Proto, port: int) -> bool:
        return port in self.ports[proto]

    def close(self) -> None:
        self.closed = True


class FakeConntrack:
    closed = False
    fail = False

    def __init__(self) -> None:
        self.asked: list[tuple[str, int, bytes, int, bytes, int]] = []

    def _answer(self, how: str, *flow: object) -> bool:
        if self.fail:
            raise CaptureError("ctnetlink: gone")
        self.asked.append((how, *flow))  # type: ignore[arg-type]
        return True

    def lookup_reply(self, proto: int, src: bytes, sport: int, dst: bytes, dport: int) -> bool:
        return self._answer("reply", proto, src, sport, dst, dport)

    def lookup_accepted(self, proto: int, src: bytes, sport: int, dst: bytes, dport: int) -> bool:
        return self._answer("accepted", proto, src, sport, dst, dport)

    def close(self) -> None:
        self.closed = True


class Kernel:
    """What the view's sources answer; each may be made to fail."""

    def __init__(self) -> None:
        self.addresses: set[bytes] = {HOST}
        self.addresses_fail = False
        self.watcher = FakeWatcher()
        self.watcher_fails = False
        self.table = FakeTable()
        self.conntrack = FakeConntrack()
        self.conntrack_fails = False
        self.nat = NatForwarding()

    def make_watcher(self) -> FakeWatcher:
        if self.watcher_fails:
            raise CaptureError("rtnetlink: no groups")
        return self.watcher

    def dump_addresses(self) -> set[bytes]:
        if self.addresses_fail:
            raise CaptureError("rtnetlink: gone")
        return set(self.addresses)

    def make_conntrack(self) -> FakeConntrack:
        if self.conntrack_fails:
            raise CaptureError("ctnetlink: no module")
        return self.conntrack


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> Kernel:
    k = Kernel()
    monkeypatch.setattr(view_module, "AddressWatcher", k.make_watcher)
    monkeypatch.setattr(view_module, "dump_addresses", k.dump_addresses)
    monkeypatch.setattr(view_module, "SocketTable", lambda: k.table)
    monkeypatch.setattr(view_module, "Conntrack", k.make_conntrack)
    monkeypatch.setattr(view_module, "read_nat_rules", lambda timeout: k.nat)
    return k


def host_view(log: list[str], **kw: bool) -> HostView:
    return HostView(log.append, **kw)


def tcp(sport: int = 40000, dport: int = 5000) -> Packet:
    return (6, PEER, HOST, sport, dport, 0x02, 64, False, 0)


def udp(sport: int = 53, dport: int = 33000) -> Packet:
    return (17, PEER, HOST, sport, dport, 0, 64, False, 0)


def test_addresses_are_refreshed_in_place_in_the_set_the_detector_holds(kernel: Kernel) -> None:
    log: list[str] = []
    view = host_view(log)
    local = view.local
    assert local == {HOST}
    assert view.watcher_fd() == 7
    assert not view.on_address_event()  # nothing changed: no re-read
    kernel.addresses = {OTHER}
    kernel.watcher.changed = True
    assert view.on_address_event()
    assert view.local is local
    assert local == {OTHER}
    kernel.addresses_fail = True
    view.refresh_addresses()  # a failed read keeps what was known
    assert local == {OTHER}
    assert log == ["adminalert: WARNING: cannot read this host's addresses: rtnetlink: gone"]


def test_without_an_address_watcher_the_view_still_starts(kernel: Kernel) -> None:
    kernel.watcher_fails = True
    log: list[str] = []
    view = host_view(log)
    assert view.watcher_fd() is None
    assert not view.on_address_event()
    assert view.local == {HOST}
    assert log == [
        "adminalert: WARNING: cannot follow address changes (rtnetlink: no groups); "
        "re-reading them periodically"
    ]


def test_ports_in_use_with_the_ports_nat_forwards(kernel: Kernel) -> None:
    log: list[str] = []
    view = host_view(log)
    view.refresh_in_use()
    assert 22 in view.in_use[Proto.TCP]
    assert 53 in view.in_use[Proto.UDP]
    kernel.nat = NatForwarding(tcp=frozenset({8080}), all_udp=True, warnings=("odd rule",))
    view.refresh_nat()
    view.refresh_nat()  # the same warning is logged once
    assert 8080 in view.in_use[Proto.TCP]
    assert 8081 not in view.in_use[Proto.TCP]
    assert 40000 in view.in_use[Proto.UDP]  # every UDP port forwarded
    assert log == ["adminalert: WARNING: NAT rules: odd rule"]
    kernel.table.fail = True
    view.refresh_in_use()
    assert log[-1] == "adminalert: WARNING: cannot read the socket table: sock_diag: gone"


def test_the_reply_check_asks_the_kernel_about_the_whole_flow(kernel: Kernel) -> None:
    view = host_view([])
    assert view.tracks_replies
    assert view.is_reply(tcp())
    assert view.is_reply(udp())
    assert kernel.conntrack.asked == [
        ("accepted", 6, PEER, 40000, HOST, 5000),  # a SYN: a connection the host accepted
        ("reply", 17, PEER, 53, HOST, 33000),  # a datagram: a flow the host started
    ]
    assert view.reply_checks == 2
    kernel.conntrack.fail = True
    assert not view.is_reply(udp())  # a failed look-up judges the packet without it
    assert view.reply_check_errors == 1


def test_reply_checks_beyond_the_budget_are_skipped_and_counted(kernel: Kernel) -> None:
    view = host_view([])
    results = [view.is_reply(udp()) for _ in range(view_module.REPLY_CHECK_BURST + 10)]
    assert results.count(True) >= view_module.REPLY_CHECK_BURST
    assert view.reply_checks_skipped == len(results) - view.reply_checks
    assert view.reply_checks_skipped > 0


def test_without_conntrack_nothing_is_a_reply(kernel: Kernel) -> None:
    log: list[str] = []
    kernel.conntrack_fails = True
    view = host_view(log)
    assert not view.tracks_replies
    assert not view.is_reply(udp())
    assert "connection tracking unavailable (ctnetlink: no module)" in log[0]
    off = host_view([], use_conntrack=False)
    assert not off.tracks_replies


def test_close_closes_every_source(kernel: Kernel) -> None:
    view = host_view([])
    view.close()
    assert (kernel.watcher.closed, kernel.conntrack.closed, kernel.table.closed) == (
        True,
        True,
        True,
    )
