"""End to end: ordinary traffic raises nothing, even with every port watched.

One daemon (``atcp,audp`` watching all 65,535 ports of each protocol, SCAN_TRIGGER 0, so one
stray packet would be one event) runs in the target namespace while peers play a real host's
life: clients of a local service, an active-mode FTP connect-back, DNS and NTP queries from
the target (answered at once, and answered late, after the client socket closed), and clients
of a port that DNAT forwards to a third namespace. A forged "reply" from source port 53 to
ports the target never queried from must still be reported.

"Nothing" is checked against a barrier, not a sleep: after each exchange the scanner probes a
fresh marker port, and once the marker's event is written every earlier packet has been
judged (one ring, read in order).

Topology: the lab's scanner and target, plus a "backend" namespace behind the target
(198.18.1.0/24, fd00:5e:1::/64) on its own veth pair; no default route anywhere. Root,
iproute2, nft and nmap only; every packet stays inside the lab.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import netns
import pytest
from daemon import EVENT_DEADLINE, POLL, Daemon, Event, Peer, statistics

pytestmark = [pytest.mark.e2e]
_REASON = netns.unavailable() or next(
    (f"needs {tool}" for tool in ("nmap", "nft") if shutil.which(tool) is None), None
)
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

SERVICE_PORT = 8080
FORWARDED_PORT = 8443
BACKEND_NEAR = ("198.18.1.1/24", "fd00:5e:1::1/64")  # the target's side
BACKEND4 = "198.18.1.2"
BACKEND_FAR = (f"{BACKEND4}/24", "fd00:5e:1::2/64")
FORGED_PORTS = range(2000, 2005)  # below the ephemeral range: never a query's source port
ROUNDS = 5
SCANNERS = (netns.Lab.SCANNER4, netns.Lab.SCANNER6)
TARGETS = (netns.Lab.TARGET4, netns.Lab.TARGET6)

# DNAT to the backend; masquerade so that the backend's replies come back through the target
# (the backend has no route to the scanner).
NAT_RULES = f"""table ip nat {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        tcp dport {FORWARDED_PORT} dnat to {BACKEND4}:{FORWARDED_PORT}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "veth-tb" masquerade
    }}
}}
"""


@dataclass
class Host:
    """The lab, its peers and the daemon; ``markers`` hands out fresh barrier ports."""

    lab: netns.Lab
    daemon: Daemon
    target: Peer
    scanner: Peer
    late_sent: int = 0
    next_marker: int = 7000
    markers: set[int] = field(default_factory=set)

    def nothing_reported(self, activity: Callable[[], None]) -> list[Event]:
        """Run ``activity``, then a barrier probe from each family; the events in between."""
        before = len(self.daemon.events())
        activity()
        marker = self.next_marker
        self.next_marker += 1
        self.markers.add(marker)
        for dst in TARGETS:
            done = self.scanner.call("tcp_connect", host=dst, port=marker)
            assert done["refused"] == 1, done
        events = self.daemon.wait_for_events(
            lambda events: {e["src"] for e in events if e["port"] == marker} == set(SCANNERS),
            f"the barrier probes to port {marker}",
        )
        return [e for e in events[before:] if e["port"] != marker]


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    with netns.Lab.create(prefix="psb") as lab:
        backend = lab.add_namespace(
            "backend",
            near=lab.target,
            near_if="veth-tb",
            far_if="veth-b",
            near_addresses=BACKEND_NEAR,
            far_addresses=BACKEND_FAR,
        )
        lab.run(lab.target, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        lab.run(lab.target, ["nft", "-f", "-"], input=NAT_RULES)
        lab.check_closed()
        peers = [Peer(lab, ns) for ns in (lab.target, lab.scanner, backend)]
        target, scanner, back = peers
        try:
            back.call("tcp_serve", host=BACKEND4, port=FORWARDED_PORT)
            for address in TARGETS:
                target.call("tcp_serve", host=address, port=SERVICE_PORT)
            for address in SCANNERS:
                for port in (53, 123):
                    scanner.call("udp_serve", host=address, port=port, delay=0.3)
            daemon = Daemon.start(
                lab,
                tmp_path_factory.mktemp("benign"),
                mode="atcp,audp",
                settings={
                    "ADVANCED_PORTS_TCP": "65536",
                    "ADVANCED_PORTS_UDP": "65536",
                    "BLOCK_TCP": "0",
                    "BLOCK_UDP": "0",
                },
            )
            yield Host(lab, daemon, target, scanner)
            daemon.stop()
        finally:
            for peer in peers:
                peer.close()


def test_clients_of_a_local_service(host: Host) -> None:
    def clients() -> None:
        for address in TARGETS:
            done = host.scanner.call("tcp_connect", host=address, port=SERVICE_PORT, count=ROUNDS)
            assert done["ok"] == ROUNDS, done

    assert host.nothing_reported(clients) == []


def test_active_ftp_connect_back(host: Host) -> None:
    """A port opened after the daemon's last look at the socket table, used at once."""

    def connect_back() -> None:
        for address in TARGETS:
            for _ in range(ROUNDS):
                port = host.target.call("tcp_listen_once", host=address)["port"]
                done = host.scanner.call("tcp_connect", host=address, port=port)
                assert done["ok"] == 1, (port, done)

    assert host.nothing_reported(connect_back) == []


