"""End to end: ACK, Window and Maimon scans (nmap -sA, -sW, -sM), which PortSentry misses.

In the namespace lab, with the daemon's defaults (atcp/audp, ACK_PROBES on): each real scan,
over IPv4 and IPv6, is reported with its kind (ACK or MAIMON) and banned; a connection made
before the daemon started (so conntrack never saw its handshake: its segments look new to the
kernel) to a port whose listener has gone keeps flowing and is never called a probe.

Root, iproute2, nmap and nft (see ``banlab.py``); every packet stays inside the lab.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import dpkt
import netns
import nmapcapture
import pytest
from banlab import nft_elements, unavailable, wait_until
from daemon import PORTSENTINEL, Daemon

pytestmark = [pytest.mark.e2e]
_REASON = unavailable(("nmap", "nft", "tcpdump"))
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

Lab = netns.Lab
OLD_PORT = 600  # watched by atcp


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    with Lab.create("psu") as built:
        yield built


@pytest.mark.parametrize(("flag", "kind", "six"), [
    ("-sA", "ACK", False), ("-sW", "ACK", False), ("-sM", "MAIMON", False), ("-sA", "ACK", True),
])  # fmt: skip
def test_an_ack_bearing_scan_is_reported_and_banned(
    lab: netns.Lab, tmp_path: Path, flag: str, kind: str, six: bool
) -> None:
    scanner, target = (Lab.SCANNER6, Lab.TARGET6) if six else (Lab.SCANNER4, Lab.TARGET4)
    daemon = Daemon.start(lab, tmp_path)
    try:
        argv = ["timeout", "60", "nmap", "-n", "-Pn", *(["-6", "--send-ip"] if six else []),
                flag, "-T4", "--max-retries", "0", "-p", "1-200", target]  # fmt: skip
        lab.run(lab.scanner, argv, timeout=70)
        wait_until(lambda: scanner in (nft_elements(lab, 6 if six else 4) or {}), "the ban")
        events = daemon.wait_for_events(
            lambda es: any(e["src"] == scanner and e["action"] == "block" for e in es),
            "the block event",
        )
    finally:
        code, err = daemon.stop()
    assert code == 0, err
    blocks = [e for e in events if e["src"] == scanner and e["action"] == "block"]
    assert blocks, events
    assert blocks[0]["kind"] == kind
    label = "TCP ACK scan" if kind == "ACK" else "TCP Maimon (FIN/ACK) scan"
    assert f"attackalert: {label} from host: {scanner}" in err


SERVER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1)
print("listening", flush=True)
conn, _ = s.accept(); s.close()  # the listener goes; the connection stays
print("accepted", flush=True)
conn.settimeout(60)
while data := conn.recv(100):
    conn.sendall(data)
"""

CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
print("connected", flush=True)
for line in sys.stdin:
    c.sendall(line.encode()); print(c.recv(100).decode().strip(), flush=True)
