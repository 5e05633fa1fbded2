"""The never-block set in the running daemon: every change tells the response worker once,
the detector's last check asks the set, and the worker reads the entries as they are."""

from __future__ import annotations

import ipaddress
from typing import cast

from portsentinel.daemon.protection import Protection
from portsentinel.detect.detector import Detector
from portsentinel.host.neverblock import NeverBlock
from portsentinel.host.routes import NextHops, Route
from portsentinel.networks import AddressSet
from portsentinel.respond.worker import Responder
from unit.daemon.fakes import FakeRouteWatcher, FakeSources

PEER = bytes([198, 18, 0, 33])
GATEWAY = bytes([198, 18, 0, 7])


class Told:
    def __init__(self) -> None:
        self.protected = 0
        self.notes_ssh_peers = False

    def protect(self) -> None:
        self.protected += 1


class FakeDetector:
    def __init__(self) -> None:
        self.never_block: object = None
        self.check: object = None

    def set_never_block(self, never_block: object) -> None:
        self.never_block = never_block

    def set_protect_check(self, check: object) -> None:
        self.check = check


def protection(
    sources: FakeSources, routes: FakeRouteWatcher | None = None
) -> tuple[Protection, Told, FakeDetector]:
    never_block = NeverBlock(sources, watcher=routes)  # type: ignore[arg-type]
    detector = FakeDetector()
    made = Protection(never_block, cast(Detector, detector))
    told = Told()
    made.responder = cast(Responder, told)
    return made, told, detector


def test_the_detector_is_given_the_set_and_the_last_check() -> None:
    made, _told, detector = protection(FakeSources())
    assert detector.never_block is made.never_block
    assert detector.check == made.confirm


def test_only_a_change_tells_the_worker() -> None:
    sources = FakeSources()
    made, told, _detector = protection(sources)
    made.refresh()
    assert told.protected == 0
    sources.hops = NextHops(routes=(Route(2, bytes(4), 0, 254, (GATEWAY,)),))
    made.refresh()
    assert told.protected == 1
    made.set_allow(["198.18.9.0/24"])
    made.set_allow(["198.18.9.0/24"])
    made.set_ignore(AddressSet([ipaddress.ip_network("198.18.10.0/24")]))
    assert told.protected == 3
    assert made.protects(ipaddress.ip_network("198.18.9.128/25"))
    assert not made.protects(ipaddress.ip_network("198.18.11.0/24"))
    assert any(reason == "allowed by operator" for _n, reason, _s in made.entries())


def test_a_new_ssh_peer_is_confirmed_and_told() -> None:
    sources = FakeSources()
    made, told, _detector = protection(sources)
    assert not made.confirm(PEER)
    assert told.protected == 0
    sources.peers = frozenset({PEER})
    assert made.confirm(PEER)
    assert told.protected == 1
    assert made.confirm(PEER)  # in the set now: no change, nothing told
    assert told.protected == 1


def test_route_events_refresh_and_tell() -> None:
    sources = FakeSources()
    routes = FakeRouteWatcher()
    made, told, _detector = protection(sources, routes)
    assert made.fileno() == routes.fileno()
    sources.hops = NextHops(routes=(Route(2, bytes(4), 0, 254, (GATEWAY,)),))
    routes.theirs.send(b"!")
    made.on_event()
    assert GATEWAY in made.never_block
    assert told.protected == 1
    made.on_event()  # nothing pending
    assert told.protected == 1
    made.never_block.close()
    assert routes.closed


def test_without_a_responder_changes_are_kept_quiet() -> None:
    sources = FakeSources()
    made, _told, _detector = protection(sources)
    made.responder = None
    sources.peers = frozenset({PEER})
    assert made.confirm(PEER)