def test_dns_and_ntp_queries_from_the_target(host: Host) -> None:
    def queries() -> None:
        for address in SCANNERS:
            for port in (53, 123):
                for _ in range(ROUNDS):
                    done = host.target.call("udp_query", host=address, port=port)
                    assert done["reply"], done

    assert host.nothing_reported(queries) == []


def test_late_replies_after_the_client_closed(host: Host) -> None:
    """Conntrack (turned on by the daemon's own nft table) knows these answer the target."""

    def late_queries() -> None:
        for address in SCANNERS:
            for port in (53, 123):
                for _ in range(ROUNDS):
                    host.target.call("udp_query", host=address, port=port, payload="late",
                                     wait=False)  # fmt: skip
                    host.late_sent += 1
        # Every late reply must have left before the barrier.
        end = time.monotonic() + EVENT_DEADLINE
        while host.scanner.call("stats")["late_sent"] < host.late_sent:
            assert time.monotonic() < end, "the responders never sent their late replies"
            time.sleep(POLL)

    assert host.nothing_reported(late_queries) == []


def test_clients_of_a_dnat_forwarded_port(host: Host) -> None:
    def clients() -> None:
        done = host.scanner.call(
            "tcp_connect", host=netns.Lab.TARGET4, port=FORWARDED_PORT, count=ROUNDS
        )
        assert done["ok"] == ROUNDS, done

    assert host.nothing_reported(clients) == []


@pytest.mark.parametrize(
    ("family", "src", "dst"),
    [
        pytest.param([], netns.Lab.SCANNER4, netns.Lab.TARGET4, id="ipv4"),
        pytest.param(["-6"], netns.Lab.SCANNER6, netns.Lab.TARGET6, id="ipv6"),
    ],
)
def test_a_forged_reply_from_port_53_is_reported(
    host: Host, family: list[str], src: str, dst: str
) -> None:
    ports = f"{FORGED_PORTS[0]}-{FORGED_PORTS[-1]}"
    argv = ["timeout", "30", "nmap", "-n", "-Pn", "--max-retries", "1", "-T4", *family,
            "-sU", "-g", "53", "-p", ports, dst]  # fmt: skip
    host.lab.run(host.lab.scanner, argv, timeout=40)

    def forged(e: Event) -> bool:
        return e["src"] == src and e["port"] in FORGED_PORTS

    events = host.daemon.wait_for_events(
        lambda events: {e["port"] for e in events if forged(e)} == set(FORGED_PORTS),
        f"UDP events from {src} on ports {ports}",
    )
    hits = [e for e in events if forged(e)]
    assert {(e["kind"], e["proto"], e["dst"]) for e in hits} == {("UDP", "udp", dst)}


def test_only_barriers_and_forgeries_were_reported_and_it_stops_cleanly(host: Host) -> None:
    """Runs last: the whole run's events, and the daemon's own account at shutdown."""
    events = host.daemon.events()
    strays = [e for e in events if e["port"] not in host.markers | set(FORGED_PORTS)]
    assert strays == []
    code, stderr = host.daemon.stop()
    assert code == 0, stderr
    stats = statistics(stderr)
    assert (stats["kernel_drops"], stats["decode_errors"]) == (0, 0), stats
    # The late replies reached the detector as would-be probes and were judged replies.
    assert stats["replies"] >= host.late_sent, stats