"""


def test_a_connection_older_than_the_daemon_is_no_probe(lab: netns.Lab, tmp_path: Path) -> None:
    server = lab.start(lab.target, [sys.executable, "-c", SERVER, str(OLD_PORT)],
                       stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "listening"
    client = lab.start(lab.scanner, [sys.executable, "-c", CLIENT, Lab.TARGET4, str(OLD_PORT)],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert client.stdout is not None
    assert client.stdin is not None
    assert client.stdout.readline().strip() == "connected"
    assert server.stdout.readline().strip() == "accepted"
    daemon = Daemon.start(lab, tmp_path)
    try:
        answers = []
        for n in range(5):
            client.stdin.write(f"ping{n}\n")
            client.stdin.flush()
            answers.append(client.stdout.readline().strip())
    finally:
        code, err = daemon.stop()
        Lab.stop(client)
        Lab.stop(server)
    assert code == 0, err
    assert answers == [f"ping{n}" for n in range(5)]
    assert "attackalert" not in err, err
    assert Lab.SCANNER4 not in (nft_elements(lab, 4) or {})


def test_replay_of_recorded_ack_and_maimon_scans(lab: netns.Lab, tmp_path: Path) -> None:
    """The same scans recorded with tcpdump and replayed: each ACK-bearing probe to a watched
    port is a decision of its kind (the capture shows no connection before it), the answers
    (RSTs) are not. The open port 22 counts too: an ACK scan draws no SYN-ACK, so nothing in
    this capture shows that a service listens there (``--in-use tcp:22`` would say it)."""
    nmapcapture.listen(lab, 22)
    capture = tmp_path / "ack.pcap"
    scans = " ; ".join(
        f"nmap -n -Pn {flag} -T4 --max-retries 0 -p 1-300 {Lab.TARGET4}" for flag in ("-sA", "-sM")
    )
    nmapcapture.record(lab, capture, ["sh", "-c", scans])
    conf = tmp_path / "replay.conf"
    conf.write_text("")
    argv = [*PORTSENTINEL, "replay", "--config", str(conf), "--mode", "atcp,audp",
            "--every-probe", str(capture)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    wanted: Counter[str] = Counter()
    with capture.open("rb") as fh:
        for _ts, frame in dpkt.pcap.Reader(fh):
            tcp = getattr(dpkt.ethernet.Ethernet(frame).data, "data", None)
            if isinstance(tcp, dpkt.tcp.TCP) and tcp.dport not in (113, 139):
                if tcp.flags == dpkt.tcp.TH_ACK:
                    wanted["ACK"] += 1
                elif tcp.flags == dpkt.tcp.TH_ACK | dpkt.tcp.TH_FIN:
                    wanted["MAIMON"] += 1
    assert wanted["ACK"] >= 290
    assert wanted["MAIMON"] >= 290
    assert Counter(e["kind"] for e in events) == wanted
    assert {e["port"] for e in events} <= set(range(1, 301)) - {113, 139}
    assert events[0]["action"] == "block"
    assert events[0]["kind"] == "ACK"


def test_a_restart_on_the_tables_of_the_first_run_still_catches_ack_scans(
    lab: netns.Lab, tmp_path: Path
) -> None:
    """The table outlives a stop; the second start's conntrack script meets the first run's
    SSH-peer sets (made dynamic by the kernel) and must still install its chains."""
    first = Daemon.start(lab, tmp_path)
    code, err = first.stop()
    assert code == 0, err
    daemon = Daemon.start(lab, tmp_path)
    try:
        argv = ["timeout", "60", "nmap", "-n", "-Pn", "-sA", "-T4", "--max-retries", "0",
                "-p", "1-100", Lab.TARGET4]  # fmt: skip
        lab.run(lab.scanner, argv, timeout=70)
        wait_until(lambda: Lab.SCANNER4 in (nft_elements(lab, 4) or {}), "the ban")
    finally:
        code, err = daemon.stop()
    assert code == 0, err
    assert "cannot turn connection tracking on" not in err


def test_a_single_ack_probe_is_reported_at_once(lab: netns.Lab, tmp_path: Path) -> None:
    """The kernel holds NFLOG packets until 100 wait or a one-second timer fires, unless the
    reader asks for less: one ACK probe was reported a second after it was sent (measured by
    ``bench/detection_matrix.py``). The event's time is when the daemon read the packet, so
    it must come before nmap, which ends as soon as the RST answers its probe, has been gone
    for half a second."""
    daemon = Daemon.start(lab, tmp_path, settings={"BLOCK_TCP": "0"})
    try:
        argv = ["timeout", "60", "nmap", "-n", "-Pn", "-sA", "--max-retries", "0",
                "-p", "44", Lab.TARGET4]  # fmt: skip
        lab.run(lab.scanner, argv, timeout=70)
        ended = time.time()
        events = daemon.wait_for_events(
            lambda es: any(e["src"] == Lab.SCANNER4 for e in es), "the ACK probe's event"
        )
    finally:
        code, err = daemon.stop()
    assert code == 0, err
    [event] = [e for e in events if e["src"] == Lab.SCANNER4]
    assert (event["kind"], event["port"]) == ("ACK", 44)
    late = datetime.fromisoformat(event["time"]).timestamp() - ended
    assert late < 0.5, f"the event came {late:.3f} s after nmap ended"
